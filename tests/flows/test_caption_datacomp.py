"""DataComp's basic filter, caption half, at its boundaries: the pool flow (tar and parquet
readers, score stage, select) against DataComp's own conditions, written out below from
mlfoundations/datacomp `baselines/apply_filter.py` (`load_uids_with_basic_filter_helper`).

The language is the one input the test cannot recompute (DataComp's `lid.176.bin` is not
here): the reference takes it from our `lang` column, and the cases that decide a length or
word boundary are checked to be labelled `en`, so that the language never decides them.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import polars as pl
import pytest

from flows.pool import run_pool
from schemas.config import parse_config
from tests.helpers import published_dir
from tests.pool_factory import PoolSample, make_image, write_parquet_pool, write_tar

DAY = "2026-04-02"
SIDE = 256  # above the basic filter's 200 px


def datacomp_keeps(text: str, fasttext_lang: str | None) -> bool:
    """DataComp's caption conditions, as `load_uids_with_basic_filter_helper` computes them:
    `fasttext_lang_pred == "en"`, `len(x.split()) > 2`, `len(x) > 5`, on the text as stored."""
    caption_num_words = len(text.split())
    caption_num_chars = len(text)
    return fasttext_lang == "en" and caption_num_words > 2 and caption_num_chars > 5


# (caption, decided by a length or word boundary: must be labelled en)
CASES: list[tuple[str, bool]] = [
    ("a b c", True),  # 5 characters
    ("a b c ", True),  # 6 with the trailing space: DataComp keeps it
    (" a b c", True),
    ("a b c\n", True),
    ("\ta b c", True),
    ("a b c\r\n", True),
    ("ab c d", True),
    ("I am a", True),
    ("a b \U0001f600", True),  # 5 code points (6 in UTF-16)
    ("a b \U0001f600 ", True),
    ("a dog.", True),  # 2 words
    ("two words  ", True),
    ("the dog runs", True),
    ("the dog\x1fruns", True),  # str.split() splits on U+001F: 3 words
    ("the dog\u00a0runs", True),  # no-break space: 3 words
    ("the dog\u200bruns", True),  # zero-width space is not whitespace: 2 words
    ("      ", False),  # 6 characters, no word
    ("", False),
    ("\u3000a b c", False),
    ("der Hund läuft schnell", False),  # not English
]


def _samples() -> list[PoolSample]:
    meta = {"original_width": SIDE, "original_height": SIDE}
    return [
        PoolSample(
            f"{i:09d}",
            make_image("png", (SIDE, SIDE), seed=i),
            "png",
            caption,
            {"uid": f"u{i:03d}", **meta},
        )
        for i, (caption, _) in enumerate(CASES)
    ]


def _run(tmp_path: Path, tiny_model: dict, fmt: str) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    if fmt == "tar":
        write_tar(folder / "00000.tar", _samples())
    else:
        write_parquet_pool(folder / "00000.parquet", _samples())
    cfg = {
        "dataset": "dc",
        "output": str(tmp_path / "out"),
        "model": {**tiny_model, "precision": "fp32", "device": "cpu", "batch_size": 8},
        "pool": {
            "input": str(folder / f"*.{'tar' if fmt == 'tar' else 'parquet'}"),
            "basic_filter": True,
            # our rules beyond DataComp's, turned off so that only its three decide
            "text_filter": {"min_letter_fraction": 0.0, "max_repeat_fraction": 1.0},
        },
    }
    result = run_pool(parse_config(cfg), DAY)
    return published_dir(result["uri"])


def _published_txt(root: Path) -> dict[str, bytes]:
    out = {}
    for shard in sorted((root / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".txt"):
                    out[m.name.removesuffix(".txt")] = tar.extractfile(m).read()
    return out


@pytest.mark.parametrize("fmt", ["tar", "parquet"])
def test_basic_filter_captions_match_datacomp_at_every_boundary(
    tmp_path, tiny_model, prefect_harness, fmt
):
    """Defect: both readers stripped captions, so 'a b c ' (6 raw characters) was dropped as
    text:too_short where DataComp keeps it, and the published .txt was not the input's."""
    root = _run(tmp_path, tiny_model, fmt)
    df = pl.read_parquet(root / "samples.parquet").sort("uid")
    assert df["uid"].to_list() == [f"u{i:03d}" for i in range(len(CASES))]
    langs = df["lang"].to_list()
    for (caption, boundary), lang in zip(CASES, langs, strict=True):
        if boundary:
            assert lang == "en", f"{caption!r} is labelled {lang}: the test lost its power"
    expected = [datacomp_keeps(c, lang) for (c, _), lang in zip(CASES, langs, strict=True)]
    got = [s == "kept" for s in df["status"].cast(pl.String).to_list()]
    assert got == expected, [
        (c, g, e) for (c, _), g, e in zip(CASES, got, expected, strict=True) if g != e
    ]
    # the caption is the input's, as written, in the table and in the published shards
    assert df["caption"].to_list() == [c for c, _ in CASES]
    dropped = df.filter(pl.col("status") != "kept")
    assert set(dropped["status"].cast(pl.String)) == {"filtered_text"}
    assert set(dropped["error"]) <= {
        "text:empty",
        "text:too_few_words",
        "text:too_short",
        "text:language",
    }
    published = _published_txt(root)
    kept = df.filter(pl.col("status") == "kept")
    assert {k: published[k] for k in kept["out_key"]} == {
        k: c.encode() for k, c in zip(kept["out_key"], kept["caption"], strict=True)
    }
