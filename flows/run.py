"""The run skeleton both flows share: plan a partition, skip it when already published,
write a new version of it, and commit that with lineage (after the publish gate)."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from flows.common import to_json
from flows.plan import (  # noqa: F401 (the flows' planning API, re-exported)
    RunPlan,
    already_published,
    output_config,
    plan_run,
    report_url,
    skipped,
)
from flows.progress import Progress
from schemas.config import CurateConfig, config_hash, redacted
from tasks import cancel
from tasks.io.lock import partition_lock
from tasks.publish.card import CARD, partition_card, publish_cards
from tasks.publish.catalog import HistoryChanged
from tasks.publish.commit import Version, abort, begin, commit, now_utc
from tasks.publish.gate import GateHeld, apply_gate
from tasks.publish.manifest import code_version
from tasks.publish.report import partition_report
from tasks.publish.writer import WrittenFile, describe_file, write_file

Body = Callable[[CurateConfig, RunPlan, bool, str], dict[str, Any]]


HISTORY_ATTEMPTS = 3  # an earlier date committed meanwhile: select again (scores are cached)


def run_partition(
    cfg: CurateConfig, flow: str, partition: str | None, force: bool, body: Body, log: Any
) -> dict[str, Any]:
    """Plan, lock, skip what is published, else `body(cfg, plan, force, cancel_token)`.

    A partition that reads earlier ones (dataset-scope dedup, running counts) first brings
    them up to date: earlier partitions whose history changed since they ran are re-run, in
    date order, so the result is the one of publishing every date in order.
    """
    plan = plan_run(cfg, flow, partition)
    if plan.stale:
        log.warning(
            "history of %s changed: re-running %d earlier partition(s) first, in date order: %s",
            plan.partition, len(plan.stale), ", ".join(plan.stale),
        )  # fmt: skip
        for earlier in plan.stale:
            _run_one(cfg, flow, earlier, False, body, log)
    result = _run_one(cfg, flow, plan.partition, force, body, log)
    with _FINISHED_GUARD:  # the work is done: what `call_flow` returns if Prefect fails now
        _FINISHED[plan.final] = result
    return result


_FINISHED: dict[str, dict[str, Any]] = {}
_FINISHED_GUARD = threading.Lock()


def call_flow(flow_fn: Callable[..., dict[str, Any]], final: str, **params: Any) -> dict[str, Any]:
    """Call a flow whose body ends in `run_partition` for partition folder `final`.

    Prefect reports the end of a flow run to its API after the body returned; when that API
    stays unreachable past the client's retries, the call raises although the partition was
    published (or skipped) and nothing is left to do. The body's result then stands, with a
    warning: a failed report of a finished run is not a failed run.
    """
    with _FINISHED_GUARD:
        _FINISHED.pop(final, None)
    try:
        return flow_fn(**params)
    except Exception as err:
        with _FINISHED_GUARD:
            result = _FINISHED.pop(final, None)
        if result is None:
            raise
        logging.getLogger(__name__).warning(
            "%s is %s, but Prefect could not record the end of its flow run (%s: %s); the "
            "run's page may show it unfinished",
            final, result.get("status"), type(err).__name__, err,
        )  # fmt: skip
        return result
    finally:
        with _FINISHED_GUARD:
            _FINISHED.pop(final, None)


def _run_one(
    cfg: CurateConfig, flow: str, partition: str, force: bool, body: Body, log: Any
) -> dict[str, Any]:
    for attempt in range(1, HISTORY_ATTEMPTS + 1):
        plan = plan_run(cfg, flow, partition)
        log.info("partition %s: %d inputs", plan.partition, len(plan.urls))
        with partition_lock(plan.final, cfg.storage_options):
            if not force and already_published(plan, cfg.storage_options):
                log.info("partition %s already published with the same inputs", plan.partition)
                return skipped(plan, cfg.storage_options)
            token = cancel.new_token()
            try:
                result = body(cfg, plan, force, token)
            except HistoryChanged as err:
                if attempt == HISTORY_ATTEMPTS:
                    raise
                log.warning("%s; selecting again against the new history", err)
                cancel.forget(token)
                continue
            # only a run that ended normally forgets its token: after a failure the task
            # runner is still waiting for in-flight tasks, which must go on seeing the cancel
            cancel.forget(token)
            return result
    raise AssertionError("unreachable")


POLL_S = 1.0


def gather(
    futures: Iterable[Any],
    token: str,
    progress: Progress | None = None,
    units: Callable[[Any], float] | None = None,
) -> list[Any]:
    """Every future's result, in order, reporting each as it finishes to `progress`.

    The first task that fails (or a SIGTERM, Ctrl-C) tells the run's other in-flight tasks
    to stop before the error goes on. Waiting is done in short slices: a signal delivered
    to another thread only runs its Python handler once the main thread runs Python code
    again, so an unbounded wait would hold a SIGTERM until every in-flight task finished.
    """
    futures = list(futures)
    finished: queue.Queue[int] = queue.Queue()
    for i, future in enumerate(futures):
        future.add_done_callback(lambda _, i=i: finished.put(i))
    try:
        left = len(futures)
        while left:
            try:
                i = finished.get(timeout=POLL_S)
            except queue.Empty:
                continue
            left -= 1
            result = futures[i].result()  # a failed task raises here, at once
            if progress is not None:
                progress.advance(units(result) if units else 0.0)
        return [f.result() for f in futures]
    except BaseException:
        cancel.cancel(token)
        raise
    finally:
        if progress is not None:
            progress.close()


@contextmanager
def versioned(plan: RunPlan, so: dict[str, Any]) -> Iterator[Version]:
    """A new version of the partition; its files are removed again if the run fails before
    the commit (a held version stays for inspection)."""
    version = begin(plan.final, so)
    try:
        yield version
    except GateHeld:
        raise
    except BaseException:
        abort(version)
        raise


def finish(
    cfg: CurateConfig,
    plan: RunPlan,
    version: Version,
    outputs: list[WrittenFile],
    stats: dict[str, Any],
    write_report: Callable[[Version], list[str]],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write stats and report, then commit with the manifest (the gate may hold it).

    A report that fails is one `ReportError` line: the report is part of the version, so
    nothing is published; the scores were cached before, so the re-run does no scoring."""
    so = version.storage_options
    outputs.append(write_file(version.url("stats.json"), "stats.json", to_json(stats), so))
    written = partition_report(lambda: write_report(version), plan.partition)
    outputs += [describe_file(version.url(rel), rel, so) for rel in written]
    manifest = {
        "flow": plan.flow,
        "dataset": cfg.dataset,
        "partition": plan.partition,
        "config": redacted(cfg),
        "config_hash": config_hash(output_config(cfg, plan.flow)),
        "model": plan.model,
        "code_version": code_version(),
        "run_key": plan.key,
        "inputs": plan.inputs,
        "config_files": plan.files,  # sha256 of the files the config names
        "history": plan.history,  # what it read from earlier partitions (None: nothing)
        "counts": stats.get("counts", {}),
        "events": stats.get("events"),
        **(extra or {}),
    }
    card = partition_card({**manifest, "version": version.id, "created": now_utc()}, stats)
    outputs.append(write_file(version.url(CARD), CARD, card.encode(), so))
    apply_gate(cfg, plan.flow, stats, version)
    commit(version, manifest, outputs)
    publish_cards(plan.final, card, cfg.output, cfg.dataset, so)


def resolved_model(identities: Iterable[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The model as the score stage resolved it where it ran (`auto` device and precision
    made concrete), for stats.json and `curate report`; None when nothing was scored."""
    for identity in identities:
        if identity:
            return {k: v for k, v in identity.items() if k != "logit_scale"}
    return None


def total_time(timings: dict[str, float]) -> dict[str, float]:
    timings["total_s"] = sum(v for k, v in timings.items() if k != "total_s")
    return timings
