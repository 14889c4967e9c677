"""Worldwide balancing (MetaCLIP 2): per-language matches, counts, thresholds, decisions.

The semantics are `specs/metaclip-worldwide.md`. A caption is matched against its own
metadata language's list only (one pass per caption), with the tight padding rule. Counts
are per language. English's threshold `t` gives the tail fraction
`p = sum(count_en[e] for count_en[e] < t) / sum(count_en)` (or `p` is configured); every
other language's threshold is the count at which its own sorted cumulative count share comes
closest to `p` (first such index). `p_L[e] = 1` below `t_L`, else `t_L / count_L[e]`; a
caption keeps with `1 - prod(1 - p_L[e])`, drawn from (seed, uid) as in English-only mode.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from schemas.config import ConfigError
from tasks.metaclip.balance import _keep_prob_from_p, entry_counts, keep_mask
from tasks.metaclip.langcounts import LangCounts, add_counts
from tasks.metaclip.matcher import CHUNK_ROWS, Matcher
from tasks.metaclip.metadata import Metadata
from tasks.parallel import cpu_count

ENGLISH = "en"
HEAD_ENTRIES = 5  # entries with the largest counts shown per language


def match_by_language(
    captions: pl.Series, codes: pl.Series, matchers: Mapping[str, Matcher]
) -> tuple[np.ndarray, np.ndarray]:
    """(n + 1 offsets, flat uint32 ids) as `Matcher.match_arrays`, each caption matched by
    the matcher of its code (a null code, or one without a matcher, matches nothing).

    Every language's captions are cut into the matcher's chunks and all chunks share one
    thread pool, so a partition of many small language groups uses every core, as one
    English-only group does.
    """
    n = len(captions)
    groups = []  # (rows, matcher, haystack, starts)
    for code in sorted(matchers):
        rows = (codes == code).fill_null(False).arg_true().to_numpy()
        if len(rows) and matchers[code].has_patterns:
            groups.append((rows, matchers[code], *matchers[code].haystack(captions.gather(rows))))
    work = [
        (g, a, min(a + CHUNK_ROWS, len(rows)))
        for g, (rows, *_) in enumerate(groups)
        for a in range(0, len(rows), CHUNK_ROWS)
    ]
    threads = min([cpu_count(), len(work)] + [m.threads for _, m, _, _ in groups]) or 1
    with ThreadPoolExecutor(threads, thread_name_prefix="metaclip-match") as ex:
        parts = list(ex.map(lambda w: groups[w[0]][1].search(*groups[w[0]][2:], w[1], w[2]), work))
    lengths = np.zeros(n, np.int64)
    found = []
    for g, (rows, *_) in enumerate(groups):
        mine = [p for (wg, _, _), p in zip(work, parts, strict=True) if wg == g]
        per_row = np.concatenate([c for c, _ in mine])
        lengths[rows] = per_row
        found.append((rows, per_row, np.concatenate([v for _, v in mine])))
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.zeros(offsets[-1], np.uint32)
    for rows, per_row, vals in found:
        starts = np.repeat(offsets[rows], per_row)
        within = np.arange(len(vals)) - np.repeat(np.cumsum(per_row) - per_row, per_row)
        values[starts + within] = vals
    return offsets, values


def match_captions(
    captions: pl.Series, codes: pl.Series, lists: Mapping[str, Metadata]
) -> pl.Series:
    """`entry_ids` of each caption against its metadata language's list (tight padding)."""
    from tasks.metaclip.matcher import entry_ids_series, get_matcher

    matchers = {code: get_matcher(md, "tight") for code, md in lists.items()}
    return entry_ids_series(*match_by_language(captions, codes, matchers))


def tail_fraction_of(counts: np.ndarray, t: int) -> float:
    """English's tail fraction: the share of all matches held by entries counted below t."""
    counts = np.asarray(counts, np.int64)
    total = int(counts.sum())
    if total == 0:
        raise ConfigError(
            "config: invalid value for 'pool.balance.t': t is English's threshold, but no "
            "English caption in the pool matches en.json, so the tail fraction is undefined; "
            "set pool.balance.tail_fraction instead"
        )
    return float(counts[counts < t].sum() / total)


def threshold_for(counts: np.ndarray, p: float) -> int | None:
    """t_L: the sorted count whose cumulative share is closest to p (first such index);
    None when the language has no match at all (no share to compare)."""
    c = np.sort(np.asarray(counts, np.int64))
    total = int(c.sum())
    if total == 0:
        return None
    q = np.cumsum(c) / total
    return int(c[int(np.argmin(np.abs(q - p)))])


def entry_probabilities(counts: np.ndarray, t: int | None) -> np.ndarray:
    """p_L[e]: 1 below t, else t / count (0 everywhere when t is 0; 1 when t is None,
    which only happens for a language whose entries nobody matched)."""
    counts = np.asarray(counts, np.int64)
    if t is None:
        return np.ones(len(counts))
    return t / np.maximum(counts, t) if t > 0 else np.zeros(len(counts))


@dataclass
class WorldwideInputs:
    """What worldwide balancing needs besides the candidates: the lists of the languages
    present (and English's, with `t`), counts of earlier partitions, and the settings."""

    lists: dict[str, Metadata]
    t: int | None
    tail_fraction: float | None
    seed: int
    prior: LangCounts = field(default_factory=LangCounts)


