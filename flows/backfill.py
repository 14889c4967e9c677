"""`curate backfill`: one partition per date, in date order, at most N at once.

Each date either runs in this process (`run_pool` / `run_video`) or, when a Prefect server
has the deployment (`curate serve`), as a deployment run with an idempotency key per date.
Either way the flow itself decides what to skip (same inputs and config as the published
partition), so repeating a backfill does no work and a changed threshold or input re-runs
only what it changes.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from flows.backfill_remote import remote_runner, use_deployment
from flows.dates import Mode, Row, counts_detail, date_range, format_table
from flows.exits import FAILED, combined_status, exit_status, failure_text
from flows.plan import HISTORY_SETTINGS, already_published, history_kinds, plan_run
from schemas.config import ConfigError, CurateConfig

logger = logging.getLogger(__name__)


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
    """CLI entry: run the range, print the table, return the failed dates' exit status (the
    one they share, e.g. 4 when the gate held them all; else 1), 0 when none failed."""
    rows = backfill(cfg, flow, start, end, force, max_parallel, mode, force_range, timeout)
    print(format_table(rows))
    failed = [r for r in rows if r.status == "failed"]
    if failed:  # the command's one line on stderr, as every failing command ends
        first = f"{failed[0].date}: {failed[0].detail}"
        print(
            f"curate: backfill: {len(failed)} of {len(rows)} dates failed, {first}", file=sys.stderr
        )
    return combined_status([r.exit_status or FAILED for r in failed])


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
    kinds = history_kinds(cfg, flow)
    if kinds and max_parallel > 1:
        # each date reads the dates before it: they must be published first (shards within
        # a date are still scored in parallel)
        logger.warning(
            "%s read earlier dates: backfilling one date at a time, in date order "
            "(--max-parallel %d applies to dates without history settings)",
            " and ".join(HISTORY_SETTINGS[k] for k in kinds), max_parallel,
        )  # fmt: skip
        max_parallel = 1
    if use_deployment(cfg, flow, mode):
        one = remote_runner(cfg, flow, force, timeout)
    else:
        one = _local_runner(cfg, flow, force)
    logger.info(
        "backfill %s %s..%s (%d dates, %d at once)", flow, start, end, len(dates), max_parallel
    )
    from infra.server import api_scope

    with api_scope():  # dates that run share one temporary API; skipped ones start none
        return run_dates(dates, one, max_parallel)


def run_dates(dates: list[str], one: Callable[[str], Row], max_parallel: int) -> list[Row]:
    """Start dates in order, at most `max_parallel` at once; a failure is a row, not a stop."""

    def safe(date: str) -> Row:
        try:
            return one(date)
        except Exception as err:
            logger.warning("%s failed: %s", date, err)
            return Row(date, "failed", failure_text(err), exit_status(err))

    pool = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="backfill")
    try:  # each date runs in a copy of this context: Prefect's settings live in contextvars
        futures = [pool.submit(contextvars.copy_context().run, safe, d) for d in dates]
        return [f.result() for f in futures]
    finally:  # on Ctrl-C, dates not started yet are dropped; running ones finish
        pool.shutdown(wait=True, cancel_futures=True)


def _local_runner(cfg: CurateConfig, flow: str, force: bool) -> Callable[[str], Row]:
    def one(date: str) -> Row:
        plan = plan_run(cfg, flow, date)  # light: skipped dates import no flow, start no API
        if not force and already_published(plan, cfg.storage_options):
            return Row(date, "skipped", counts_detail(cfg, flow, date))
        if flow == "pool":
            from flows.pool import run_pool as run
        else:
            from flows.video import run_video as run
        result = run(cfg, date, force)
        status = "skipped" if result.get("status") == "skipped" else "ran"
        return Row(date, status, counts_detail(cfg, flow, date))

    return one
