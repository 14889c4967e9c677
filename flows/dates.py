"""Dates of a backfill and what happened to each: the rows of `curate backfill`'s table."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from schemas.config import ConfigError, CurateConfig
from schemas.partition import check_date
from tasks.io import storage
from tasks.publish.manifest import partition_url, read_published

MAX_DAYS = 366
Mode = Literal["auto", "local", "deployment"]


@dataclass(frozen=True)
class Row:
    """What happened to one date: ran, skipped or failed, with counts or the error."""

    date: str
    status: str
    detail: str = ""
    exit_status: int | None = None  # a failed date's exit status (docs/cli.md) (None: 1)


def date_range(start: str, end: str, force_range: bool = False) -> list[str]:
    """Every date in [start, end]; bad dates and oversized ranges are one-line errors."""
    first = dt.date.fromisoformat(check_date(start, "--start"))
    last = dt.date.fromisoformat(check_date(end, "--end"))
    if last < first:
        raise ConfigError(f"backfill: --end {end} is before --start {start}")
    days = (last - first).days + 1
    if days > MAX_DAYS and not force_range:
        raise ConfigError(
            f"backfill: {days} dates is more than {MAX_DAYS}; add --force-range if you mean it"
        )
    return [(first + dt.timedelta(d)).isoformat() for d in range(days)]


def format_table(rows: list[Row]) -> str:
    width = max([len("status"), *(len(r.status) for r in rows)])
    lines = [f"{'date':<10}  {'status':<{width}}  detail"]
    lines += [f"{r.date:<10}  {r.status:<{width}}  {r.detail}".rstrip() for r in rows]
    totals = {s: sum(r.status == s for r in rows) for s in ("ran", "skipped", "failed")}
    lines.append(f"{len(rows)} dates: " + ", ".join(f"{n} {s}" for s, n in totals.items()))
    return "\n".join(lines)


def one_line(err: BaseException | str) -> str:
    text = str(err).strip().splitlines()
    if text:
        return text[0]
    return type(err).__name__ if isinstance(err, BaseException) else ""


def counts_detail(cfg: CurateConfig, flow: str, date: str) -> str:
    """The published partition's non-zero counts (and events), as `key=value` pairs."""
    uri = partition_url(cfg.output, cfg.dataset, flow, date)
    published = read_published(uri, cfg.storage_options)
    if published is None:
        return ""
    try:
        stats = storage.read_json(published.url("stats.json"), cfg.storage_options)
    except (OSError, ValueError):
        return ""
    counts = stats.get("counts", {})
    first = [k for k in ("input", "kept", "ok") if k in counts]
    pairs = {k: counts[k] for k in first} | {k: v for k, v in counts.items() if v}
    if "events" in stats:
        pairs["events"] = stats["events"]
    return " ".join(f"{k}={v}" for k, v in pairs.items())