@dataclass
class WorldwideResult:
    keep_prob: np.ndarray  # per candidate row
    keep: np.ndarray
    pool_counts: LangCounts  # this partition's counts over the candidates
    counts_after: LangCounts  # over the kept candidates
    tail_fraction: float
    thresholds: dict[str, int | None]
    languages: dict[str, dict] = field(default_factory=dict)  # per language, for the stats


def _counts_by_language(
    entry_ids: pl.Series, codes: pl.Series, lists: Mapping[str, Metadata]
) -> LangCounts:
    vectors = {}
    for code, md in sorted(lists.items()):
        rows = (codes == code).fill_null(False)
        vectors[code] = entry_counts(entry_ids.filter(rows), len(md))
    return LangCounts(vectors, {c: md.sha256 for c, md in lists.items()})


def thresholds(
    counts: LangCounts, lists: Mapping[str, Metadata], t: int | None, p: float | None
) -> tuple[float, dict[str, int | None]]:
    """(p, t_L per language): with `t`, English's threshold is t and p comes from it."""
    if t is not None:
        p = tail_fraction_of(counts.get(ENGLISH, len(lists[ENGLISH])), t)
    assert p is not None
    out = {}
    for code, md in sorted(lists.items()):
        if t is not None and code == ENGLISH:
            out[code] = t
        else:
            out[code] = threshold_for(counts.get(code, len(md)), p)
    return p, out


def balance_worldwide(
    entry_ids: pl.Series, codes: pl.Series, uids: pl.Series, inp: WorldwideInputs
) -> WorldwideResult:
    """Each candidate's keep probability and decision; `codes` is its metadata language."""
    lists = inp.lists
    if inp.t is not None and ENGLISH not in lists:
        tail_fraction_of(np.zeros(0, np.int64), inp.t)  # raises: no English caption
    pool = _counts_by_language(entry_ids, codes, lists)
    total = add_counts(pool, inp.prior)
    p, t_of = thresholds(total, lists, inp.t, inp.tail_fraction)
    # every language's p_L end to end: a caption's ids shift by its language's start
    order = sorted(lists)
    sizes = [len(lists[c]) for c in order]
    base = {c: int(b) for c, b in zip(order, np.cumsum([0, *sizes])[:-1], strict=True)}
    probs = np.concatenate(
        [np.zeros(0)] + [entry_probabilities(total.get(c, len(lists[c])), t_of[c]) for c in order]
    )
    lengths = entry_ids.list.len().fill_null(0).to_numpy().astype(np.int64)
    if ((lengths > 0) & ~codes.is_in(order).fill_null(False).to_numpy()).any():
        raise ValueError("a caption has entry ids but no metadata language with a list")
    offset = codes.replace_strict(base, default=0, return_dtype=pl.Int64).fill_null(0).to_numpy()
    values = entry_ids.explode().drop_nulls().to_numpy().astype(np.int64)
    keep_prob = _keep_prob_from_p(lengths, values + np.repeat(offset, lengths), probs)
    keep = keep_mask(keep_prob, uids, inp.seed)
    kept = pl.Series(keep)
    after = _counts_by_language(entry_ids.filter(kept), codes.filter(kept), lists)
    res = WorldwideResult(keep_prob, keep, pool, after, p, t_of)
    res.languages = language_rows(res, total, codes, lengths, lists)
    return res


def language_rows(
    res: WorldwideResult,
    total: LangCounts,
    codes: pl.Series,
    lengths: np.ndarray,
    lists: Mapping[str, Metadata],
) -> dict[str, dict]:
    """Per metadata language with captions: captions, matched, t_L, kept, head entries."""
    out = {}
    for code in sorted(lists):
        rows = (codes == code).fill_null(False).to_numpy()
        if not rows.any():
            continue
        counts = total.get(code, len(lists[code]))
        top = np.argsort(-counts, kind="stable")[:HEAD_ENTRIES]
        out[code] = {
            "captions": int(rows.sum()),
            "matched": int((lengths[rows] > 0).sum()),
            "t": res.thresholds[code],
            "kept": int(res.keep[rows].sum()),
            "entries": len(lists[code]),
            "metadata_sha256": lists[code].sha256,
            "head": [
                {"id": int(e), "entry": lists[code].entries[e], "count": int(counts[e])}
                for e in top
                if counts[e] > 0
            ],
        }
    return out


def flat_counts(counts: LangCounts) -> np.ndarray:
    """Every language's counts end to end: what the entry-rank plot and summary read."""
    vectors = [np.asarray(counts.vectors[c], np.int64) for c in sorted(counts.vectors)]
    return np.concatenate(vectors) if vectors else np.zeros(0, np.int64)


def worldwide_summary(res: WorldwideResult, codes: pl.Series, lids: pl.Series) -> dict[str, Any]:
    """Per-language figures of a worldwide balance, plus the candidates no list covers, by
    their identifier code ("none": no letters); `codes`/`lids` are the candidates'."""
    lost = lids.filter(codes.is_null()).fill_null("none")
    by_lid = lost.value_counts(sort=False, name="n").sort(lost.name)
    return {
        "tail_fraction": res.tail_fraction,
        "languages": res.languages,
        "without_metadata": {str(k): int(v) for k, v in by_lid.iter_rows()},
    }
