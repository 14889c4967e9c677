"""Quality rules: DataComp's basic filter (hand-worked), image size and shape boundaries,
boilerplate on a generated pool against a plain-Python count, and token lengths against
open_clip's own tokenizer."""

from __future__ import annotations

import random
import re
import string
import unicodedata
from collections import Counter

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.pool.quality import (
    BASIC_FILTER,
    BOILERPLATE,
    TOO_SHORT,
    basic_filter_caption_mask,
    boilerplate_reasons,
    image_reasons,
    normalize_caption,
    normalized_captions,
    short_caption_reasons,
    token_lengths,
    top_repeated,
)

# --- DataComp basic filter -------------------------------------------------------------------


def test_basic_filter_preset_matches_datacomps_thresholds() -> None:
    # apply_filter.py: (caption_num_words > 2) & (caption_num_chars > 5),
    # (min_image_dim >= 200) & (aspect_ratio <= 3.0), fasttext_lang_pred == "en"
    assert BASIC_FILTER == {
        "text_filter": {"languages": ["en"], "min_lang_score": 0.0, "min_words": 3, "min_chars": 6},
        "image_filter": {"min_side": 200, "max_aspect_ratio": 3.0},
    }


def test_basic_filter_caption_mask_hand_worked() -> None:
    rows = [
        ("a dog runs", "en", True),  # 3 words, 10 characters
        ("two dogs", "en", False),  # 2 words
        ("a b c", "en", False),  # 3 words, 5 characters
        ("a b c ", "en", True),  # 6 characters: DataComp counts the raw text
        ("ein Hund rennt", "de", False),
        ("a dog runs", None, False),  # undecidable language
        (None, "en", False),
        ("a\tdog\nruns", "en", True),  # str.split() splits on any whitespace
    ]
    got = basic_filter_caption_mask(
        pl.Series([r[0] for r in rows], dtype=pl.String),
        pl.Series([r[1] for r in rows], dtype=pl.String),
    )
    assert got.to_list() == [r[2] for r in rows]


def test_short_caption_reasons_boundary() -> None:
    got = short_caption_reasons(pl.Series(["abcde", "abcdef", " abcd", None]), min_chars=6)
    assert got.to_list() == [TOO_SHORT, None, TOO_SHORT, None]


# --- image rules -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("w", "h", "expected"),
    [
        (200, 200, None),  # exactly min_side passes
        (199, 400, "image:too_small"),
        (400, 199, "image:too_small"),
        (600, 200, None),  # exactly 3.0 passes
        (200, 600, None),
        (601, 200, "image:aspect_ratio"),
        (200, 601, "image:aspect_ratio"),
        (100, 1000, "image:too_small"),  # both fail: too_small comes first
        (0, 0, "image:too_small"),
        (None, 300, None),  # unknown size: nothing to judge
        (4000, 3000, None),
    ],
)
def test_image_reasons_boundaries(w: int | None, h: int | None, expected: str | None) -> None:
    got = image_reasons(pl.Series([w], dtype=pl.Int64), pl.Series([h], dtype=pl.Int64), 200, 3.0)
    assert got.to_list() == [expected]


def test_image_rules_turn_off_with_none() -> None:
    w, h = pl.Series([10, 1000, 0]), pl.Series([10, 10, 5])
    assert image_reasons(w, h, None, 3.0).to_list() == [
        None,
        "image:aspect_ratio",
        "image:aspect_ratio",
    ]
    assert image_reasons(w, h, 200, None).to_list() == ["image:too_small"] * 3
    assert image_reasons(w, h, None, None).to_list() == [None, None, None]


def test_image_reasons_against_plain_python() -> None:
    rng = random.Random(0)
    sizes = [(rng.randint(0, 900), rng.randint(0, 900)) for _ in range(2000)]

    def reference(w: int, h: int) -> str | None:
        if min(w, h) < 150:
            return "image:too_small"
        if max(w, h) / min(w, h) > 2.5:
            return "image:aspect_ratio"
        return None

    got = image_reasons(
        pl.Series([s[0] for s in sizes]), pl.Series([s[1] for s in sizes]), 150, 2.5
    )
    assert got.to_list() == [reference(w, h) for w, h in sizes]


# --- boilerplate -----------------------------------------------------------------------------


