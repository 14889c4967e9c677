"""MetaCLIP balancing: counts, probabilities, draws, sharding invariance, balance_file."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import multiprocessing
import random
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tasks.errors import InputError
from tasks.metaclip import balance as balmod
from tasks.metaclip import matcher as mdmod
from tasks.metaclip.balance import (
    balance_file,
    caption_draws,
    caption_uids,
    entry_counts,
    keep_mask,
    keep_probabilities,
    load_running_counts,
    save_running_counts,
    uniform_draws,
)
from tasks.metaclip.matcher import get_matcher
from tasks.metaclip.metadata import Metadata, load_metadata
from tests.helpers import SHARED as SHARED_ROOT

SHARED = SHARED_ROOT / "data"
L = pl.List(pl.UInt32)


def slow_match(caption: str | None, entries: list[str]) -> list[int]:
    if caption is None:
        return []
    s = " " + caption + " "
    for p in ",.;:?!`":
        s = s.replace(p, f" {p} ")
    for c in "\t\n\r":
        s = s.replace(c, " ")
    return [i for i, e in enumerate(entries) if e not in entries[:i] and f" {e} " in s]


def slow_keep_prob(ids: list[int], counts: list[int], t: int) -> float:
    prod = 1.0
    for e in ids:
        prod *= 1.0 - t / max(counts[e], t)
    return 1.0 - prod if ids else 0.0


def test_counts_and_probabilities_by_hand() -> None:
    ids = pl.Series([[0, 1], [0], [], None, [0, 2], [2]], dtype=L)
    counts = entry_counts(ids, 4)
    assert counts.tolist() == [3, 1, 2, 0] and counts.dtype == np.int64
    # t=2: p = [2/3, 1, 1, 1] -> [1, 2/3, 0, 0, 1, 1]
    kp = keep_probabilities(ids, counts, 2)
    assert kp.tolist() == pytest.approx([1.0, 2 / 3, 0.0, 0.0, 1.0, 1.0], abs=1e-15)
    # t=1: p = [1/3, 1, 1/2, 1]
    kp1 = keep_probabilities(ids, counts, 1)
    assert kp1.tolist() == pytest.approx([1.0, 1 / 3, 0.0, 0.0, 1 - (2 / 3) * 0.5, 0.5])


def test_counts_each_caption_once_per_entry() -> None:
    ids = pl.Series([[3, 3, 1], [1, 1]], dtype=L)
    assert entry_counts(ids, 4).tolist() == [0, 2, 0, 1]
    with pytest.raises(ValueError, match="out of range"):
        entry_counts(pl.Series([[4]], dtype=L), 4)


def test_keep_probabilities_match_plain_loop() -> None:
    rng = np.random.default_rng(3)
    lists = [sorted(set(rng.integers(0, 50, rng.integers(0, 6)).tolist())) for _ in range(2000)]
    ids = pl.Series(lists, dtype=L)
    counts = entry_counts(ids, 50)
    for t in (1, 7, 40, 10_000):
        expected = [slow_keep_prob(m, counts.tolist(), t) for m in lists]
        np.testing.assert_allclose(keep_probabilities(ids, counts, t), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="positive"):
        keep_probabilities(ids, counts, 0)


def test_uniform_draws_are_a_stable_hash() -> None:
    uids = [f"u{i}" for i in range(20_000)]
    d = uniform_draws(uids, seed=11)
    digest = hashlib.blake2b(b"11\x00u5", digest_size=8).digest()
    assert d[5] == (int.from_bytes(digest, "big") >> 11) / 2**53
    assert d.dtype == np.float64 and d.min() >= 0.0 and d.max() < 1.0
    assert abs(d.mean() - 0.5) < 0.01 and abs((d < 0.1).mean() - 0.1) < 0.01
    assert np.array_equal(uniform_draws(pl.Series(uids[::-1]), 11), d[::-1])
    assert not np.array_equal(uniform_draws(uids, 12), d)


def test_caption_draws_hash_the_caption_uid() -> None:
    captions = pl.Series(["a dog", None, "日本 😀", "a dog", ""])
    uids = [hashlib.sha256((c or "").encode()).hexdigest() for c in captions.to_list()]
    assert caption_uids(captions) == uids
    draws = caption_draws(captions, 3)
    assert np.array_equal(draws, uniform_draws(uids, 3))
    assert draws[0] == draws[3] and draws[0] != draws[2]


def test_keep_mask_equals_draw_below_probability() -> None:
    uids = [f"id-{i}" for i in range(5000)]
    kp = np.random.default_rng(0).choice([0.0, 1.0, 0.3, 0.75, 1e-9], size=5000)
    expected = uniform_draws(uids, 4) < kp
    assert np.array_equal(keep_mask(kp, uids, 4), expected)
    assert np.array_equal(keep_mask(kp, pl.Series(uids), 4), expected)
    assert 0 < expected[kp == 0.3].mean() < 0.5


# --- sharding invariance ----------------------------------------------------------------

VOCAB = ["dog", "cat", "red", "car", "new", "york", "city", "the", "a", "3", "日本"]
ENTRIES = [*VOCAB, "new york", "york city", "red car", "the cat", "dog"]


def corpus(n: int, seed: int) -> list[str | None]:
    rng = random.Random(seed)
    seps = [" ", ", ", ". ", "  ", "\t", "/", "!"]
    return [
        None
        if rng.random() < 0.02
        else "".join(rng.choice(VOCAB) + rng.choice(seps) for _ in range(rng.randint(0, 7)))
        for _ in range(n)
    ]


def shard_counts(md: Metadata, captions: list[str | None]) -> tuple[pl.Series, np.ndarray]:
    ids = get_matcher(md).match_series(pl.Series(captions, dtype=pl.String))
    return ids, entry_counts(ids, len(md))


def shard_decide(ids: pl.Series, counts: np.ndarray, t: int, uids: list[str], seed: int):
    kp = keep_probabilities(ids, counts, t)
    return kp, keep_mask(kp, uids, seed)


def run_sharded(pool: Executor, md: Metadata, captions, uids, cuts, t, seed):
    bounds = list(zip([0, *cuts], [*cuts, len(captions)], strict=True))
    firsts = list(pool.map(shard_counts, [md] * len(bounds), [captions[a:b] for a, b in bounds]))
    total = sum(c for _, c in firsts)
    args = [
        (ids, total, t, uids[a:b], seed) for (ids, _), (a, b) in zip(firsts, bounds, strict=True)
    ]
    decided = list(pool.map(shard_decide, *zip(*args, strict=True)))
    ids = pl.concat([i for i, _ in firsts])
    return ids, np.concatenate([k for k, _ in decided]), np.concatenate([k for _, k in decided])


def test_decisions_independent_of_sharding_and_executor() -> None:
    md = Metadata.from_entries(ENTRIES)
    captions = corpus(1400, seed=1)
    uids = [f"sample-{i:05d}" for i in range(len(captions))]
    t, seed = 40, 9
    ids, counts = shard_counts(md, captions)
    kp, keep = shard_decide(ids, counts, t, uids, seed)
    assert ids.to_list() == [slow_match(c, ENTRIES) for c in captions]
    assert 0.05 < keep.mean() < 0.95 and ((kp > 0) & (kp < 1)).sum() > 500
    cuts = [1, 150, 151, 600, 999, 1300]  # 7 uneven shards, one of a single row
    spawn = multiprocessing.get_context("spawn")
    with ThreadPoolExecutor(3) as threads, ProcessPoolExecutor(2, mp_context=spawn) as procs:
        for pool in (threads, procs):
            s_ids, s_kp, s_keep = run_sharded(pool, md, captions, uids, cuts, t, seed)
            assert s_ids.to_list() == ids.to_list()
            assert np.array_equal(s_kp, kp) and np.array_equal(s_keep, keep)


# --- running counts ---------------------------------------------------------------------


def test_running_counts_round_trip(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    url = str(tmp_path / "state" / "running_counts.parquet")
    assert load_running_counts(url, "abc") is None
    counts = np.zeros(1000, np.int64)
    counts[[0, 7, 999]] = [5, 1, 123456789012]
    save_running_counts(url, counts, "abc")
    back = load_running_counts(url, "abc")
    assert back is not None and back.dtype == np.int64 and np.array_equal(back, counts)
    with caplog.at_level(logging.WARNING, logger="tasks.metaclip.balance"):
        assert load_running_counts(url, "other") is None
    assert "ignoring running counts" in caplog.text
    # the next partition balances on history + its own counts
    nightly = back + entry_counts(pl.Series([[7], [7, 999]], dtype=L), 1000)
    assert nightly[[0, 7, 999]].tolist() == [5, 3, 123456789013]
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="unreadable"):
        load_running_counts(str(tmp_path / "junk.parquet"), "abc")
    with pytest.raises(ValueError, match="negative"):
        save_running_counts(url, -counts, "abc")


# --- balance_file -----------------------------------------------------------------------


def write_inputs(tmp_path: Path, captions: list[str | None], **extra) -> tuple[str, str]:
    meta = tmp_path / "metadata.json.gz"
    meta.write_bytes(gzip.compress(json.dumps(ENTRIES).encode()))
    inp = tmp_path / "captions.parquet"
    pl.DataFrame({"caption": captions, "n": range(len(captions)), **extra}).write_parquet(inp)
    return str(meta), str(inp)


def test_balance_file_round_trip(tmp_path) -> None:
    captions = corpus(600, seed=2)
    meta, inp = write_inputs(tmp_path, captions)
    out = str(tmp_path / "out" / "balanced.parquet")
    stats = balance_file(meta, inp, out, t=30, seed=5)
    df = pl.read_parquet(out)
    assert df.columns == ["caption", "n", "entry_ids", "keep_prob", "keep"]
    assert df["n"].to_list() == list(range(600)) and df["caption"].to_list() == captions
    assert df.schema["entry_ids"] == L and df.schema["keep_prob"] == pl.Float64
    expected_ids = [slow_match(c, ENTRIES) for c in captions]
    assert df["entry_ids"].to_list() == expected_ids
    counts = np.bincount([e for m in expected_ids for e in m], minlength=len(ENTRIES)).tolist()
    expected_kp = [slow_keep_prob(m, counts, 30) for m in expected_ids]
    np.testing.assert_allclose(df["keep_prob"].to_numpy(), expected_kp, rtol=0, atol=1e-12)
    uids = [hashlib.sha256((c or "").encode()).hexdigest() for c in captions]
    expected_keep = uniform_draws(uids, 5) < np.array(expected_kp)
    assert df["keep"].to_list() == expected_keep.tolist()
    assert stats["rows"] == 600 and stats["kept"] == int(expected_keep.sum())
    assert stats["matched"] == sum(1 for m in expected_ids if m)
    assert stats["metadata_sha256"] == Metadata.from_entries(ENTRIES).sha256


def test_balance_file_uses_uid_column(tmp_path) -> None:
    captions = ["red car"] * 50  # identical captions: only the uids tell their draws apart
    meta, inp = write_inputs(tmp_path, captions, uid=[f"u{i}" for i in range(50)])
    out = str(tmp_path / "balanced.parquet")
    balance_file(meta, inp, out, t=10, seed=1)
    df = pl.read_parquet(out)
    kp = df["keep_prob"].to_numpy()
    assert np.allclose(kp, 1 - (1 - 10 / 50) ** 3)  # "red", "car", "red car"
    expected = uniform_draws([f"u{i}" for i in range(50)], 1) < kp
    assert df["keep"].to_list() == expected.tolist() and 0 < expected.sum() < 50


def test_balance_file_null_uid_falls_back_to_caption_hash(tmp_path) -> None:
    uids = [None if i % 3 == 0 else f"u{i}" for i in range(40)]
    meta, inp = write_inputs(tmp_path, ["red car"] * 40, key=uids)
    out = str(tmp_path / "balanced.parquet")
    balance_file(meta, inp, out, t=10, seed=2, uid_column="key")
    df = pl.read_parquet(out)
    caption_uid = hashlib.sha256(b"red car").hexdigest()
    draw_uids = [u if u is not None else caption_uid for u in uids]
    expected = uniform_draws(draw_uids, 2) < df["keep_prob"].to_numpy()
    assert df["keep"].to_list() == expected.tolist()
    assert df["key"].to_list() == uids


@pytest.mark.parametrize("with_uid", [False, True])
def test_balance_file_forked_equals_single_process(
    tmp_path, monkeypatch: pytest.MonkeyPatch, with_uid: bool
) -> None:
    captions = corpus(3000, seed=4)
    extra = {"uid": [None if i % 7 == 0 else f"u{i}" for i in range(3000)]} if with_uid else {}
    meta, inp = write_inputs(tmp_path, captions, **extra)
    monkeypatch.setattr(mdmod, "CHUNK_ROWS", 64)
    single = str(tmp_path / "single.parquet")
    balance_file(meta, inp, single, t=40, seed=3)
    monkeypatch.setattr(mdmod, "PARALLEL_MIN_ROWS", 500)
    monkeypatch.setattr(balmod, "PARALLEL_MIN_ROWS", 500)
    forks: list[int] = []
    real = mdmod.run_forked
    spy = lambda fn, n, w: forks.append(n) or real(fn, n, w)  # noqa: E731
    monkeypatch.setattr(mdmod, "run_forked", spy)
    monkeypatch.setattr(balmod, "run_forked", spy)
    forked = str(tmp_path / "forked.parquet")
    balance_file(meta, inp, forked, t=40, seed=3)
    assert forks[0] == 3000 and len(forks) == 2  # matching and the draws both forked
    a, b = pl.read_parquet(single), pl.read_parquet(forked)
    assert a.equals(b) and a["entry_ids"].to_list() == [slow_match(c, ENTRIES) for c in captions]
    assert a["keep_prob"].to_numpy().tobytes() == b["keep_prob"].to_numpy().tobytes()
    assert 0 < a["keep"].sum() < 3000


def test_balance_file_bad_columns(tmp_path) -> None:
    meta, inp = write_inputs(tmp_path, ["a dog"])
    with pytest.raises(InputError, match="no caption column 'text'") as info:
        balance_file(meta, inp, str(tmp_path / "o.parquet"), t=5, caption_column="text")
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="no uid column 'key'"):
        balance_file(meta, inp, str(tmp_path / "o.parquet"), t=5, uid_column="key")
    with pytest.raises(InputError, match="not text"):
        balance_file(meta, inp, str(tmp_path / "o.parquet"), t=5, caption_column="n")
    assert not (tmp_path / "o.parquet").exists()


# --- golden -----------------------------------------------------------------------------


@pytest.mark.shared
def test_golden_laion1k_t5() -> None:
    golden_path = SHARED / "metaclip" / "golden_laion1k_t5.jsonl.gz"
    if not golden_path.exists():
        pytest.skip("shared MetaCLIP data absent")
    with gzip.open(golden_path, "rt", encoding="utf-8") as f:
        golden = [json.loads(line) for line in f]
    md = load_metadata(str(SHARED / "metaclip" / "proxy_metadata.json.gz"))
    texts = pl.read_parquet(SHARED / "captions" / "laion400m_10k.parquet")["TEXT"][:1000]
    assert texts.to_list() == [g["caption"] for g in golden]
    ids = get_matcher(md).match_series(texts)
    assert ids.to_list() == [g["entry_ids"] for g in golden]
    kp = keep_probabilities(ids, entry_counts(ids, len(md)), 5)
    np.testing.assert_allclose(kp, [g["keep_prob"] for g in golden], rtol=0, atol=1e-12)
