"""Worldwide balancing against `specs/metaclip-worldwide.md`: golden cases worked by hand.

Every expected value below was worked out from the spec's text, not from the code: the
padded pattern of each entry, the spaced caption, the counts, p, each t_L and each product.
"""

from __future__ import annotations

import random

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.config import ConfigError
from tasks.metaclip.balance import entry_counts, keep_mask, keep_probabilities
from tasks.metaclip.langcounts import LangCounts
from tasks.metaclip.matcher import get_matcher
from tasks.metaclip.metadata import Metadata
from tasks.metaclip.padding import is_tight, pad_entry
from tasks.metaclip.worldwide import (
    WorldwideInputs,
    balance_worldwide,
    match_captions,
    tail_fraction_of,
    threshold_for,
)


def ids_of(captions: list[str | None], code: str, entries: list[str]) -> list[list[int]]:
    lists = {code: Metadata.from_entries(entries)}
    codes = pl.Series([code] * len(captions), dtype=pl.String)
    return match_captions(pl.Series(captions, dtype=pl.String), codes, lists).to_list()


# --- the tight rule -------------------------------------------------------------------------

# The spec's ranges, copied by hand (independent of the module's table).
SPEC_RANGES = [
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0x2CEB0, 0x2EBEF), (0xF900, 0xFAFF),
    (0x2E80, 0x2EFF), (0x2F00, 0x2FDF), (0x2FF0, 0x2FFF), (0x0E00, 0x0E7F),
    (0x0E80, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF), (0x0F00, 0x0FFF),
]  # fmt: skip
FULL_WIDTH = "，。、；：？！“”‘’（）【】《》〈〉「」『』～—"


