"""Helpers the benchmark scripts share: child processes, peak RSS, a Prefect API, scaling.

Each measurement that reports a peak RSS runs in a fresh child process (peak RSS only grows,
so 1x and 4x must not share one), and every child talks to one Prefect server started here,
so no measurement includes the start-up of Prefect's ephemeral API.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PARENT_ENV = "CURATE_BENCH_PARENT"  # the pid of the bench process that started this one
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """End this process when the benchmark that started it ends, however it ends (Ctrl-C,
    a timeout, SIGKILL): a measurement child must never outlive its run (Linux prctl)."""
    parent = os.environ.pop(PARENT_ENV, None)  # not inherited: a grandchild (a Dask worker
    # importing this module) has another parent and would end itself at once
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):  # it ended before the line above
        os._exit(1)


def child_env() -> dict[str, str]:
    """The environment of a child process that `die_with_parent` ties to this one."""
    return {**os.environ, PARENT_ENV: str(os.getpid())}


die_with_parent()  # every bench script imports this module first


def quiet() -> None:
    """Benchmarks print one JSON object: keep Prefect's and Dask's chatter off stdout."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far: the kernel's high-water mark of its
    own memory (VmHWM). Not ru_maxrss: on Linux a child started by a process inherits that
    process's ru_maxrss across exec, so a measurement child of a large parent reported the
    parent's size (bench_history's nights grew with the parent's, not their own)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


class RssSampler:
    """Samples this process's resident set size in a thread: shows whether memory plateaus.

    Peak RSS alone is noisy (allocator arenas, a neighbour's load); the peak within each fifth
    of a run is flat when memory is bounded and climbs when something accumulates.
    """

    def __init__(self, interval_s: float = 0.25) -> None:
        self.interval_s = interval_s
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")

    def _run(self) -> None:
        import psutil

        proc = psutil.Process()
        while not self._stop.is_set():
            self.samples.append(proc.memory_info().rss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def max_by_fifth(self) -> list[int]:
        n = len(self.samples)
        if n < 5:
            return [max(self.samples, default=0)] * 5
        return [max(self.samples[i * n // 5 : (i + 1) * n // 5]) for i in range(5)]


def load_1m() -> float:
    """The 1-minute load average: a busy neighbour shows up here, and in the timings."""
    return round(os.getloadavg()[0], 2)


def cores() -> int:
    return len(os.sched_getaffinity(0))


@contextmanager
def prefect_api() -> Iterator[str]:
    """PREFECT_API_URL for this process and its children: the configured one, else a
    local server for the benchmark's duration."""
    quiet()
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    from infra.server import prefect_server

    with prefect_server() as server, server.activate():
        yield server.api_url


def run_child(script: Path, args: list[str], timeout: float = 3600) -> dict[str, Any]:
    """Run `script args` in a fresh interpreter; its last stdout line is a JSON object."""
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=child_env(),
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{script.name} {' '.join(args)} failed ({proc.returncode}):\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def scaling(t1x: float, t4x: float, rss1x: int | None = None, rss4x: int | None = None) -> dict:
    """How time (and memory) grow from 1x to 4x the input: 1.0 is linear, above is worse."""
    out: dict[str, Any] = {
        "t1x_s": round(t1x, 3),
        "t4x_s": round(t4x, 3),
        "t4x_over_4_t1x": round(t4x / (4 * t1x), 3) if t1x > 0 else None,
    }
    if rss1x and rss4x:
        out |= {"peak_rss_1x_bytes": rss1x, "peak_rss_4x_bytes": rss4x}
        out["peak_rss_4x_over_1x"] = round(rss4x / rss1x, 3)
    return out


def emit(result: dict[str, Any]) -> None:
    """Print the benchmark's one JSON object (the last line of stdout)."""
    print(json.dumps(result))
