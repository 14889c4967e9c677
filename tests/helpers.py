"""Paths shared by the tests: the repository root and the optional ../shared data folder."""

from __future__ import annotations

from pathlib import Path

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