def test_tight_characters_are_the_specs() -> None:
    for lo, hi in SPEC_RANGES:
        assert is_tight(chr(lo)) and is_tight(chr(hi)), hex(lo)
    assert all(is_tight(c) for c in FULL_WIDTH)
    assert all(is_tight(c) for c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    # letters, digits, kana, Hangul, the gap between CJK ext A and the URO, other marks
    for c in "aZé9ж\u3042\u30a2\ud55c\u4dc0\u0dff\u0e7f\u17ff\u1100«»\u00a0 \u3000":
        assert is_tight(c) == (c in "\u0e7f\u17ff"), repr(c)


@pytest.mark.parametrize(
    ("entry", "plain", "tight"),
    [
        ("dog", " dog ", " dog "),
        ("狗", " 狗 ", "狗"),
        ("iPhone 手机", " iPhone 手机 ", " iPhone 手机"),
        ("(dog)", " (dog) ", "(dog)"),
        ("Tokyo」", " Tokyo」 ", " Tokyo」"),
        ("「東京", " 「東京 ", "「東京"),
        ("", "  ", "  "),
    ],
)
def test_entry_padding(entry: str, plain: str, tight: str) -> None:
    assert pad_entry(entry, "plain") == plain
    assert pad_entry(entry, "tight") == tight


def test_cjk_substring_matches() -> None:
    # " 一只小狗在跑 " holds 狗, 跑 and 小狗 (overlapping); English-only padding finds none
    assert ids_of(["一只小狗在跑"], "zh", ["狗", "跑", "小狗", "猫"]) == [[0, 1, 2]]
    md = Metadata.from_entries(["狗", "跑", "小狗"])
    assert get_matcher(md, "plain").match(["一只小狗在跑"])[0].tolist() == []


def test_thai_substring_matches_overlap() -> None:
    # แมว (cat), แมวดำ (black cat), ดำ (black) all occur in แมวดำนอน ("black cat sleeps")
    assert ids_of(["แมวดำนอน", "หมา"], "th", ["แมว", "แมวดำ", "ดำ", "นก"]) == [[0, 1, 2], []]


def test_iphone_entry_needs_a_space_before_iphone_only() -> None:
    entries = ["iPhone 手机", "手机", "iPhone"]
    got = ids_of(["我的 iPhone 手机壳", "我的iPhone 手机", "iPhone 手机"], "zh", entries)
    # 1: " iPhone 手机" follows a space, 手机 is tight; "iPhone" needs " iPhone " (space):
    #    present ("iPhone" then " ")  2: 的 before iPhone: neither iPhone entry; 手机 yes
    assert got == [[0, 1, 2], [1], [0, 1, 2]]


def test_parenthesised_entry_inside_a_word() -> None:
    got = ids_of(["a(dog)b", "a (dog) b", "my dog"], "en", ["(dog)", "dog", "a"])
    # " a(dog)b ": only "(dog)" (no " dog ", no " a ")  " a (dog) b ": "(dog)" and " a "
    assert got == [[0], [0, 2], [1]]


def test_full_width_punctuation() -> None:
    entries = ["「東京」", "東京", "Tokyo」", "Tokyo", "，"]
    got = ids_of(
        ["在「東京」旅行", "in Tokyo」!", "Tokyo。", "东京，北京", "Tokyo, Japan"], "ja", entries
    )
    # full-width marks are never spaced out in the caption, so "Tokyo" (not tight) misses
    # "Tokyo。" and "Tokyo」"; "Tokyo」" needs only its left space; "，" alone is all tight
    assert got == [[0, 1], [2], [], [4], [3]]


def spec_match(caption: str | None, entries: list[str]) -> list[int]:
    """The spec written plainly: space the caption, pad each entry by the tight rule, `in`."""
    if caption is None:
        return []
    s = " " + caption + " "
    for p in ",.;:?!`":
        s = s.replace(p, f" {p} ")
    for c in "\t\n\r":
        s = s.replace(c, " ")
    out, seen = [], set()
    for i, e in enumerate(entries):
        if e in seen or any(c in e for c in "\t\n\r"):
            continue
        seen.add(e)
        left = "" if e and is_tight(e[0]) else " "
        right = "" if e and is_tight(e[-1]) else " "
        if left + e + right in s:
            out.append(i)
    return out


ALPHABET = [*list("ab 狗猫。「」(),.!\t"), "แมว", "iPhone", " "]


def text(lo: int, hi: int) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(ALPHABET), min_size=lo, max_size=hi).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    entries=st.lists(text(1, 4), min_size=1, max_size=12),
    captions=st.lists(st.one_of(st.none(), text(0, 12)), max_size=20),
)
def test_matching_equals_the_spec_on_random_input(entries: list[str], captions: list) -> None:
    got = ids_of(captions, "xx", entries)
    assert got == [spec_match(c, entries) for c in captions]


# --- thresholds -----------------------------------------------------------------------------


def test_tail_fraction_from_english_t() -> None:
    # counts below t=3: 2 + 2 + 1 of 16 matches; an entry at exactly t is head
    assert tail_fraction_of(np.array([11, 2, 2, 1, 3, 0]), 3) == 5 / 19
    assert tail_fraction_of(np.array([11, 2, 2, 1]), 3) == 0.3125


def test_threshold_is_the_first_closest_share() -> None:
    # sorted [1, 3, 4], shares [0.125, 0.5, 1]; p = 0.3125 is 0.1875 from both of the first
    # two: the first index wins, t = 1 (not 3)
    assert threshold_for(np.array([4, 1, 3]), 0.3125) == 1
    # sorted [0, 1, 1, 2, 2, 4], shares [0, .1, .2, .4, .6, 1]: p = 0.2 hits index 2
    assert threshold_for(np.array([4, 2, 2, 1, 1, 0]), 0.2) == 1
    assert threshold_for(np.array([0, 0, 0]), 0.5) is None  # no match: no share


