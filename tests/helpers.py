"""Paths shared by the tests: the repository root and the optional ../shared data folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, skipping the test when it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not available: {p}")
    return p


def published_dir(uri: str | Path) -> Path:
    """The local folder of a partition's published version (what its manifest points at)."""
    from tasks.publish.manifest import read_published

    published = read_published(str(uri))
    assert published is not None, f"{uri} is not published"
    return Path(published.base)


@dataclass
class Cli:
    """What one `curate` command did: exit status, stdout, stderr and its last line."""

    status: int
    out: str
    err: str

    @property
    def line(self) -> str:
        lines = self.err.strip().splitlines()
        return lines[-1] if lines else ""


def run_cli(capsys: pytest.CaptureFixture[str], *args: Any) -> Cli:
    """`curate ARGS` in this process (no traceback may reach stderr)."""
    from flows.cli import main

    capsys.readouterr()
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    return Cli(status, captured.out, captured.err)
