"""Caption heuristics: cheap rules that drop alt-texts no CLIP model should learn from.

Every rule has a name, and a rejected caption gets the reason ``text:<rule>`` of the FIRST
rule it fails, in the order of `RULES`. The order puts the rules that explain a caption best
first: ``IMG_2034.JPG`` is one word, but "it is a file name" says more than "too few words".

1. ``empty``: null, or nothing but whitespace.
2. ``too_long``: more than ``max_chars`` characters (after stripping surrounding whitespace).
3. ``filename_or_url``: every word is a file name (``image.png``, ``DSC00012``, ``IMG_1234``)
   or a URL (``http(s)://``, ``ftp://``, ``www.``). A real caption that mentions a URL passes.
4. ``too_few_words``: fewer than ``min_words`` words.
5. ``mostly_non_letters``: letters / non-whitespace characters < ``min_letter_fraction``.
   Letters are Unicode letters, so "日本の桜の写真 です" passes.
6. ``repeated_token_spam``: at least ``min_words_for_repeat`` words, and the most frequent
   lower-cased word makes up more than ``max_repeat_fraction`` of them.

Definitions shared by both implementations: whitespace is what Python's ``str.split()`` splits
on (Unicode White_Space plus the ASCII separators U+001C..U+001F, spelled out in `WHITESPACE`
so Python's ``re`` and polars' Rust regex agree exactly); a word is a maximal run of
non-whitespace characters, so the words are exactly ``caption.split()``, as DataComp counts
them; file-name and URL patterns are ASCII, matched case-insensitively.

The rules see the caption as written; surrounding whitespace is stripped here, so only
``too_long`` depends on it (it counts the characters between the first and last word).

`text_filter_reasons` is the vectorised path (polars string expressions, no Python per row);
`text_filter_reason` is a plain-Python implementation of the same rules for one caption,
written independently so that tests can check one against the other.
"""

from __future__ import annotations

import re
from collections import Counter

import polars as pl

from schemas.config import TextFilterConfig

RULES: tuple[str, ...] = (
    "empty",
    "too_long",
    "filename_or_url",
    "too_few_words",
    "mostly_non_letters",
    "repeated_token_spam",
)

# Python's str.isspace() characters: Unicode White_Space and U+001C..U+001F (file, group,
# record and unit separators), as literals ("\u2000-\u200a" is a range inside a class).
WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
)
_WS_CHARS = WHITESPACE.replace("\u2000-\u200a", "".join(map(chr, range(0x2000, 0x200B))))
_WORD = f"[^{WHITESPACE}]+"

URL_PREFIXES = ("http://", "https://", "ftp://", "www.")
FILE_EXTENSIONS = (
    *("jpg", "jpeg", "jpe", "jfif", "png", "gif", "webp", "bmp", "tif", "tiff", "heic"),
    *("heif", "avif", "svg", "ico", "raw", "dng", "cr2", "nef", "arw", "psd"),
)
# Camera and phone default names: IMG_1234, DSC00012, P1010001, PXL_20210101_123456789, ...
CAMERA_PREFIXES = (
    *("img", "dsc", "dscn", "dscf", "dcim", "pict", "pic", "p", "gopr", "gp", "mvi", "vid"),
    *("pxl", "sam", "wp", "imag", "pano", "scan", "photo", "image"),
)


