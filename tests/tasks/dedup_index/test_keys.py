"""Exact and perceptual lookups equal brute force: every pair found, nothing else."""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl
import pytest

from tasks.dedup_index import keys
from tasks.dedup_index.keys import KeyTable, exact_links, mih_blocks, mih_plan, perceptual_links


def shas(n: int, seed: int) -> list[str]:
    return [hashlib.sha256(f"{seed}-{i}".encode()).hexdigest() for i in range(n)]


def test_exact_links_are_every_row_with_the_candidates_sha():
    table_sha = shas(50, 1)
    table_sha[7] = table_sha[3]  # a value twice: both rows answer (the caller picks)
    table_sha[9] = None
    cand = [table_sha[3], "zz", None, table_sha[20], shas(1, 9)[0], table_sha[20][:-1] + "0"]
    table = KeyTable.build(
        pl.Series(table_sha, dtype=pl.String), pl.Series([0] * 50, dtype=pl.UInt64)
    )
    ci, ri = exact_links(table, pl.Series(cand, dtype=pl.String))
    got = sorted(zip(ci.tolist(), ri.tolist(), strict=True))
    want = [(0, 3), (0, 7), (3, 20)] + ([(5, 20)] if cand[5] == table_sha[20] else [])
    assert got == want


def brute(table: np.ndarray, cand: np.ndarray, d: int) -> set[tuple[int, int]]:
    """(candidate, every row within d), by all pairs."""
    out = set()
    for c, q in enumerate(cand.tolist()):
        for row, v in enumerate(table.tolist()):
            if bin(q ^ v).count("1") <= d:
                out.add((c, row))
    return out


PLANS = [(0, 1), (1, 1), (1, 2), (4, 2), (4, 3), (4, 4), (4, 5), (7, 3), (7, 4), (7, 8)]


@pytest.mark.parametrize(("d", "m"), PLANS)
def test_perceptual_links_equal_all_pairs(d, m, monkeypatch):
    """Every block count m: d + 1 blocks probe one value each, fewer blocks probe every
    value within d // m bits (what a large table uses)."""
    monkeypatch.setattr(keys, "mih_plan", lambda _d, _rows: m)
    rng = np.random.default_rng(d)
    table = rng.integers(0, 2**64, 400, dtype=np.uint64)
    table[10] = table[2]  # repeated value
    cand = rng.integers(0, 2**64, 300, dtype=np.uint64)
    for k in range(60):  # planted copies at 0..d+2 flipped bits
        bits = rng.choice(64, size=k % (d + 3), replace=False)
        v = int(table[k * 5])
        for b in bits:
            v ^= 1 << int(b)
        cand[k] = v
    kt = KeyTable.build(pl.Series(shas(400, 2)), pl.Series(table))
    ci, ri, dist = perceptual_links(kt, pl.Series(cand), d)
    got = set(zip(ci.tolist(), ri.tolist(), strict=True))
    assert got == brute(table, cand, d)
    assert len(got) == len(ci)  # each pair once
    assert all(
        bin(int(cand[c]) ^ int(table[r])).count("1") == x
        for c, r, x in zip(ci, ri, dist, strict=True)
    )


@pytest.mark.parametrize("m", [3, 5, 8])
def test_blocks_looked_up_by_address_equal_the_binary_search(m, monkeypatch):
    """Narrow blocks are looked up in an address table (offsets per block value) instead of
    by binary search: the same pairs, including block values 0 and all ones (the table's
    last offsets), unknown pHashes and values many rows share."""
    monkeypatch.setattr(keys, "mih_plan", lambda _d, _rows: m)
    rng = np.random.default_rng(m)
    table = rng.integers(0, 2**64, 500, dtype=np.uint64)
    table[:5] = [0, 2**64 - 1, 1, 2**63, 0]
    table[100:140] = table[7]  # one value, 40 rows
    cand = [int(table[k]) ^ (1 << int(k % 64)) for k in range(0, 500, 3)]
    cand += [0, 2**64 - 1, None, int(table[7])]
    series = pl.Series(cand, dtype=pl.UInt64)
    ph = pl.Series([*table.tolist()[:-1], None], dtype=pl.UInt64)

    def links(direct_bits: int) -> tuple[np.ndarray, ...]:
        monkeypatch.setattr(keys, "DIRECT_BITS", direct_bits)
        monkeypatch.setattr(keys, "DIRECT_VALUES_PER_PROBE", 1 << 30)  # however few probes
        table = KeyTable.build(pl.Series(shas(500, 6)), ph)
        out = perceptual_links(table, series, 4)
        assert bool(table.offsets) == (direct_bits > 0)  # the path under test was taken
        return out

    direct, searched = links(22), links(0)
    for a, b in zip(direct, searched, strict=True):
        assert np.array_equal(a, b)
    known = np.array([c if c is not None else 0 for c in cand], dtype=np.uint64)
    want = brute(table[:-1], known, 4) - {(len(cand) - 2, r) for r in range(499)}
    assert set(zip(direct[0].tolist(), direct[1].tolist(), strict=True)) == want


