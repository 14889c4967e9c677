"""Caption and image quality rules in the pool flow: language, DataComp's basic filter at its
boundaries, boilerplate repeats, token counts, and the report's example grids.

Expected values are computed here independently: languages are chosen by the test, image
sizes are generated at the boundaries, token counts come from open_clip's own tokenizer.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from flows.pool import run_pool
from schemas.config import parse_config
from tests.helpers import published_dir
from tests.pool_factory import PoolSample, write_tar

DAY = "2026-04-01"
EN = "a red bicycle leaning against a brick wall in the evening sun"
LANGS = {
    "en": EN,
    "fr": "une bicyclette rouge appuyée contre un mur de briques au soleil du soir",
    "de": "ein rotes Fahrrad lehnt an einer Backsteinmauer in der Abendsonne",
    "es": "una bicicleta roja apoyada contra una pared de ladrillos al sol de la tarde",
}
LONG = " ".join(["a very long caption about a red bicycle and a brick wall"] * 12)


def image(w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * rng.uniform(0.2, 1)) % 256, (y * rng.uniform(0.2, 1)) % 256,
                     np.full((h, w), rng.integers(0, 256))], -1)  # fmt: skip
    buf = io.BytesIO()
    Image.fromarray(base.astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def s(uid: str, caption: str, w: int = 256, h: int = 256, **meta) -> PoolSample:
    seed = int.from_bytes(hashlib.sha256(uid.encode()).digest()[:4], "little")  # one per uid
    return PoolSample(key=uid, image=image(w, h, seed), ext="png", caption=caption,
                      meta={"uid": uid, **meta})  # fmt: skip


def run(tmp_path: Path, tiny_model: dict, samples: list[PoolSample], **pool) -> pl.DataFrame:
    write_tar(tmp_path / "in" / "00000.tar", samples)
    cfg = {
        "dataset": "q",
        "output": str(tmp_path / "out"),
        "model": {**tiny_model, "precision": "fp32", "device": "cpu", "batch_size": 8},
        "pool": {"input": str(tmp_path / "in" / "*.tar"), **pool},
    }
    result = run_pool(parse_config(cfg), DAY)
    assert result["status"] == "published"
    return pl.read_parquet(published_dir(result["uri"]) / "samples.parquet")


def test_language_image_boilerplate_and_tokens(tmp_path, tiny_model, prefect_harness):
    import open_clip

    samples = [s(f"lang-{k}", text) for k, text in LANGS.items()]  # distinct captions:
    # a caption repeated more than 3 times would be boilerplate
    samples += [
        s("no-letters", "12345 67890 !!!"),
        # image sizes at DataComp's boundaries: short side 200 passes, ratio 3.0 passes
        s("side-200", f"{EN}, side-200", 200, 300),
        s("side-199", f"{EN}, side-199", 199, 300),
        s("ratio-3", f"{EN}, ratio-3", 200, 600),
        s("ratio-301", f"{EN}, ratio-301", 200, 602),
        # the source json's original size wins over the (resized) stored image, as in DataComp
        s("orig-small", f"{EN}, orig-small", 256, 256, original_width=150, original_height=400),
        s("orig-big", f"{EN}, orig-big", 100, 100, original_width=640, original_height=480),
        s("long", LONG),
    ]
    samples += [s(f"boiler-{i}", f"Click to enlarge image {i}") for i in range(4)]
    samples += [s(f"twice-{i}", "Photo of the day") for i in range(2)]
    df = run(
        tmp_path, tiny_model, samples,
        basic_filter=True,
        text_filter={"max_caption_repeats": 3},
        clip_filter={},
    )  # fmt: skip
    rows = {r["uid"]: r for r in df.iter_rows(named=True)}
    # languages: only English passes; captions without letters have no language
    assert {k: rows[f"lang-{k}"]["lang"] for k in LANGS} == {k: k for k in LANGS}
    assert rows["lang-en"]["status"] == "kept"
    for k in ("fr", "de", "es"):
        assert (rows[f"lang-{k}"]["status"], rows[f"lang-{k}"]["error"]) == (
            "filtered_text", "text:language")  # fmt: skip
    assert rows["no-letters"]["lang"] is None and rows["no-letters"]["status"] == "filtered_text"
    # image rules at their boundaries
    assert rows["side-200"]["status"] == "kept" and rows["ratio-3"]["status"] == "kept"
    assert rows["side-199"]["error"] == "image:too_small"
    assert rows["ratio-301"]["error"] == "image:aspect_ratio"
    assert rows["side-199"]["status"] == "filtered_image"
    assert rows["orig-small"]["error"] == "image:too_small"  # 150 px originally
    assert rows["orig-big"]["status"] == "kept"  # stored at 100 px, 480 px originally
    # boilerplate: 4 copies of one normalised caption (digits folded) > 3; 2 copies pass
    assert {rows[f"boiler-{i}"]["error"] for i in range(4)} == {"text:boilerplate"}
    assert {rows[f"twice-{i}"]["status"] for i in range(2)} == {"kept"}
    # token counts are open_clip's tokenizer's (start + text + end), truncation past 77
    tok = open_clip.get_tokenizer("ViT-B-32")
    for r in rows.values():
        assert r["n_tokens"] == len(tok.encode(r["caption"])) + 2, r["uid"]
        assert r["truncated"] == (r["n_tokens"] > 77)
    assert rows["long"]["truncated"] and rows["long"]["status"] == "kept"
    assert df["status"].value_counts().get_column("count").sum() == len(samples)


def test_report_grids_show_the_right_samples(tmp_path, tiny_model, prefect_harness):
    samples = [s(f"ok-{i}", f"{EN} number {i}") for i in range(6)]
    samples += [s("small", EN, 120, 120), s("fr", LANGS["fr"])]
    df = run(tmp_path, tiny_model, samples, basic_filter=True, clip_filter={"top_fraction": 0.5})
    root = published_dir(tmp_path / "out" / "q" / "pool" / DAY)
    md = (root / "report.md").read_text()
    manifest = json.loads((tmp_path / "out" / "q" / "pool" / DAY / "manifest.json").read_text())
    listed = {o["path"].split("/", 1)[1] for o in manifest["outputs"]}  # under the version
    examples = json.loads((root / "examples.json").read_text())
    for group, uids in examples.items():
        picked = df.filter(pl.col("uid").is_in(uids))
        assert picked.height == len(uids) > 0
        if group == "kept":  # the lowest-scoring kept ones: nearest the cut from above
            kept = df.filter(pl.col("status") == "kept").sort("clip_score")
            assert uids == kept["uid"].head(len(uids)).to_list()
        elif group == "filtered_clip":  # the ones nearest the cut
            near = df.filter(pl.col("status") == "filtered_clip")
            near = near.sort("clip_score", descending=True)
            assert uids == near["uid"].head(len(uids)).to_list()
        else:  # a rejection reason
            assert set(picked["error"]) == {group}
        grid = f"plots/examples_{group.replace(':', '_')}.png"
        assert grid in listed and f"]({grid})" in md
        assert Image.open(root / grid).size[0] > 0
    assert {"kept", "filtered_clip", "image:too_small", "text:language"} <= set(examples)
    assert "## Captions" in md and "plots/caption_tokens.png" in listed
    assert "| en |" in md


def test_basic_filter_sets_datacomps_rules_over_the_keys_it_names():
    raw = {"input": "x/*.tar", "basic_filter": True, "text_filter": {"min_words": 1}}
    cfg = parse_config({"pool": raw})
    assert cfg.pool.text_filter.languages == ["en"] and cfg.pool.text_filter.min_words == 3
    assert cfg.pool.text_filter.min_chars == 6
    assert cfg.pool.image_filter.min_side == 200 and cfg.pool.image_filter.max_aspect_ratio == 3.0
