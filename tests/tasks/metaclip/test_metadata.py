"""MetaCLIP metadata loading and caption matching against the spec (specs/metaclip.md)."""

from __future__ import annotations

import gzip
import json
import logging
import pickle
import random
import threading

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.metaclip import matcher as mdmod
from tasks.metaclip.matcher import Matcher, get_matcher
from tasks.metaclip.metadata import Metadata, MetadataError, load_metadata

BACKENDS = ["ahocorasick_rs", "pyahocorasick"]


def slow_match(caption: str | None, entries: list[str]) -> list[int]:
    """The spec, written plainly: pad, wrap punctuation, space out tabs/newlines, then `in`."""
    if caption is None:
        return []
    s = " " + caption + " "
    for p in [",", ".", ";", ":", "?", "!", "`"]:
        s = s.replace(p, f" {p} ")
    for c in ["\t", "\n", "\r"]:
        s = s.replace(c, " ")
    seen: set[str] = set()
    out = []
    for i, e in enumerate(entries):
        if e in seen:  # a later duplicate never reports its id
            continue
        seen.add(e)
        if " " + e + " " in s:
            out.append(i)
    return out


def ids_of(matcher: Matcher, caption: str | None) -> list[int]:
    return matcher.match([caption])[0].tolist()


ENTRIES = [
    "dog",
    "cat",
    "hot dog",
    "3",
    "5",
    "inch",
    "e",
    "the",
    "St. Louis",
    "new york",
    "york city",
    "new york city",
    "A",
]


@pytest.fixture(scope="module", params=BACKENDS)
def matcher(request: pytest.FixtureRequest) -> Matcher:
    return Matcher(Metadata.from_entries(ENTRIES), backend=request.param)


def named(matcher: Matcher, caption: str | None) -> set[str]:
    return {ENTRIES[i] for i in ids_of(matcher, caption)}


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("A dog.", {"A", "dog"}),
        ("dogs", set()),
        ("(dog)", set()),
        ("dog's", set()),
        ("cat/dog", set()),
        ("CAT", set()),
        ("3.5 inch", {"3", "5", "inch"}),
        ("my  hot  dog", {"dog"}),
        ("e.g. the cat", {"e", "the", "cat"}),
        ("St. Louis", set()),
        ("St.Louis St . Louis", set()),
        ("new york city", {"new york", "york city", "new york city"}),
        ("hot\tdog", {"hot dog", "dog"}),
        ("hot\ndog\r\ncat", {"hot dog", "dog", "cat"}),
        ("hot\u00a0dog", set()),  # only tab/newline/CR become spaces
        ("cat!dog?", {"cat", "dog"}),
        ("`the`", {"the"}),
        ("", set()),
        (None, set()),
    ],
)
def test_spec_consequences(matcher: Matcher, caption: str | None, expected: set[str]) -> None:
    assert named(matcher, caption) == expected
    assert named(matcher, caption) == {ENTRIES[i] for i in slow_match(caption, ENTRIES)}


def test_match_series_agrees_with_match(matcher: Matcher) -> None:
    caps = ["A dog.", None, "", "new york city", "e.g. the cat"]
    series = matcher.match_series(pl.Series(caps))
    assert series.dtype == pl.List(pl.UInt32)
    assert series.to_list() == [a.tolist() for a in matcher.match(caps)]
    assert all(a.dtype == np.uint32 for a in matcher.match(caps))
    assert matcher.match([]) == []
    assert matcher.match_series(pl.Series([], dtype=pl.String)).len() == 0