def test_a_few_probes_into_a_small_table_build_no_address_table():
    """At d = 2 every table takes 3 blocks of 21-22 bits: a 10-row table probed by a few
    candidates built 32 MB of address tables; it is searched instead, with the same pairs."""
    rng = np.random.default_rng(3)
    values = pl.Series(rng.integers(0, 2**64, 10, dtype=np.uint64))
    table = KeyTable.build(pl.Series(shas(10, 7)), values)
    cand = pl.Series([int(table.ph_values[0]) ^ 0b101, 7], dtype=pl.UInt64)
    ci, ri, dist = perceptual_links(table, cand, 2)
    assert table.blocks[2][0] == 3 and not table.offsets
    assert (ci.tolist(), dist.tolist()) == ([0], [2]) and ri.tolist() == [int(table.ph_rows[0])]


def test_blocks_cover_64_bits_and_round_trip():
    for d in range(0, 12):
        blocks = mih_blocks(d)
        assert len(blocks) == d + 1 and sum(w for _, w in blocks) == 64
    table = KeyTable.build(pl.Series(shas(20, 3)), pl.Series(np.arange(20, dtype=np.uint64)))
    again = KeyTable.from_bytes(table.to_bytes(4))
    assert np.array_equal(again.sha_words, table.sha_words)
    assert 4 in again.blocks and again.blocks[4][0] == 5 and len(again.blocks[4][1]) == 5
    _, ri, _ = perceptual_links(again, pl.Series([3], dtype=pl.UInt64), 1)
    assert sorted(ri.tolist()) == [1, 2, 3, 7, 11, 19]  # 3 and the values 1 bit away


def test_probes_are_held_a_chunk_of_queries_at_a_time(monkeypatch):
    """Fewer blocks probe every value within a radius: queries x values per block would
    grow without bound with the distance (254 values per block at d = 8, m = 3). Chunked,
    the answer is the same, including unknown pHashes in a chunk."""
    monkeypatch.setattr(keys, "mih_plan", lambda _d, _rows: 3)
    rng = np.random.default_rng(8)
    table = rng.integers(0, 2**64, 300, dtype=np.uint64)
    cand = [int(table[k]) ^ (1 << int(k % 64)) ^ (1 << int((k * 7) % 64)) for k in range(40)]
    cand += [None, *rng.integers(0, 2**64, 20, dtype=np.uint64).tolist()]
    kt = KeyTable.build(pl.Series(shas(300, 5)), pl.Series(table))
    series = pl.Series(cand, dtype=pl.UInt64)
    whole = perceptual_links(kt, series, 8)
    monkeypatch.setattr(keys, "CHUNK_PROBES", 700)  # 2 queries x 254 values at a time
    chunked = perceptual_links(KeyTable.build(pl.Series(shas(300, 5)), pl.Series(table)),
                               series, 8)  # fmt: skip
    for a, b in zip(whole, chunked, strict=True):
        assert np.array_equal(a, b)
    known = np.array([c if c is not None else 0 for c in cand], dtype=np.uint64)
    want = brute(table, known, 8) - {(40, r) for r in range(300)}  # the unknown one: none
    assert set(zip(whole[0].tolist(), whole[1].tolist(), strict=True)) == want


def test_a_large_table_uses_fewer_blocks_and_the_choice_travels_with_it(monkeypatch):
    """Defect: d + 1 blocks of ~13 bits at d = 4 hit rows / 8,192 rows per block, so a
    night's perceptual lookups grew with the history (610 candidate pairs a query at 1M
    rows). Large tables take fewer, wider blocks searched within a radius; the block count
    is written with the table (runs are read by later code)."""
    assert mih_plan(4, 20_000) == 5
    assert mih_plan(4, 1_000_000) == 3
    assert mih_plan(4, 5_000_000) == 3
    assert mih_plan(0, 10**9) == 1
    rng = np.random.default_rng(1)
    values = rng.integers(0, 2**64, 500, dtype=np.uint64)
    table = KeyTable.build(pl.Series(shas(500, 4)), pl.Series(values))
    monkeypatch.setattr(keys, "mih_plan", lambda _d, _rows: 3)
    data = table.to_bytes(4)
    monkeypatch.undo()
    again = KeyTable.from_bytes(data)
    assert again.blocks[4][0] == 3  # not re-planned for 500 rows on reading
    probe = pl.Series([int(values[9]) ^ 0b1011], dtype=pl.UInt64)
    assert perceptual_links(again, probe, 4)[1].tolist() == [9]


def test_pointer_layouts_old_and_new_are_read_and_the_new_one_is_written():
    """keys.npz of format 3 may hold fewer blocks than d + 1, which a format-2 reader
    cannot read, and rows.parquet of format 4 holds sha256 as bytes, which a format-3
    reader would take for text: the pointer says 4, so such a reader (a rollback) takes it
    for no index and reads segments directly; this code still reads formats 2 and 3."""
    import json

    from tasks.dedup_index.runs import Pointer, RunInfo

    run = RunInfo("r-1", 5, {"2026-01-01": "v1"}, {"2026-01-01": 0}, None, 4, None)
    data = Pointer([run]).to_bytes()
    assert json.loads(data)["format"] == 4
    for older in (2, 3):
        old = json.dumps({**json.loads(data), "format": older}).encode()
        assert Pointer.parse(old).runs == [run]
    assert Pointer.parse(json.dumps({**json.loads(data), "format": 1}).encode()).runs == []
