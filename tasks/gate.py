"""Publish gate (placeholder: the real comparison lands with issue 5)."""

from __future__ import annotations

from typing import Any


class GateHeld(RuntimeError):
    """The partition moved too far from the previous one and was held unpublished."""


def apply_gate(cfg: Any, flow: str, stats: dict[str, Any], stage: Any) -> None:
    """Compare `stats` with the previous published partition; raise GateHeld to hold it."""
    return None
