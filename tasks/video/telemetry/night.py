"""A night's telemetry: every scored video's track, scaled per vehicle.

The cue's robust statistics are per vehicle (`cue.vehicle_scales`): a delivery van brakes
harder every day than a coach does, and a hard brake is hard for that vehicle. A vehicle
is a sidecar `vehicle_id`; a video without one is a vehicle of its own. Reading is cheap
(small sidecar files), so it happens in the detect stage, never in the cached score stage:
a changed telemetry file re-publishes without decoding a video.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping
from typing import Any

from tasks.video.telemetry.cue import Kinematics, Scales, kinematics, vehicle_scales
from tasks.video.telemetry.read import read_track

Telemetry = dict[str, tuple[Kinematics, Scales]]  # video URL -> (its kinematics, its vehicle's)


def night_telemetry(
    urls: Collection[str],
    sidecars: Mapping[str, Mapping[str, Any]],
    so: dict | None,
    inputs: Collection[str] = (),
) -> Telemetry:
    """{url: (kinematics, vehicle scales)} of the videos in `urls` that have telemetry;
    `sidecars` holds each video's `vehicle_id` and `start_time`."""
    runs: dict[str, Kinematics] = {}
    for url in urls:
        side = sidecars.get(url) or {}
        got = read_track(url, so, inputs, side.get("start_time"))
        k = kinematics(got) if got is not None else None
        if k is not None:
            runs[url] = k
    vehicles: dict[str, list[str]] = defaultdict(list)
    for url in runs:
        vehicles[(sidecars.get(url) or {}).get("vehicle_id") or f"video:{url}"].append(url)
    out: Telemetry = {}
    for members in vehicles.values():
        scales = vehicle_scales([runs[u] for u in members])
        out |= {u: (runs[u], scales) for u in members}
    return out
