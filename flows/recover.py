"""The video flow's second score wave: moov-less recordings rebuilt with a sibling.

The first wave probes every video on its own; a file whose index (moov) was lost is
quarantined `truncated` there. Once every video is probed, the healthy ones are known, and
each lost file is scored again with its reference candidates (`tasks.video.recovery.
reference`): the same `score-video` task, keyed by the candidates too, so a re-run reads it
back from the cache. A lost file without a candidate is quarantined `no_reference`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from flows.run import gather
from schemas.config import CurateConfig
from tasks.video.recovery.reference import candidates, moov_lost
from tasks.video.score import VideoScores
from tasks.video.sidecar import read_sidecar

logger = logging.getLogger(__name__)
Submit = Callable[[str, list[str]], Any]  # (url, references) -> a future of VideoScores


def lost_videos(results: list[VideoScores], so: dict[str, Any] | None) -> list[VideoScores]:
    """The first wave's videos whose moov is lost."""
    cut = [
        r
        for r in results
        if r.probe["status"] == "quarantined" and r.probe.get("error") == "truncated"
    ]
    return [r for r in cut if moov_lost(r.url, so)]


def recover_lost(
    cfg: CurateConfig,
    results: list[VideoScores],
    inputs: list[str],
    submit: Submit,
    run: str,
) -> list[VideoScores]:
    """`results` with every moov-less video scored again with its references (or
    quarantined `no_reference`), in the same order."""
    so = cfg.storage_options
    lost = lost_videos(results, so)
    if not lost:
        return results
    rows = {r.url: r.probe for r in results}
    vehicles = {u: read_sidecar(u, so, inputs)["vehicle_id"] for u in rows}
    again: dict[str, Any] = {}
    out = {r.url: r for r in results}
    for r in lost:
        refs, wanted = candidates(r.url, rows, vehicles)
        if refs:
            logger.info("%s: moov lost, rebuilding with %s", r.url, refs[0])
            again[r.url] = submit(r.url, refs)
        else:
            detail = f"moov lost and no {wanted} in the partition"
            logger.warning("quarantined %s: no_reference: %s", r.url, detail)
            probe = {**r.probe, "error": "no_reference", "error_detail": detail}
            out[r.url] = replace(r, probe=probe)
    for url, scored in zip(again, gather(list(again.values()), run), strict=True):
        out[url] = scored
    return [out[r.url] for r in results]