def _reference_normalize(s: str) -> str:
    """Plain Python: lower, whitespace runs -> " ", strip P*/S*/whitespace at both ends, digits."""
    s = re.sub(r"\s+", " ", s.lower())
    edge = {i for i, ch in enumerate(s) if unicodedata.category(ch)[0] in "PS" or ch.isspace()}
    start, end = 0, len(s)
    while start < end and start in edge:
        start += 1
    while end > start and end - 1 in edge:
        end -= 1
    return re.sub(r"\d+", "<n>", s[start:end])


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("IMG_2034.JPG", "img_<n>.jpg"),
        ("img_1175.jpg", "img_<n>.jpg"),
        ("Photo 1 of 12", "photo <n> of <n>"),
        ("  Photo 3 of 12!! ", "photo <n> of <n>"),
        ("★ Best\t\tSeller ★", "best seller"),
        ("Digital art selected for the #", "digital art selected for the"),
        ("!!!", ""),
        (None, None),
    ],
)
def test_normalize_caption_hand_worked(caption: str | None, expected: str | None) -> None:
    assert normalize_caption(caption) == expected


ALPHABET = st.sampled_from([*"aZ zé Ü,.!?#★-_()'\"\t 0123456789٣７日本の", "\u3000"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(ALPHABET, max_size=30), max_size=20))
def test_normalized_captions_against_plain_python(captions: list[str]) -> None:
    got = normalized_captions(pl.Series(captions, dtype=pl.String)).to_list()
    assert got == [_reference_normalize(c) for c in captions]


def _pool(seed: int = 0) -> list[str]:
    """1,000 captions: two templates repeated with varying numbers, exact repeats, unique ones."""
    rng = random.Random(seed)
    pool = [f"Photo {rng.randint(1, 99)} of {rng.randint(1, 99)}" for _ in range(30)]
    pool += [f"IMG_{rng.randint(0, 9999):04d}.JPG" for _ in range(12)]
    pool += ["Stock Photo"] * 10 + ["stock photo!"] * 1  # 11 after normalisation
    pool += ["Throw Pillow"] * 10
    adjectives, nouns = ["red", "old", "tiny", "wet", "happy"], ["dog", "car", "house", "tree"]
    while len(pool) < 1000:  # no digits: they would collide after normalisation
        name = "".join(rng.choice(string.ascii_lowercase) for _ in range(8))
        pool.append(f"a {rng.choice(adjectives)} {rng.choice(nouns)} called {name}")
    rng.shuffle(pool)
    return pool


@pytest.mark.parametrize(
    ("max_repeats", "max_fraction"), [(10, None), (None, 0.01), (5, 0.05), (None, None)]
)
def test_boilerplate_reasons_against_counter(
    max_repeats: int | None, max_fraction: float | None
) -> None:
    pool = _pool()
    counts = Counter(_reference_normalize(c) for c in pool)

    def flagged(c: str) -> bool:
        n = counts[_reference_normalize(c)]
        over = (max_repeats is not None and n > max_repeats) or (
            max_fraction is not None and n > max_fraction * len(pool)
        )
        return n > 1 and over

    got = boilerplate_reasons(pl.Series(pool), max_repeats, max_fraction).to_list()
    assert got == [BOILERPLATE if flagged(c) else None for c in pool]
    if max_repeats == 10:  # templates (30, 12) and "stock photo" (11) out; "throw pillow" (10) in
        assert {_reference_normalize(c) for c, r in zip(pool, got, strict=True) if r} == {
            "photo <n> of <n>",
            "img_<n>.jpg",
            "stock photo",
        }


def test_boilerplate_never_flags_a_unique_caption_in_a_small_partition() -> None:
    captions = pl.Series(["a red dog", "a red dog", "a blue cat", None])
    assert boilerplate_reasons(captions, None, 0.001).to_list() == [
        BOILERPLATE,
        BOILERPLATE,
        None,
        None,
    ]


def test_top_repeated() -> None:
    pool = _pool()
    counts = Counter(_reference_normalize(c) for c in pool)
    top = top_repeated(pl.Series(pool), 3)
    assert top.columns == ["normalised", "count", "example"]
    assert top["normalised"].to_list() == ["photo <n> of <n>", "img_<n>.jpg", "stock photo"]
    assert top["count"].to_list() == [counts[k] for k in top["normalised"]]
    firsts = {k: next(c for c in pool if _reference_normalize(c) == k) for k in top["normalised"]}
    assert top["example"].to_list() == [firsts[k] for k in top["normalised"]]


