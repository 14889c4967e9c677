"""Caption and image quality rules beyond `text_rules`: DataComp's basic filter, image size and
shape, boilerplate captions repeated across a partition, and CLIP token lengths.

DataComp's ``basic_filter`` baseline, as coded in mlfoundations/datacomp
``baselines/apply_filter.py``, function ``load_uids_with_basic_filter_helper`` (the paper's
"basic filtering"; its README: "simple checks on caption length, english being the detected
caption language, image size, and image aspect ratio"). A sample is kept when all hold:

1. ``fasttext_lang_pred == "en"``: top-1 label of fastText ``lid.176.bin`` (no score
   threshold; newlines replaced by spaces, `get_fasttext_language`). Here: `language.identify`
   (lid.176.ftz, the same labels) with ``languages=["en"]``, ``min_lang_score=0``.
2. ``len(text.split()) > 2``: at least 3 whitespace-separated words -> ``min_words=3``.
3. ``len(text) > 5``: at least 6 characters, whitespace included -> ``min_chars=6``.
4. ``min(original_width, original_height) >= 200`` -> ``min_side=200`` (200 passes).
5. ``max(w, h) / min(w, h) <= 3.0`` -> ``max_aspect_ratio=3.0`` (3.0 passes).

Not to be confused with that file's `caption_filter` (used by the image-based baseline), which
counts words with ``fasttext.tokenize`` and keeps ``> 1`` of them. gcld3 appears there only in
the LAION-2B reproduction (`load_uids_with_clip_score_helper(gcld3_en_filter=True)`).
"""

from __future__ import annotations

from typing import Any

import polars as pl

from schemas.config import BASIC_FILTER  # noqa: F401  (re-exported: the rules cited above)

IMAGE_RULES: tuple[str, ...] = ("too_small", "aspect_ratio")
BOILERPLATE = "text:boilerplate"
TOO_SHORT = "text:too_short"
NUMBER = "<n>"
# Unicode punctuation, symbols and whitespace, stripped from both ends of a normalised caption.
_EDGE = r"[\p{P}\p{S}\s]+"


# --- DataComp basic filter, caption half -----------------------------------------------------


def basic_filter_caption_mask(captions: pl.Series, langs: pl.Series) -> pl.Series:
    """DataComp's caption rules verbatim (English top-1, > 2 words, > 5 characters): True = kept.

    Words are Python's ``str.split()`` runs, characters are code points of the raw text; a
    null caption fails. Used for pass rates comparable with DataComp's.
    """
    text = captions.cast(pl.String)
    n_words = text.map_elements(lambda s: len(s.split()), return_dtype=pl.Int64)
    keep = (langs == "en") & (n_words > 2) & (text.str.len_chars() > 5)
    return keep.fill_null(False).alias("basic_filter_caption")


def short_caption_reasons(captions: pl.Series, min_chars: int) -> pl.Series:
    """``text:too_short`` for a caption of fewer than `min_chars` characters (raw, as DataComp
    counts them: surrounding whitespace included), null otherwise and for null captions."""
    frame = pl.DataFrame({"c": captions.cast(pl.String)})
    short = (pl.col("c").str.len_chars() < min_chars).fill_null(False)
    expr = pl.when(short).then(pl.lit(TOO_SHORT)).otherwise(pl.lit(None, dtype=pl.String))
    return frame.select(expr.alias("text_reason")).to_series()


# --- image size and shape --------------------------------------------------------------------


