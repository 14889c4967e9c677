"""Worldwide balancing inside the pool flow: per-language lists, thresholds and figures.

Expected values are recomputed here from the published samples by a plain loop over the
spec (`specs/metaclip-worldwide.md`), independent of `tasks.metaclip.worldwide`.
"""

from __future__ import annotations

import json
import random
import tarfile
from pathlib import Path

import polars as pl
import pytest

from flows.pool import run_pool
from schemas.config import parse_config
from tasks.metaclip.langcounts import from_parquet_bytes
from tests.helpers import published_dir
from tests.pool_factory import PoolSample, make_image, write_tar

# per identifier code: caption template and the words filled in, most frequent first
TEMPLATES = {
    "en": ("a photo of a {} on the beach today", ["dog", "cat", "red car", "tree"]),
    "de": ("ein schönes Foto von einem {} im Garten heute", ["Hund", "Katze", "Auto"]),
    "zh": ("一只{}在海滩上奔跑", ["狗", "猫", "鸟"]),
    "ja": ("日本の{}の写真です", ["犬", "猫"]),  # no list: matches nothing
    "fr": ("un {} joue dans le jardin avec une balle", ["chien", "chat"]),  # mapped to null
}
LISTS = {
    "en": ["dog", "cat", "red car", "tree", "beach"],
    "de": ["Hund", "Katze", "Auto", "Garten"],
    "zh-Hans": ["狗", "猫", "鸟", "海滩"],  # the identifier's zh, through the mapping
    "fr": ["chien", "chat"],  # mapped to nothing: never read
    "es": ["perro", "gato"],  # no Spanish caption: never read
}
MAPPING = {"zh": "zh-Hans", "fr": None}


def samples(n: int, seed: int = 5, start: int = 0) -> list[PoolSample]:
    rng = random.Random(seed)
    out = []
    for i in range(start, start + n):
        lid = rng.choices(list(TEMPLATES), weights=[5, 3, 3, 1, 1])[0]
        template, words = TEMPLATES[lid]
        word = rng.choices(words, weights=[2**k for k in range(len(words), 0, -1)])[0]
        out.append(
            PoolSample(
                f"{i:06d}",
                make_image(seed=i),
                caption=template.format(word),
                meta={"uid": f"uid{i:05d}"},
            )
        )
    return out