def test_threshold_can_be_zero_and_then_nothing_is_kept() -> None:
    # sorted [0 x8, 1, 9]: shares 0 (x8), 0.1, 1; p = 0.04 is closest to 0 -> t_L = 0
    counts = np.array([0, 9, 0, 0, 1, 0, 0, 0, 0, 0])
    assert threshold_for(counts, 0.04) == 0
    lists = {
        "en": Metadata.from_entries(["a", "b"]),
        "xx": Metadata.from_entries(list("qrstuvwxyz")),
    }
    # en: "a" x24, "b" x1 -> t=2: p = 1/25 = 0.04; xx as above
    en = ["a"] * 24 + ["b"]
    xx = ["r"] * 9 + ["u"]
    captions = pl.Series(en + xx)
    codes = pl.Series(["en"] * 25 + ["xx"] * 10)
    ids = match_captions(captions, codes, lists)
    res = balance_worldwide(ids, codes, pl.Series([f"u{i}" for i in range(35)]), inputs(lists, t=2))
    assert res.tail_fraction == 0.04 and res.thresholds == {"en": 2, "xx": 0}
    assert res.keep_prob[25:].tolist() == [0.0] * 10 and not res.keep[25:].any()
    assert res.keep_prob[:24].tolist() == pytest.approx([2 / 24] * 24) and res.keep_prob[24] == 1.0


def inputs(lists, t=None, p=None, seed=0, prior=None) -> WorldwideInputs:
    return WorldwideInputs(dict(lists), t, p, seed, prior or LangCounts())


def test_t_without_english_caption_is_one_line_error() -> None:
    lists = {"en": Metadata.from_entries(["dog"]), "de": Metadata.from_entries(["hund"])}
    captions, codes = pl.Series(["ein hund"]), pl.Series(["de"])
    ids = match_captions(captions, codes, lists)
    with pytest.raises(ConfigError) as err:
        balance_worldwide(ids, codes, pl.Series(["u"]), inputs(lists, t=20))
    assert "\n" not in str(err.value) and "tail_fraction" in str(err.value)
    assert "no English caption" in str(err.value)
    # with the tail fraction configured, the same pool balances
    res = balance_worldwide(ids, codes, pl.Series(["u"]), inputs(lists, p=0.5))
    assert res.thresholds["de"] == 1 and res.keep_prob.tolist() == [1.0]


# --- a small pool, worked by hand -----------------------------------------------------------

LISTS = {
    "en": ["dog", "cat", "(dog)"],
    "de": ["hund", "katze"],
    "zh": ["狗", "猫"],
    "fr": ["chien"],  # a language with metadata but no captions
}
POOL = [  # caption, metadata language, expected ids, expected keep probability
    ("a dog", "en", [0], 2 / 3),
    ("dog and cat", "en", [0, 1], 1.0),
    ("my dog", "en", [0], 2 / 3),
    ("a(dog)b", "en", [2], 1.0),
    ("ein hund", "de", [0], 2 / 3),
    ("hund und katze", "de", [0, 1], 1.0),
    ("der hund", "de", [0], 2 / 3),
    ("eine katze", "de", [1], 1.0),
    ("nichts", "de", [], 0.0),
    ("一只狗", "zh", [0], 1 / 3),
    ("狗和猫", "zh", [0, 1], 1.0),
    ("小狗", "zh", [0], 1 / 3),
    ("日本の犬", None, [], 0.0),  # a language with captions but no metadata
    ("1234", None, [], 0.0),  # no letters: no language
]


def small_pool(with_fr: bool = True):
    lists = {k: Metadata.from_entries(v) for k, v in LISTS.items() if with_fr or k != "fr"}
    captions = pl.Series([c for c, *_ in POOL])
    codes = pl.Series([code for _, code, *_ in POOL], dtype=pl.String)
    uids = pl.Series([f"uid{i}" for i in range(len(POOL))])
    return lists, captions, codes, uids


