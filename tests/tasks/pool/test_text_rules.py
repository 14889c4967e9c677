"""Caption heuristics: hand-written examples per rule, the rule order, and the vectorised
polars path against the plain-Python one on random captions."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.config import TextFilterConfig
from tasks.pool.text_rules import RULES, text_filter_reason, text_filter_reasons
from tests.helpers import shared_path

CFG = TextFilterConfig()

EXAMPLES = [
    # passes
    ("A dog runs on the beach.", None),
    ("日本の桜の写真 です", None),
    ("Ein Hund läuft am Strand", None),
    ("Кошка спит на диване", None),
    ("Nature Tones - https://www.design-seeds.com/in-nature", None),  # mentions a URL
    ("Scorching June 14 for Alabama.jpg", None),  # a file name with real words around it
    ("IMGA_41229 M31 Andromeda Galaxy camera focus test", None),
    ("2 cats", None),
    ("buy buy cheap now", None),  # 2/4 = 0.5 is not more than max_repeat_fraction
    ("the cat and the dog", None),
    # empty
    (None, "text:empty"),
    ("", "text:empty"),
    ("  \t\n\u3000\u00a0 ", "text:empty"),
    # too_long
    ("word " * 300, "text:too_long"),
    # filename_or_url
    ("IMG_2034.JPG", "text:filename_or_url"),
    ("DSC00012", "text:filename_or_url"),
    ("image.png", "text:filename_or_url"),
    ("photo-2021-01-01.jpeg", "text:filename_or_url"),
    ("PXL_20210101_123456789", "text:filename_or_url"),
    ("IMG-20190101-WA0001.jpg  img_0002.JPG", "text:filename_or_url"),
    ("https://example.com/gallery/photo/41206", "text:filename_or_url"),
    ("www.HealthyPlace.com", "text:filename_or_url"),
    ("  HTTP://EXAMPLE.COM  ", "text:filename_or_url"),
    # too_few_words
    ("sunset", "text:too_few_words"),
    ("onboard-off-board-clients", "text:too_few_words"),
    ("  桜  ", "text:too_few_words"),
    # mostly_non_letters
    ("★★★ 123 !!!", "text:mostly_non_letters"),
    ("2019-08-22 00064 x", "text:mostly_non_letters"),
    ("$$$ 100% OFF $$$", "text:mostly_non_letters"),
    # repeated_token_spam
    ("buy buy buy buy cheap", "text:repeated_token_spam"),
    ("Sale SALE sale sale shoes", "text:repeated_token_spam"),
    ("ας ΑΣ ας house", "text:repeated_token_spam"),  # 'ΑΣ' lower-cases to 'ας' (final sigma)
]


@pytest.mark.parametrize(("caption", "expected"), EXAMPLES)
def test_examples_scalar(caption: str | None, expected: str | None) -> None:
    assert text_filter_reason(caption, CFG) == expected


def test_examples_vectorised() -> None:
    captions = pl.Series("caption", [c for c, _ in EXAMPLES], dtype=pl.String)
    got = text_filter_reasons(captions, CFG)
    assert got.dtype == pl.String and len(got) == len(EXAMPLES)
    assert got.to_list() == [e for _, e in EXAMPLES]


def test_rule_names_and_first_failing_rule_wins() -> None:
    assert RULES == (
        "empty",
        "too_long",
        "filename_or_url",
        "too_few_words",
        "mostly_non_letters",
        "repeated_token_spam",
    )
    short = TextFilterConfig(max_chars=10)
    assert text_filter_reason("IMG_20190101_123456.jpg", short) == "text:too_long"
    assert text_filter_reason("IMG_2034.JPG", CFG) == "text:filename_or_url"  # not too_few_words
    assert text_filter_reason("1 1 1 1", CFG) == "text:mostly_non_letters"  # before spam


def test_config_thresholds() -> None:
    assert text_filter_reason("sunset", TextFilterConfig(min_words=0)) is None
    assert text_filter_reason("a b c", TextFilterConfig(min_words=4)) == "text:too_few_words"
    # 3 letters of 5 non-space characters: 0.6 is not below 0.6
    assert text_filter_reason("abc 12", TextFilterConfig(min_letter_fraction=0.6)) is None
    assert text_filter_reason("abc 12", TextFilterConfig(min_letter_fraction=0.61)) == (
        "text:mostly_non_letters"
    )
    spam = "la la la la la la la la"
    assert text_filter_reason(spam, TextFilterConfig(min_words_for_repeat=9)) is None
    assert text_filter_reason("a b a c", TextFilterConfig(max_repeat_fraction=0.4)) == (
        "text:repeated_token_spam"
    )
    assert text_filter_reason("x" * 10, TextFilterConfig(max_chars=10, min_words=1)) is None
    assert text_filter_reason("x" * 11, TextFilterConfig(max_chars=10)) == "text:too_long"


def test_disabled_filter_passes_everything() -> None:
    off = TextFilterConfig(enabled=False)
    captions = pl.Series(["", None, "IMG_1.JPG"], dtype=pl.String)
    assert text_filter_reasons(captions, off).to_list() == [None, None, None]
    assert text_filter_reason("", off) is None


def test_empty_and_all_null_series() -> None:
    assert text_filter_reasons(pl.Series([], dtype=pl.String), CFG).to_list() == []
    assert text_filter_reasons(pl.Series([None, None]), CFG).to_list() == ["text:empty"] * 2


# --- vectorised == scalar on random captions -----------------------------------------------

# Characters assigned in Python's Unicode database (Rust's regex tables may be newer).
_ANY_CHAR = st.characters(exclude_categories=("Cs", "Cn"))
_TOKENS = st.sampled_from(
    [
        "IMG_1234.JPG", "dsc0001", "photo.png", "a.webp", "www.x.org", "https://a.b/c",
        "HTTP://X", "P1010001", "pxl_20210101_1", "img", "buy", "Buy", "BUY", "ΑΣ", "ας",
        "İstanbul", "straße", "123", "!!!", "★", "猫", "the", "a", ".jpg", "x.jpg.", "K",
        "IMG_12", "dsc-123", "Img_0001.Jpeg", "ftp://f", "WWW.",
    ]
)  # fmt: skip
_SPACES = st.sampled_from([" ", "  ", "\t", "\n", "\u3000", "\u00a0", "\u2009", "\x85", "\x1c"])
_WORDY = st.lists(st.one_of(_TOKENS, st.text(_ANY_CHAR, max_size=6)), max_size=12).flatmap(
    lambda words: st.lists(_SPACES, min_size=len(words) + 1, max_size=len(words) + 1).map(
        lambda spaces: "".join(s + w for s, w in zip(spaces, [*words, ""], strict=True))
    )
)
_SHORT = st.lists(_TOKENS, min_size=1, max_size=4).map(" ".join)
_CAPTIONS = st.one_of(st.none(), st.text(_ANY_CHAR, max_size=40), _WORDY, _SHORT)
_CONFIGS = st.builds(
    TextFilterConfig,
    min_words=st.integers(0, 4),
    max_chars=st.integers(1, 60),
    min_letter_fraction=st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]),
    max_repeat_fraction=st.sampled_from([0.2, 0.5, 0.75, 1.0]),
    min_words_for_repeat=st.integers(2, 6),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(captions=st.lists(_CAPTIONS, min_size=1, max_size=40), cfg=_CONFIGS)
def test_vectorised_agrees_with_scalar(captions: list[str | None], cfg: TextFilterConfig) -> None:
    got = text_filter_reasons(pl.Series(captions, dtype=pl.String), cfg).to_list()
    assert got == [text_filter_reason(c, cfg) for c in captions]


@pytest.mark.shared
def test_real_captions_agree_and_mostly_pass() -> None:
    laion = pl.read_parquet(shared_path("data", "captions", "laion400m_10k.parquet"))["TEXT"]
    got = text_filter_reasons(laion, CFG)
    assert got.to_list() == [text_filter_reason(c, CFG) for c in laion.to_list()]
    rejected = got.drop_nulls()
    assert 0.005 < len(rejected) / len(laion) < 0.2  # alt-texts are mostly usable
    assert set(rejected.unique()) <= {f"text:{r}" for r in RULES}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(captions=st.lists(_CAPTIONS.filter(lambda c: c is not None), min_size=1, max_size=30))
def test_words_are_pythons_str_split(captions: list[str]) -> None:
    """DataComp counts words with `str.split()`; so do the rules. Defect: U+001C..U+001F (which
    `str.split()` splits on) joined words, so "the dog\\x1fruns" had 2 words, not 3."""
    for k in (1, 3):
        cfg = TextFilterConfig(
            min_words=k, max_chars=10**6, min_letter_fraction=0.0, max_repeat_fraction=1.0
        )
        got = text_filter_reasons(pl.Series(captions, dtype=pl.String), cfg).to_list()
        for caption, reason in zip(captions, got, strict=True):
            if reason != "text:filename_or_url":
                assert (reason is not None) == (len(caption.split()) < k), repr(caption)
    assert text_filter_reason("the dog\x1fruns", TextFilterConfig(min_words=3)) is None
