"""Progress you can see: a Prefect progress artifact per run, and a bar on a terminal.

The expensive stage (one task per shard or video) reports each finished task: the run's
progress artifact (`progress-{flow}-{dataset}`, visible on the run's page) moves to the
share of tasks done, and on a terminal (stderr is a TTY) a bar shows the same with the
throughput in samples/s or video-seconds/s and an ETA. Off a terminal there is no bar;
the logs carry one line per finished shard with its own throughput.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

logger = logging.getLogger(__name__)


def artifact_key(flow: str, dataset: str) -> str:
    return f"progress-{flow}-{dataset}".lower().replace("_", "-").replace(".", "-")


class Progress:
    """Tasks done out of `total`, and `unit`s processed (samples, video-seconds)."""

    def __init__(self, flow: str, dataset: str, partition: str, total: int, unit: str) -> None:
        self.total, self.unit, self.done, self.units = total, unit, 0, 0.0
        self.start = time.monotonic()
        self.artifact_id = None
        self.bar: Any = None
        self.task: Any = None
        try:
            from prefect.artifacts import create_progress_artifact
            from prefect.context import FlowRunContext

            if FlowRunContext.get() is not None:
                self.artifact_id = create_progress_artifact(
                    progress=0.0,
                    key=artifact_key(flow, dataset),
                    description=f"{flow} {dataset} {partition}: {total} tasks",
                )
        except Exception as err:  # progress is a courtesy: never fail a run for it
            logger.warning("could not create the progress artifact: %s", err)
        if sys.stderr.isatty() and total:
            self._start_bar(f"{flow} {partition}")

    def _start_bar(self, label: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        self.bar = Bar(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            transient=True,
        )
        self.bar.start()
        self.task = self.bar.add_task(label, total=self.total, rate="")

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 100.0

    def rate(self) -> float:
        elapsed = time.monotonic() - self.start
        return self.units / elapsed if elapsed > 0 else 0.0

    def advance(self, units: float = 0.0) -> None:
        """One more task finished, having processed `units`."""
        self.done += 1
        self.units += units
        if self.artifact_id is not None:
            try:
                from prefect.artifacts import update_progress_artifact

                update_progress_artifact(self.artifact_id, progress=self.percent)
            except Exception as err:  # the API is down: each further try would wait out
                # the client's retries (about a minute) on the thread that collects results
                logger.warning("could not update the progress artifact (no more tries): %s", err)
                self.artifact_id = None
        if self.bar is not None:
            rate = f"{self.rate():.1f} {self.unit}/s"
            self.bar.update(self.task, completed=self.done, rate=rate)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        if self.total:
            logger.info(
                "%d of %d tasks done: %.0f %s at %.1f %s/s",
                self.done,
                self.total,
                self.units,
                self.unit,
                self.rate(),
                self.unit,
            )