def test_small_pool_by_hand() -> None:
    """en: dog 3, cat 1, (dog) 1; t=2 -> p = (1 + 1) / 5 = 0.4, p_en = [2/3, 1, 1].
    de: hund 3, katze 2 -> sorted [2, 3], shares [0.4, 1] -> t_de = 2, p_de = [2/3, 1].
    zh: 狗 3, 猫 1 -> sorted [1, 3], shares [0.25, 1]: 0.25 is closer to 0.4 -> t_zh = 1,
    p_zh = [1/3, 1]. fr has a list but no caption: no threshold, nothing changes."""
    lists, captions, codes, uids = small_pool()
    ids = match_captions(captions, codes, lists)
    assert ids.to_list() == [i for _, _, i, _ in POOL]
    res = balance_worldwide(ids, codes, uids, inputs(lists, t=2, seed=4))
    assert res.tail_fraction == 0.4
    assert res.thresholds == {"de": 2, "en": 2, "fr": None, "zh": 1}
    assert res.keep_prob.tolist() == pytest.approx([kp for *_, kp in POOL], abs=1e-15)
    assert np.array_equal(res.keep, keep_mask(res.keep_prob, uids, 4))
    assert res.pool_counts.vectors["de"].tolist() == [3, 2]
    assert res.pool_counts.vectors["fr"].tolist() == [0]
    rows = res.languages
    assert set(rows) == {"en", "de", "zh"}  # languages with captions
    assert rows["de"]["captions"] == 5 and rows["de"]["matched"] == 4 and rows["de"]["t"] == 2
    assert rows["zh"]["head"] == [
        {"id": 0, "entry": "狗", "count": 3},
        {"id": 1, "entry": "猫", "count": 1},
    ]
    assert rows["en"]["kept"] == int(res.keep[:4].sum())
    # the list without captions changes nothing
    without = balance_worldwide(ids, codes, uids, inputs(small_pool(False)[0], t=2, seed=4))
    assert without.keep_prob.tolist() == res.keep_prob.tolist()


def test_tail_fraction_configured_applies_to_english_too() -> None:
    lists, captions, codes, uids = small_pool()
    ids = match_captions(captions, codes, lists)
    # p = 0.4 configured: en sorted [0... no zeros: [1, 1, 3], shares [.2, .4, 1] -> t_en = 1
    res = balance_worldwide(ids, codes, uids, inputs(lists, p=0.4))
    assert res.thresholds["en"] == 1 and res.thresholds["de"] == 2
    assert res.keep_prob[:4].tolist() == pytest.approx([1 / 3, 1.0, 1 / 3, 1.0])


def test_running_counts_join_the_pool() -> None:
    """Counts of earlier nights add to this night's before p and t_L are taken."""
    lists, captions, codes, uids = small_pool()
    ids = match_captions(captions, codes, lists)
    prior = LangCounts(
        {"zh": np.array([0, 5]), "en": np.array([0, 0, 0])},
        {"zh": lists["zh"].sha256, "en": lists["en"].sha256},
    )
    res = balance_worldwide(ids, codes, uids, inputs(lists, t=2, prior=prior))
    # zh: 狗 3, 猫 1 + 5 = 6 -> sorted [3, 6], shares [1/3, 1] -> t_zh = 3; p_zh = [1, 1/2]
    assert res.thresholds["zh"] == 3
    assert res.keep_prob[9:12].tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert res.pool_counts.vectors["zh"].tolist() == [3, 1]  # this night's own counts


# --- worldwide on English equals English-only -----------------------------------------------


def english_pool(seed: int, n: int = 3000):
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(40)] + ["dog", "cat", "new york", "red car"]
    entries = [*list(dict.fromkeys(rng.choice(words) for _ in range(60))), "new york city"]
    seps = [" ", ", ", ". ", "  ", "!", "; "]
    captions = [
        "".join(rng.choice(words) + rng.choice(seps) for _ in range(rng.randint(0, 6)))
        for _ in range(n)
    ]
    return entries, captions


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_worldwide_on_english_equals_english_only(seed: int) -> None:
    """Entries without a tight first or last character: same ids, same probabilities."""
    entries, captions = english_pool(seed)
    assert not any(is_tight(e[0]) or is_tight(e[-1]) for e in entries)
    md = Metadata.from_entries(entries)
    series = pl.Series(captions)
    plain = get_matcher(md).match_series(series)
    uids = pl.Series([f"u{i}" for i in range(len(captions))])
    t = [3, 40, 400][seed]
    expected = keep_probabilities(plain, entry_counts(plain, len(md)), t)
    codes = pl.Series(["en"] * len(captions))
    ids = match_captions(series, codes, {"en": md})
    assert ids.to_list() == plain.to_list()
    res = balance_worldwide(ids, codes, uids, inputs({"en": md}, t=t, seed=1))
    assert res.keep_prob.tolist() == expected.tolist()  # bit for bit
    assert np.array_equal(res.keep, keep_mask(expected, uids, 1))