ALPHABET = "aAbB1 ,.;:?!`'()/-\t\n\ré日😀\u00a0\x0b"
texts = st.text(alphabet=ALPHABET, max_size=30)


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[str | None], list[str]]:
    captions = draw(st.lists(st.one_of(st.none(), texts), max_size=8))
    pieces = [c[i:j] for c in captions if c for i in range(len(c)) for j in range(i, len(c) + 1)]
    piece = st.sampled_from(pieces) if pieces else st.just("a")
    entry = st.one_of(st.text(alphabet=ALPHABET, max_size=6), piece, st.sampled_from(["a", "1"]))
    entries = draw(st.lists(entry, min_size=1, max_size=12))
    return captions, entries


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_matches_slow_reference(backend: str, case: tuple[list[str | None], list[str]]) -> None:
    captions, entries = case
    matcher = Matcher(Metadata.from_entries(entries), backend=backend)
    got = [a.tolist() for a in matcher.match(captions)]
    assert got == [slow_match(c, entries) for c in captions]


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunked_threaded_search(monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    rng = random.Random(7)
    vocab = ["a", "b", "new", "york", "city", "x.y", "日本", "😀", ""]
    seps = [" ", "  ", ", ", ". ", "\t", "\n", "!", "/"]
    captions = [
        "".join(rng.choice(vocab) + rng.choice(seps) for _ in range(rng.randint(0, 8)))
        if rng.random() > 0.05
        else None
        for _ in range(400)
    ]
    entries = [*vocab, "new york", "york city", "a b", "a", "b , a"]
    monkeypatch.setattr(mdmod, "CHUNK_ROWS", 13)
    matcher = Matcher(Metadata.from_entries(entries), backend=backend, threads=3)
    got = matcher.match_series(pl.Series(captions)).to_list()
    expected = [slow_match(c, entries) for c in captions]
    assert got == expected
    assert sum(map(len, expected)) > 400  # the corpus really exercises matching


def test_forked_search_equals_single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(11)
    vocab = ["a", "b", "new", "york", "city", "x.y", "日本", "😀", ""]
    seps = [" ", ", ", ". ", "\t", "\n", "!"]
    captions = [
        "".join(rng.choice(vocab) + rng.choice(seps) for _ in range(rng.randint(0, 8)))
        if rng.random() > 0.05
        else None
        for _ in range(1000)
    ]
    entries = [*vocab, "new york", "york city", "a b", "a", "b , a"]
    monkeypatch.setattr(mdmod, "CHUNK_ROWS", 17)
    matcher = Matcher(Metadata.from_entries(entries), backend="ahocorasick_rs", threads=3)
    single = matcher.match_arrays(pl.Series(captions))
    monkeypatch.setattr(mdmod, "PARALLEL_MIN_ROWS", 100)
    monkeypatch.setattr(mdmod, "cpu_count", lambda: 3)
    calls: list[int] = []
    real = mdmod.run_forked
    monkeypatch.setattr(mdmod, "run_forked", lambda fn, n, w: calls.append(w) or real(fn, n, w))
    assert np.array_equal(matcher.match_arrays(pl.Series(captions))[1], single[1])
    assert calls == []  # forking is opt-in: never inside a Prefect worker's process
    forked = matcher.match_arrays(pl.Series(captions), allow_fork=True)
    assert calls == [3]
    for a, b in zip(single, forked, strict=True):
        assert np.array_equal(a, b) and a.dtype == b.dtype
    got = mdmod.entry_ids_series(*forked).to_list()
    assert got == [slow_match(c, entries) for c in captions]


def test_get_matcher_is_cached_and_thread_safe() -> None:
    md = Metadata.from_entries(["alpha", "beta", "alpha beta"])
    got: list[Matcher] = []
    threads = [threading.Thread(target=lambda: got.append(get_matcher(md))) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(got) == 6 and all(m is got[0] for m in got)
    assert get_matcher(Metadata.from_entries(["alpha", "beta", "alpha beta"])) is got[0]
    assert get_matcher(Metadata.from_entries(["beta", "alpha"])) is not got[0]


def test_matcher_pickles_by_metadata() -> None:
    md = Metadata.from_entries(["alpha", "beta"])
    clone = pickle.loads(pickle.dumps(get_matcher(md)))
    assert clone.match(["alpha, beta"])[0].tolist() == [0, 1]


# --- loading ---------------------------------------------------------------------------


def test_load_plain_and_gzip_by_magic(tmp_path) -> None:
    entries = ["dog", "hot dog", "日本", "St. Louis"]
    plain = tmp_path / "meta.json"
    plain.write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    zipped = tmp_path / "meta.txt"  # gzip without a .gz name: detected by magic bytes
    zipped.write_bytes(gzip.compress(json.dumps(entries).encode()))
    a, b = load_metadata(str(plain)), load_metadata(str(zipped))
    assert a.entries == b.entries == tuple(entries)
    assert a.sha256 == b.sha256 == Metadata.from_entries(entries).sha256
    assert a.sha256 != Metadata.from_entries(entries[::-1]).sha256


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"dog": 1}', "is not a JSON list of strings"),
        (b'["dog", 3]', "is not a JSON list of strings (item 1: int)"),
        (b'["dog", null]', "is not a JSON list of strings (item 1: NoneType)"),
        (b'["dog", ', "is not valid JSON"),
        (b"[]", "is an empty list"),
        (b"\x1f\x8b\x08\x00garbage", "is not valid gzip"),
        (b'["\\ud800"]', "lone surrogate"),
        (b"\xff\xfe[]", "is not UTF-8 text"),
    ],
)
def test_bad_metadata_is_one_line_error(tmp_path, content: bytes, message: str) -> None:
    path = tmp_path / "meta.json"
    path.write_bytes(content)
    with pytest.raises(MetadataError) as info:
        load_metadata(str(path))
    assert message in str(info.value)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_missing_metadata_file(tmp_path) -> None:
    with pytest.raises(MetadataError, match="cannot read"):
        load_metadata(str(tmp_path / "absent.json"))


def test_duplicates_keep_first_id_and_warn(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "meta.json"
    path.write_text(json.dumps(["dog", "cat", "dog", "cat", "dog", "bird"]))
    with caplog.at_level(logging.WARNING, logger="tasks.metaclip.metadata"):
        md = load_metadata(str(path))
    assert "3 duplicate entries" in caplog.text
    assert len(md) == 6  # ids stay positions in the file
    assert Matcher(md).match(["dog cat bird"])[0].tolist() == [0, 1, 5]
