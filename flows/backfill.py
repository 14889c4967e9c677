"""`curate backfill`: one partition per date, in date order, at most N at once.

Each date either runs in this process (`run_pool` / `run_video`) or, when a Prefect server
has the deployment (`curate serve`), as a deployment run with an idempotency key per date.
Either way the flow itself decides what to skip (same inputs and config as the published
partition), so repeating a backfill does no work and a changed threshold or input re-runs
only what it changes.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from schemas.config import ConfigError, CurateConfig
from tasks.io import storage
from tasks.publish.commit import partition_url

logger = logging.getLogger(__name__)

MAX_DAYS = 366
Mode = Literal["auto", "local", "deployment"]


@dataclass(frozen=True)
class Row:
    """What happened to one date: ran, skipped or failed, with counts or the error."""

    date: str
    status: str
    detail: str = ""


def date_range(start: str, end: str, force_range: bool = False) -> list[str]:
    """Every date in [start, end]; bad dates and oversized ranges are one-line errors."""
    try:
        first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    except ValueError as err:
        raise ConfigError(f"backfill: dates must be YYYY-MM-DD ({err})") from None
    if last < first:
        raise ConfigError(f"backfill: --end {end} is before --start {start}")
    days = (last - first).days + 1
    if days > MAX_DAYS and not force_range:
        raise ConfigError(
            f"backfill: {days} dates is more than {MAX_DAYS}; add --force-range if you mean it"
        )
    return [(first + dt.timedelta(d)).isoformat() for d in range(days)]


def run_backfill(
    cfg: CurateConfig,
    flow: str,
    start: str,
    end: str,
    force: bool = False,
    max_parallel: int = 1,
    *,
    mode: Mode = "auto",
    force_range: bool = False,
    timeout: float | None = None,
) -> int:
    """CLI entry: run the range, print the table, return 1 if any date failed."""
    rows = backfill(cfg, flow, start, end, force, max_parallel, mode, force_range, timeout)
    print(format_table(rows))
    return 1 if any(r.status == "failed" for r in rows) else 0


def backfill(
    cfg: CurateConfig,
    flow: str,
    start: str,
    end: str,
    force: bool = False,
    max_parallel: int = 1,
    mode: Mode = "auto",
    force_range: bool = False,
    timeout: float | None = None,
) -> list[Row]:
    """One row per date, in date order."""
    dates = date_range(start, end, force_range)
    if getattr(cfg, flow) is None:
        raise ConfigError(f"config: the {flow} flow needs a '{flow}' section")
    if max_parallel < 1:
        raise ConfigError("backfill: --max-parallel must be at least 1")
    from flows.backfill_remote import remote_runner, use_deployment

    if use_deployment(cfg, flow, mode):
        one = remote_runner(cfg, flow, force, timeout)
    else:
        one = _local_runner(cfg, flow, force)
    logger.info(
        "backfill %s %s..%s (%d dates, %d at once)", flow, start, end, len(dates), max_parallel
    )
    return run_dates(dates, one, max_parallel)


def run_dates(dates: list[str], one: Callable[[str], Row], max_parallel: int) -> list[Row]:
    """Start dates in order, at most `max_parallel` at once; a failure is a row, not a stop."""

    def safe(date: str) -> Row:
        try:
            return one(date)
        except Exception as err:
            logger.warning("%s failed: %s", date, err)
            return Row(date, "failed", f"{type(err).__name__}: {one_line(err)}")

    pool = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="backfill")
    try:  # each date runs in a copy of this context: Prefect's settings live in contextvars
        futures = [pool.submit(contextvars.copy_context().run, safe, d) for d in dates]
        return [f.result() for f in futures]
    finally:  # on Ctrl-C, dates not started yet are dropped; running ones finish
        pool.shutdown(wait=True, cancel_futures=True)


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
    url = storage.join(partition_url(cfg.output, cfg.dataset, flow, date), "stats.json")
    try:
        stats = storage.read_json(url, cfg.storage_options)
    except (OSError, ValueError):
        return ""
    counts = stats.get("counts", {})
    first = [k for k in ("input", "kept", "ok") if k in counts]
    pairs = {k: counts[k] for k in first} | {k: v for k, v in counts.items() if v}
    if "events" in stats:
        pairs["events"] = stats["events"]
    return " ".join(f"{k}={v}" for k, v in pairs.items())


def _local_runner(cfg: CurateConfig, flow: str, force: bool) -> Callable[[str], Row]:
    if flow == "pool":
        from flows.pool import run_pool as run
    else:
        from flows.video import run_video as run

    def one(date: str) -> Row:
        result = run(cfg, date, force)
        status = "skipped" if result.get("status") == "skipped" else "ran"
        return Row(date, status, counts_detail(cfg, flow, date))

    return one