def test_no_caption_with_a_list() -> None:
    """Every caption's language lacks a list (tail fraction mode): all probabilities 0."""
    codes = pl.Series([None, None], dtype=pl.String)
    ids = pl.Series([[], []], dtype=pl.List(pl.UInt32))
    res = balance_worldwide(ids, codes, pl.Series(["a", "b"]), inputs({}, p=0.2))
    assert res.keep_prob.tolist() == [0.0, 0.0] and res.languages == {}
    assert res.pool_counts.vectors == {}


def test_many_languages_in_many_chunks(monkeypatch) -> None:
    """Chunks of every language share one pool; each caption's ids still land on its row."""
    from tasks.metaclip import matcher as mmod
    from tasks.metaclip import worldwide as wmod

    monkeypatch.setattr(mmod, "CHUNK_ROWS", 7)
    monkeypatch.setattr(wmod, "CHUNK_ROWS", 7)
    entries = {"en": ["dog", "cat", "a dog"], "zh": ["狗", "小狗", "猫"], "th": ["แมว", "ดำ"]}
    rng = random.Random(4)
    pieces = {
        "en": ["a", "dog", "cat", "x"],
        "zh": ["小", "狗", "猫", "的"],
        "th": ["แมว", "ดำ", "น"],
    }
    codes, captions = [], []
    for _ in range(500):
        code = rng.choice(["en", "zh", "th", None, "xx"])
        words = pieces.get(code or "en", pieces["en"])
        sep = " " if code == "en" else ""
        codes.append(code)
        captions.append(sep.join(rng.choice(words) for _ in range(rng.randint(0, 6))))
    lists = {c: Metadata.from_entries(e) for c, e in entries.items()}
    got = match_captions(pl.Series(captions), pl.Series(codes, dtype=pl.String), lists)
    want = [
        spec_match(cap, entries[c]) if c in entries else []
        for cap, c in zip(captions, codes, strict=True)
    ]
    assert got.to_list() == want
    assert sum(map(len, want)) > 300  # the pool does match


def test_real_captions_worldwide_equals_english_only_on_the_proxy_list() -> None:
    """LAION captions against the 500k proxy list, its tight-edged entries blanked (ids
    kept): worldwide mode gives English-only's ids and probabilities exactly."""
    import gzip
    import json

    from tests.helpers import shared_path

    golden = shared_path("data", "metaclip", "golden_laion1k_t5.jsonl.gz")
    proxy = shared_path("data", "metaclip", "proxy_metadata.json.gz")
    with gzip.open(golden, "rt", encoding="utf-8") as f:
        captions = pl.Series([json.loads(line)["caption"] for line in f])
    entries = json.loads(gzip.decompress(proxy.read_bytes()))
    blanked = ["\n" if e and (is_tight(e[0]) or is_tight(e[-1])) else e for e in entries]
    assert 0 < blanked.count("\n") < len(entries)
    md = Metadata.from_entries(blanked)
    plain = get_matcher(md).match_series(captions)
    codes = pl.Series(["en"] * len(captions))
    ids = match_captions(captions, codes, {"en": md})
    assert ids.to_list() == plain.to_list() and sum(map(len, ids.to_list())) > 1000
    uids = pl.Series([f"u{i}" for i in range(len(captions))])
    expected = keep_probabilities(plain, entry_counts(plain, len(md)), 5)
    res = balance_worldwide(ids, codes, uids, inputs({"en": md}, t=5))
    assert res.keep_prob.tolist() == expected.tolist()