# --- token lengths ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    open_clip = pytest.importorskip("open_clip")
    return open_clip.get_tokenizer("ViT-B-32")


def _caption_of_n_tokens(tokenizer, n: int) -> str:
    """A caption whose encoding has exactly n tokens (checked, not assumed)."""
    words = ["dog", "on", "the", "beach", "at", "sunset", "with", "friends"]
    caption = " ".join(words[i % len(words)] for i in range(n))
    assert len(tokenizer.encode(caption)) == n
    return caption


def test_token_lengths_equal_open_clip_positions(tokenizer) -> None:
    short = [
        "a dog",
        "A photo of a cat, sitting on a RED sofa!",
        "日本の桜の写真",
        "&amp; html entities   and   spaces",
        "",
    ]
    n_tokens, truncated = token_lengths(pl.Series(short), tokenizer)
    tokens = tokenizer(short)
    # positions up to and including the end token (where CLIP reads its text feature)
    used = (tokens == tokenizer.eot_token_id).int().argmax(dim=1) + 1
    assert n_tokens.to_list() == used.tolist()
    assert n_tokens.to_list() == (tokens != 0).sum(dim=1).tolist()
    assert not truncated.any()


def test_token_lengths_boundary_and_long_captions(tokenizer) -> None:
    at_limit = _caption_of_n_tokens(tokenizer, 75)  # + start + end = 77 positions: fits
    over = _caption_of_n_tokens(tokenizer, 76)
    long = "The quick brown fox jumps over the lazy dog. " * 20
    captions = [at_limit, over, long, None, at_limit]
    n_tokens, truncated = token_lengths(pl.Series(captions), tokenizer)
    assert n_tokens.to_list() == [77, 78, len(tokenizer.encode(long)) + 2, None, 77]
    assert truncated.to_list() == [False, True, True, False, False]
    tokens = tokenizer([at_limit, over, long])
    assert (tokens != 0).sum(dim=1).tolist() == [77, 77, 77]  # open_clip cuts to the context
    assert len(tokenizer.encode(over)) + 2 == 78
    assert tokens[1, -1].item() == tokenizer.eot_token_id
    n_short, cut = token_lengths(pl.Series([at_limit]), tokenizer, context_length=32)
    assert n_short.to_list() == [77] and cut.to_list() == [True]


def test_boilerplate_counts_distinct_images_when_given():
    """One photo re-posted with its caption is a copy (dedup's business), not a template."""
    captions = pl.Series(["Click here"] * 4 + ["A nice dog"] * 3 + ["x"])
    images = pl.Series(["a", "b", "c", "d", "e", "e", "e", "f"])
    got = boilerplate_reasons(captions, 2, None, images).to_list()
    assert got == [BOILERPLATE] * 4 + [None] * 4
    assert boilerplate_reasons(captions, 2, None).to_list() == [BOILERPLATE] * 7 + [None]


def test_counts_read_off_the_tokens_equal_encoding_and_save_the_second_encoding(tokenizer):
    """The text tower's tensor gives every count that was not cut; only a caption whose end
    token fills the last slot is encoded again (it may have been longer)."""
    from tasks.pool.quality import counts_from_tokens

    captions = ["a dog", "A photo of a cat on a RED sofa!", _caption_of_n_tokens(tokenizer, 74),
                _caption_of_n_tokens(tokenizer, 75), "The quick brown fox. " * 20, ""]  # fmt: skip
    known = counts_from_tokens(captions, tokenizer(captions), tokenizer)
    want, _ = token_lengths(pl.Series(captions), tokenizer)
    expected = dict(zip(captions, want.to_list(), strict=True))
    assert known == {c: n for c, n in expected.items() if n <= 76}  # 77 and longer: unsure
    encoded = []

    class Counting:
        context_length = tokenizer.context_length

        def encode(self, text):
            encoded.append(text)
            return tokenizer.encode(text)

    again, _ = token_lengths(pl.Series(captions), Counting(), known=known)
    assert again.to_list() == want.to_list()
    assert sorted(encoded) == sorted(c for c in captions if c not in known)