def image_reasons(
    width: pl.Series, height: pl.Series, min_side: int | None, max_aspect_ratio: float | None
) -> pl.Series:
    """``image:too_small`` or ``image:aspect_ratio`` per sample, null when fine.

    Pass the original sizes where the pool has them (img2dataset's ``original_width`` and
    ``original_height``, as DataComp does), else the decoded ones. too_small comes first: a
    tiny image is the better explanation, and a zero side has no aspect ratio. Boundaries
    pass (side == min_side, ratio == max_aspect_ratio); unknown (null) sizes get null: there
    is nothing to judge; a None setting turns its rule off.
    """
    frame = pl.DataFrame({"w": width.cast(pl.Float64), "h": height.cast(pl.Float64)})
    short = pl.min_horizontal("w", "h")
    long = pl.max_horizontal("w", "h")
    never = pl.repeat(False, pl.len())
    too_small = (short < min_side) if min_side is not None else never
    too_thin = (
        (short <= 0) | (long / short > max_aspect_ratio) if max_aspect_ratio is not None else never
    )
    expr = (
        pl.when(too_small.fill_null(False))
        .then(pl.lit("image:too_small"))
        .when(too_thin.fill_null(False))
        .then(pl.lit("image:aspect_ratio"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    return frame.select(expr.alias("image_reason")).to_series()


# --- boilerplate -----------------------------------------------------------------------------


def _normalize_expr(caption: pl.Expr) -> pl.Expr:
    return (
        caption.str.to_lowercase()
        .str.replace_all(r"\s+", " ")
        .str.replace_all(f"^{_EDGE}|{_EDGE}$", "")
        .str.replace_all(r"\d+", NUMBER, literal=False)
    )


def normalize_caption(s: str | None) -> str | None:
    """The form repeats are counted in: lower-case, whitespace runs -> one space, punctuation,
    symbols and whitespace stripped from both ends, digit runs -> ``<n>``: "IMG_2034.JPG" and
    "img_1175.jpg" are both "img_<n>.jpg", "Photo 1 of 12" and "Photo 3 of 12" "photo <n> of <n>".
    """
    return pl.select(_normalize_expr(pl.lit(s, dtype=pl.String))).item()


def normalized_captions(captions: pl.Series) -> pl.Series:
    """`normalize_caption` over a Series (vectorised)."""
    return pl.DataFrame({"c": captions.cast(pl.String)}).select(_normalize_expr(pl.col("c")))["c"]


def boilerplate_reasons(
    captions: pl.Series,
    max_repeats: int | None,
    max_fraction: float | None,
    images: pl.Series | None = None,
) -> pl.Series:
    """``text:boilerplate`` for a caption whose normalised form occurs more than `max_repeats`
    times, or in more than `max_fraction` of the captions given (a whole partition: counts over
    one shard would miss repeats spread across shards); null otherwise and for null captions.

    A caption that occurs once is never boilerplate, however small the partition (with
    ``max_fraction=0.001``, 1 of 500 is more than 0.1%). None turns a rule off. With
    `images` (e.g. sha256 per row), repeats count distinct images per caption, not rows.
    """
    frame = pl.DataFrame({"k": normalized_captions(captions)})
    if images is None:
        n = len(captions)
        count = pl.len().over("k")
    else:  # one image re-posted with its caption is a copy (dedup's business), not a template
        frame = frame.with_columns(images.alias("img"))
        n = frame.select(pl.struct("k", "img").n_unique()).item()
        count = pl.col("img").n_unique().over("k")
    flagged = pl.lit(False)
    if max_repeats is not None:
        flagged = flagged | (count > max_repeats)
    if max_fraction is not None:
        flagged = flagged | (count > max_fraction * n)
    expr = pl.when(pl.col("k").is_not_null() & (count > 1) & flagged).then(pl.lit(BOILERPLATE))
    return frame.select(expr.otherwise(pl.lit(None, pl.String)).alias("text_reason")).to_series()


def top_repeated(captions: pl.Series, k: int) -> pl.DataFrame:
    """The `k` most repeated normalised captions: ``normalised``, ``count`` and one original
    ``example`` (its first occurrence), most frequent first, ties alphabetically."""
    frame = pl.DataFrame({"example": captions.cast(pl.String)}).with_columns(
        normalised=normalized_captions(captions)
    )
    return (
        frame.drop_nulls("normalised")
        .group_by("normalised", maintain_order=True)
        .agg(count=pl.len(), example=pl.col("example").first())
        .sort(["count", "normalised"], descending=[True, False])
        .head(k)
        .with_columns(pl.col("count").cast(pl.Int64))
    )


# --- CLIP token lengths ----------------------------------------------------------------------


def token_lengths(
    captions: pl.Series,
    tokenizer: Any,
    context_length: int | None = None,
    known: dict[str, int] | None = None,
) -> tuple[pl.Series, pl.Series]:
    """(tokens per caption including start and end tokens, needs more than `context_length`).

    `tokenizer` is an open_clip ``SimpleTokenizer`` (``open_clip.get_tokenizer`` for the
    OpenAI-vocabulary models, ViT-B-32 included): its ``tokenize`` places start + ``encode``
    + end and cuts what exceeds the context (77 by default, the tokenizer's own). Each distinct
    caption is encoded once, and not at all when `known` (`counts_from_tokens`, read off the
    tensor the text tower got) has its count. Null captions: null count, not truncated.
    """
    context = context_length or tokenizer.context_length
    text = captions.cast(pl.String)
    distinct = text.drop_nulls().unique().to_list()
    known = known or {}
    counts = {c: known[c] if c in known else len(tokenizer.encode(c)) + 2 for c in distinct}
    n_tokens = text.replace_strict(counts, default=None, return_dtype=pl.Int64).alias("n_tokens")
    truncated = (n_tokens > context).fill_null(False).alias("truncated")
    return n_tokens, truncated


def counts_from_tokens(texts: list[str], tokens: Any, tokenizer: Any) -> dict[str, int]:
    """Token counts (start and end included) read off a tokenized batch, so a caption the text
    tower saw is not encoded a second time for `token_lengths`. Only for open_clip's plain
    truncating tokenizer: a caption whose end token sits in the last slot may have been cut,
    so it is left out (encoded again, about 1% of web captions)."""
    eot = getattr(tokenizer, "eot_token_id", None)
    if eot is None or getattr(tokenizer, "reduction_fn", None) is not None:
        return {}
    is_eot = (tokens == eot).numpy() if hasattr(tokens, "numpy") else tokens == eot
    width = is_eot.shape[1]
    first = is_eot.argmax(axis=1)
    return {
        t: int(p) + 1
        for t, p, any_eot in zip(texts, first.tolist(), is_eot.any(axis=1).tolist(), strict=True)
        if any_eot and p < width - 1
    }
