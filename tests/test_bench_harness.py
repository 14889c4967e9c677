"""Benchmark processes never outlive the benchmark that started them (`bench/harness.py`)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.helpers import ROOT

CHILD = """
import os, sys, time
sys.path.insert(0, "bench")
import harness  # what every bench script imports first
open(sys.argv[1], "w").write(str(os.getpid()))
time.sleep(600)
"""
PARENT = """
import sys
sys.path.insert(0, "bench")
from pathlib import Path
from harness import run_child  # how bench_video.py starts its --child measurements
run_child(Path(sys.argv[1]), [sys.argv[2]])
"""


def test_a_measurement_child_ends_when_its_benchmark_is_killed(tmp_path: Path) -> None:
    """Defect: an interrupted `run_all.py --quick` left `bench_video.py --child` running."""
    script, marker = tmp_path / "child.py", tmp_path / "pid"
    script.write_text(CHILD)
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(script), str(marker)], cwd=ROOT)
    deadline = time.monotonic() + 120
    while not marker.exists() or not marker.read_text():  # the child is up, harness imported
        assert time.monotonic() < deadline and parent.poll() is None
        time.sleep(0.1)
    child = psutil.Process(int(marker.read_text()))
    try:
        parent.kill()  # SIGKILL: nothing in the parent gets to clean up
        parent.wait()
        child.wait(timeout=60)  # ends at once; the bound is for a loaded machine
    finally:
        if child.is_running():
            child.kill()


MEASURE = """
import json, sys
sys.path.insert(0, "bench")
from harness import peak_rss_bytes
print(json.dumps({"peak": peak_rss_bytes()}))
"""
BIG_PARENT = """
import json, sys
sys.path.insert(0, "bench")
from pathlib import Path
from harness import peak_rss_bytes, run_child
held = bytearray(400 << 20)
held[:: 4096] = b"x" * len(held[:: 4096])  # resident, not just reserved
print(json.dumps({"parent": peak_rss_bytes(), **run_child(Path(sys.argv[1]), [])}))
"""


def test_a_measurement_childs_peak_is_its_own(tmp_path: Path) -> None:
    """Defect: Linux carries ru_maxrss across exec, so every child of a large benchmark
    process reported at least the parent's size (bench_history's nights looked like they
    grew ~30 MB a night because the parent did)."""
    import json

    script = tmp_path / "measure.py"
    script.write_text(MEASURE)
    out = subprocess.run([sys.executable, "-c", BIG_PARENT, str(script)], cwd=ROOT,
                         capture_output=True, text=True, check=True)  # fmt: skip
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["parent"] > 400 << 20
    assert got["peak"] < 200 << 20  # an interpreter that imported nothing much


GRANDPARENT = """
import subprocess, sys
sys.path.insert(0, "bench")
from harness import child_env
out = subprocess.run([sys.executable, "-c", sys.argv[1]], env=child_env(), capture_output=True,
                     text=True)
print(out.returncode, out.stdout.strip())
"""
CHILD_SPAWNS = """
import subprocess, sys
sys.path.insert(0, "bench")
import harness  # the measurement child: tied to its benchmark
grand = "import sys; sys.path.insert(0, 'bench'); import harness; print('alive')"
out = subprocess.run([sys.executable, "-c", grand], capture_output=True, text=True)
print(out.returncode, out.stdout.strip())
"""


def test_a_grandchild_that_imports_the_harness_lives() -> None:
    """Defect: the tie to the benchmark was inherited, so a process the measurement started
    (a Dask nanny's worker, unpickling a function of a bench module) saw another parent and
    ended itself at once: `run_all.py --quick` failed bench_overhead with "Nanny failed to
    start"."""
    out = subprocess.run([sys.executable, "-c", GRANDPARENT, CHILD_SPAWNS], cwd=ROOT,
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert out.stdout.strip() == "0 0 alive"