def _ci(word: str) -> str:
    """`word` as a regex matching any ASCII case of it, without relying on engine case folding.

    Python's ``re`` and Rust's regex fold a few non-ASCII letters differently (e.g. the
    Kelvin sign); spelling out ``[iI][mM][gG]`` keeps both engines exactly equal.
    """
    return "".join(f"[{c}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)


def _alternatives(words: list[str] | tuple[str, ...]) -> str:
    return "(?:" + "|".join(_ci(w) for w in words) + ")"


_TOKEN_RULE = (
    f"^(?:{_alternatives(URL_PREFIXES)}"
    f"|.*\\.{_alternatives(FILE_EXTENSIONS)}$"
    f"|{_alternatives(CAMERA_PREFIXES)}[_-]?[0-9]{{3,}}[a-zA-Z0-9_.-]*$)"
)


def text_filter_reasons(captions: pl.Series, cfg: TextFilterConfig) -> pl.Series:
    """Reason per caption (``text:<rule>``), null where it passes; all null when disabled."""
    if not cfg.enabled:
        return pl.Series("text_reason", [None] * len(captions), dtype=pl.String)
    frame = pl.DataFrame({"c": captions.cast(pl.String)})
    return frame.lazy().select(_reason_expr(pl.col("c"), cfg)).collect()["text_reason"]


def _reason_expr(caption: pl.Expr, cfg: TextFilterConfig) -> pl.Expr:
    text = caption.str.strip_chars(_WS_CHARS)
    n_words = text.str.count_matches(_WORD)
    non_space = text.str.len_chars() - text.str.count_matches(f"[{WHITESPACE}]")
    letters = text.str.count_matches(r"\p{L}")
    words = text.str.extract_all(_WORD)
    all_tokens_named = words.list.eval(pl.element().str.contains(_TOKEN_RULE)).list.all()
    top_count = (
        text.str.to_lowercase()
        .str.extract_all(_WORD)
        .list.eval(pl.element().unique_counts().max())
        .list.first()
    )
    checks = {
        "empty": caption.is_null() | (n_words == 0),
        "too_long": text.str.len_chars() > cfg.max_chars,
        "filename_or_url": all_tokens_named,
        "too_few_words": n_words < cfg.min_words,
        "mostly_non_letters": letters / non_space < cfg.min_letter_fraction,
        "repeated_token_spam": (n_words >= cfg.min_words_for_repeat)
        & (top_count / n_words > cfg.max_repeat_fraction),
    }
    expr = pl.when(checks[RULES[0]]).then(pl.lit(f"text:{RULES[0]}"))
    for name in RULES[1:]:
        expr = expr.when(checks[name].fill_null(False)).then(pl.lit(f"text:{name}"))
    return expr.otherwise(pl.lit(None, dtype=pl.String)).alias("text_reason")


# --- plain-Python implementation (one caption), the independent reference --------------------

_WS_SET = frozenset(_WS_CHARS)
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_CAMERA_RE = re.compile(f"(?:{'|'.join(CAMERA_PREFIXES)})[_-]?[0-9]{{3,}}[a-z0-9_.-]*")


def _split_words(text: str) -> list[str]:
    words: list[str] = []
    current: list[str] = []
    for ch in text:
        if ch in _WS_SET:
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(ch)
    if current:
        words.append("".join(current))
    return words


def _is_named_token(word: str) -> bool:
    """A file name, camera default name or URL (ASCII patterns, any ASCII case)."""
    low = word.translate(_ASCII_LOWER)
    if low.startswith(URL_PREFIXES):
        return True
    _stem, dot, ext = low.rpartition(".")
    if dot and ext in FILE_EXTENSIONS:
        return True
    return _CAMERA_RE.fullmatch(low) is not None


def text_filter_reason(caption: str | None, cfg: TextFilterConfig) -> str | None:
    """The reason for one caption (same rules as `text_filter_reasons`), or None if it passes."""
    if not cfg.enabled:
        return None
    text = "" if caption is None else caption.strip(_WS_CHARS)
    words = _split_words(text)
    if not words:
        return "text:empty"
    if len(text) > cfg.max_chars:
        return "text:too_long"
    if all(_is_named_token(w) for w in words):
        return "text:filename_or_url"
    if len(words) < cfg.min_words:
        return "text:too_few_words"
    non_space = sum(len(w) for w in words)
    letters = sum(ch.isalpha() for w in words for ch in w)
    if letters / non_space < cfg.min_letter_fraction:
        return "text:mostly_non_letters"
    if len(words) >= cfg.min_words_for_repeat:
        top = Counter(_split_words(text.lower())).most_common(1)[0][1]
        if top / len(words) > cfg.max_repeat_fraction:
            return "text:repeated_token_spam"
    return None