def write_pool(folder: Path, parts: int, pool: list[PoolSample]) -> None:
    folder.mkdir(parents=True)
    size = -(-len(pool) // parts)
    for s in range(parts):
        write_tar(folder / f"{s:05d}.tar", pool[s * size : (s + 1) * size])


def write_lists(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for code, entries in LISTS.items():
        (root / f"{code}.json").write_text(json.dumps(entries, ensure_ascii=False))
    return root


def config(tmp_path: Path, name: str, inputs: str, **balance) -> dict:
    return {
        "dataset": name,
        "output": str(tmp_path / "out"),
        "model": {"name": "x", "precision": "fp32", "batch_size": 8},
        "pool": {
            "input": inputs,
            "text_filter": {"enabled": False},
            "balance": {
                "metadata": str(tmp_path / "lists"),
                "seed": 3,
                "languages": MAPPING,
                **balance,
            },
            "shard": {"max_samples": 16},
        },
    }


def run(tmp_path: Path, tiny_model: dict, cfg: dict, partition: str = "2026-03-01") -> Path:
    cfg["model"] |= tiny_model
    result = run_pool(parse_config(cfg), partition)
    return published_dir(result["uri"])


def expected(samples: pl.DataFrame, t: int | None, p: float | None) -> tuple[dict, list]:
    """(t_L per metadata language, keep_prob per row) by the spec, from the published rows."""
    reached = samples.filter(pl.col("status").cast(pl.String).is_in(["kept", "filtered_balance"]))
    counts: dict[str, dict[int, int]] = {code: {} for code in LISTS}
    for row in reached.iter_rows(named=True):
        for e in row["entry_ids"]:
            counts[row["meta_lang"]][e] = counts[row["meta_lang"]].get(e, 0) + 1
    vec = {code: [counts[code].get(i, 0) for i in range(len(LISTS[code]))] for code in LISTS}
    if t is not None:
        en = vec["en"]
        p = sum(c for c in en if c < t) / sum(en)
    thresholds = {}
    for code, c in vec.items():
        if t is not None and code == "en":
            thresholds[code] = t
            continue
        c = sorted(c)
        if sum(c) == 0:
            continue
        q = [sum(c[: i + 1]) / sum(c) for i in range(len(c))]
        best = min(range(len(c)), key=lambda i: (abs(q[i] - p), i))
        thresholds[code] = c[best]
    probs = []
    for row in samples.iter_rows(named=True):
        if row["status"] not in ("kept", "filtered_balance"):
            probs.append(None)
            continue
        miss = 1.0
        for e in row["entry_ids"]:
            n, t_l = vec[row["meta_lang"]][e], thresholds[row["meta_lang"]]
            miss *= 1.0 - (1.0 if n < t_l else t_l / n)
        probs.append(1.0 - miss if row["entry_ids"] else 0.0)
    return thresholds, probs


def test_worldwide_pool_by_the_spec(tmp_path, tiny_model, prefect_harness) -> None:
    write_lists(tmp_path / "lists")
    pool = samples(90)
    write_pool(tmp_path / "one", 1, pool)
    write_pool(tmp_path / "three", 3, pool)
    got = pl.read_parquet(
        run(tmp_path, tiny_model, config(tmp_path, "w1", str(tmp_path / "one/*.tar"), t=4))
        / "samples.parquet"
    )
    cfg3 = config(tmp_path, "w3", str(tmp_path / "three/*.tar"), t=4)
    cfg3["runner"] = {"kind": "processes", "workers": 2}  # lists and automata per worker
    version = run(tmp_path, tiny_model, cfg3)
    three = pl.read_parquet(version / "samples.parquet")
    cols = ["uid", "status", "keep_prob", "entry_ids", "meta_lang"]
    assert got.select(cols).equals(three.select(cols))  # independent of sharding and workers

    # languages: the mapping sends zh to zh-Hans and fr to nothing; ja has no list
    by_lang = dict(got.group_by("lang").agg(pl.col("meta_lang").unique()).iter_rows())
    assert by_lang["zh"] == ["zh-Hans"] and by_lang["fr"] == [None] and by_lang["ja"] == [None]
    assert by_lang["en"] == ["en"] and by_lang["de"] == ["de"]
    no_list = got.filter(pl.col("meta_lang").is_null())
    assert no_list["keep_prob"].to_list() == [0.0] * no_list.height
    assert set(no_list["status"].cast(pl.String)) == {"filtered_balance"}

    thresholds, probs = expected(got, 4, None)
    assert len(set(thresholds.values())) > 1 and any(0 < p < 1 for p in probs if p is not None)
    assert got["keep_prob"].to_list() == pytest.approx(probs, abs=1e-12)
    stats = json.loads((version / "stats.json").read_text())["balance"]
    assert stats["mode"] == "worldwide" and stats["tail_fraction_from"] == "t"
    assert stats["metadata_languages"] == ["de", "en", "es", "fr", "zh-Hans"]
    assert {k: v["t"] for k, v in stats["languages"].items()} == thresholds
    assert set(stats["without_metadata"]) == {"fr", "ja"}
    assert sum(v["kept"] for v in stats["languages"].values()) == int(
        (got["status"] == "kept").sum()
    )
    head = stats["languages"]["zh-Hans"]["head"][0]
    assert head["entry"] == "海滩" and head["count"] == stats["languages"]["zh-Hans"]["captions"]

    # the partition's own counts, per language, are what the samples say
    counts = from_parquet_bytes((version / "entry_counts.parquet").read_bytes())
    assert set(counts.vectors) == {"de", "en", "zh-Hans"}  # only lists of languages present
    reached = three.filter(pl.col("status").cast(pl.String).is_in(["kept", "filtered_balance"]))
    for code, vec in counts.vectors.items():
        ids = reached.filter(pl.col("meta_lang") == code)["entry_ids"].explode().drop_nulls()
        assert vec.tolist() == [int((ids == i).sum()) for i in range(len(LISTS[code]))]

    # visible: report section and plot, card thresholds, shard json
    report = (version / "report.md").read_text()
    assert "Worldwide balancing" in report and "metaclip_kept_share_by_language.png" in report
    assert (version / "plots" / "metaclip_kept_share_by_language.png").stat().st_size > 0
    card = (version / "README.md").read_text()
    assert "## Metadata languages" in card
    assert f"| zh-Hans | {thresholds['zh-Hans']} |" in card and "| es | – | 0 |" in card
    with tarfile.open(version / "shards" / "000000.tar") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".json"))
        meta = json.loads(tar.extractfile(member).read())
    assert meta["meta_lang"] == got.filter(pl.col("uid") == meta["uid"])["meta_lang"].item()

    from tasks.verify import summarize_partition, verify_partition

    uri = str(tmp_path / "out" / "w3" / "pool" / "2026-03-01")
    assert verify_partition(uri) == []
    assert "balance: worldwide, tail fraction" in summarize_partition(uri)

    # lists were parsed only for languages with captions (es, fr never read)
    parsed = list((tmp_path / "out" / "w1" / "_cache" / "metaclip-metadata").glob("*/done.json"))
    assert len(parsed) == 3


