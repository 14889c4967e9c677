"""The review tools (Label Studio, FiftyOne) for the slow tests that use them for real.

Each drags 100+ packages (Django, MongoDB, OpenCV, ...) with pins of their own, so they live
in their own virtual environments (`make review-tools`: `.venv-tools/labelstudio`,
`.venv-tools/fiftyone`), never in the project's; a test talks to them through a script run
by that environment's Python. `CURATE_LABEL_STUDIO_PYTHON` / `CURATE_FIFTYONE_PYTHON` name
another environment's Python. A test skips, saying why, when the tool is not installed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ROOT

TOOLS = {
    "labelstudio": ("CURATE_LABEL_STUDIO_PYTHON", "label_studio"),
    "fiftyone": ("CURATE_FIFTYONE_PYTHON", "fiftyone"),
}


def tool_python(name: str) -> Path:
    """The Python of the tool's environment (skips the test when there is none)."""
    var, module = TOOLS[name]
    python = Path(os.environ.get(var) or ROOT / ".venv-tools" / name / "bin" / "python")
    if not python.exists():
        pytest.skip(f"{name} is not installed: run `make review-tools` or set {var}")
    probe = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"{python} cannot import {module}: {probe.stderr.decode()[-200:]}")
    return python


def run_script(python: Path, script: Path, args: dict, timeout: float = 900) -> dict:
    """Run `script` with the tool's Python, JSON in (argv[1]) and out (last stdout line)."""
    done = subprocess.run(
        [str(python), str(script), json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