def test_worldwide_running_counts_and_tail_fraction(tmp_path, tiny_model, prefect_harness):
    """Night 3 balances on nights 1-3; night 2 has no Chinese caption, and its running
    total still carries night 1's Chinese counts to night 3."""
    write_lists(tmp_path / "lists")
    days = ["2026-03-01", "2026-03-02", "2026-03-03"]
    for i, day in enumerate(days):
        pool = samples(40, seed=11 + i, start=100 * i)
        if i == 1:
            pool = [s for s in pool if "海滩" not in s.caption]
        write_pool(tmp_path / "in" / day, 1, pool)
    inputs = str(tmp_path / "in" / "{date}" / "*.tar")
    got = []
    for day in days:
        cfg = config(tmp_path, "rc", inputs, tail_fraction=0.3, running_counts=True)
        got.append(run(tmp_path, tiny_model, cfg, day))
    tables = [pl.read_parquet(v / "samples.parquet") for v in got]
    assert (tables[1]["meta_lang"] == "zh-Hans").sum() == 0
    before = tables[0].height + tables[1].height
    thresholds, probs = expected(pl.concat(tables, how="vertical_relaxed"), None, 0.3)
    assert tables[2]["keep_prob"].to_list() == pytest.approx(probs[before:], abs=1e-12)
    _, alone = expected(tables[2], None, 0.3)  # what ignoring earlier nights would give
    assert alone != pytest.approx(probs[before:], abs=1e-6)
    _, no_day1_zh = expected(pl.concat(tables[1:], how="vertical_relaxed"), None, 0.3)
    zh = (tables[2]["meta_lang"] == "zh-Hans").to_numpy()
    assert [
        p for p, z in zip(no_day1_zh[tables[1].height :], zh, strict=True) if z
    ] != pytest.approx(
        [p for p, z in zip(probs[before:], zh, strict=True) if z], abs=1e-6
    )  # night 1's Chinese counts matter here
    assert (got[1] / "running_counts.parquet").exists()
    stats = json.loads((got[2] / "stats.json").read_text())["balance"]
    assert stats["tail_fraction"] == 0.3 and stats["tail_fraction_from"] == "config"
    assert {k: v["t"] for k, v in stats["languages"].items()} == {
        k: v for k, v in thresholds.items() if k in stats["languages"]
    }


def curate(*args: str, env: dict | None = None):
    import os
    import subprocess
    import sys

    from tests.helpers import ROOT

    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600,
    )  # fmt: skip


def test_t_needs_english_one_line_each(tmp_path, tiny_model, prefect_harness) -> None:
    """t is English's threshold: without en.json planning stops; with it but no English
    caption in the pool the run stops after matching. One line, exit 2, either way."""
    import yaml
    from prefect.settings import get_current_settings

    write_lists(tmp_path / "lists")
    german = [s for s in samples(60) if "Foto" in s.caption]
    write_pool(tmp_path / "de", 1, german)
    cfg = config(tmp_path, "noen", str(tmp_path / "de" / "*.tar"), t=4)
    cfg["model"] |= tiny_model
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {"PREFECT_API_URL": str(get_current_settings().api.url)}
    proc = curate("run", "pool", "-c", str(path), "--partition", "2026-03-01", env=env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[-1].startswith("curate: config: invalid value for 'pool.balance.t': t is")
    assert "no English caption" in lines[-1] and "tail_fraction" in lines[-1]
    (tmp_path / "lists" / "en.json").unlink()
    proc = curate("run", "pool", "-c", str(path), "--partition", "2026-03-01", env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "has no en.json" in proc.stderr.strip().splitlines()[-1]
