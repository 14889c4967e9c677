"""The hard-braking / swerve cue from telemetry: acceleration, jerk, robust per vehicle.

Event recorders trigger on the G-sensor; near-miss databases were built from such triggers
(NIDB), and speed/acceleration series are a strong near-miss cue (Yamamoto et al. 2020).
From a `Track` (`read.py`) on a 10 Hz grid over its time span:

- speed: the samples' own, else from successive positions; smoothed over 0.5 s;
- longitudinal acceleration: the samples' own, else the speed's derivative;
- lateral acceleration: the samples' own, else speed x yaw rate (the heading's derivative,
  the samples' heading or the bearing between positions while moving);
- jerk: the longitudinal acceleration's derivative.

Each of braking (-longitudinal), |lateral| and braking onset (-jerk: a deceleration
building up; a release or a start is no danger) becomes a robust z-score with the median
and MAD of that vehicle's telemetry in the partition (every video of one `vehicle_id`; a
video without one is its own vehicle), the scale floored so a gentle driver's noise is not
a near miss (1 m/s^2, 2 m/s^3). The cue is the largest of the three, clipped to +-30; a
frame gets the largest cue over the time it stands for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from tasks.video.telemetry.read import Track

GRID_HZ = 10.0
SMOOTH_S = 0.5
# The smallest spreads the cue trusts: with them a comfortable stop (1-2 m/s^2, NHTSA's
# and fleet telematics' "normal") is z 1-2, a harsh brake (0.4 g, 4 m/s^2) z 4, a full
# brake (0.6 g) z 6, for a vehicle whose own spread is smaller.
ACCEL_FLOOR = 1.0  # m/s^2
JERK_FLOOR = 2.0  # m/s^3
MOVING_MPS = 1.0  # bearings between positions mean something above this speed
Z_MAX = 30.0
MAD_TO_SIGMA = 1.4826
EARTH_M = 6371008.8
SIGNALS = ("brake", "lateral", "jerk")
FLOORS = {"brake": ACCEL_FLOOR, "lateral": ACCEL_FLOOR, "jerk": JERK_FLOOR}


@dataclass(frozen=True)
class Kinematics:
    """Telemetry on a regular grid: time, speed, accelerations, jerk (NaN: unknown)."""

    t_s: np.ndarray
    speed: np.ndarray
    accel_long: np.ndarray
    accel_lat: np.ndarray
    jerk: np.ndarray

    def signals(self) -> dict[str, np.ndarray]:
        return {"brake": -self.accel_long, "lateral": np.abs(self.accel_lat),
                "jerk": -self.jerk}  # fmt: skip


def _interp(grid: np.ndarray, t: np.ndarray, x: np.ndarray) -> np.ndarray:
    ok = np.isfinite(x)
    if ok.sum() < 2:
        return np.full(len(grid), np.nan)
    return np.interp(grid, t[ok], x[ok])


def _smooth(x: np.ndarray) -> np.ndarray:
    width = max(1, round(SMOOTH_S * GRID_HZ))
    if width == 1 or np.isnan(x).all():
        return x
    kernel = np.ones(width) / width
    padded = np.pad(x, width // 2, mode="edge")
    return np.convolve(padded, kernel, mode="same")[width // 2 : width // 2 + len(x)]


def _positions(tr: Track) -> tuple[np.ndarray, np.ndarray]:
    """(speed m/s, bearing degrees) between successive positions, at the later sample."""
    lat, lon = np.radians(tr.lat), np.radians(tr.lon)
    dlat, dlon = np.diff(lat), np.diff(lon)
    a = np.sin(dlat / 2) ** 2 + np.cos(lat[:-1]) * np.cos(lat[1:]) * np.sin(dlon / 2) ** 2
    dist = 2 * EARTH_M * np.arcsin(np.sqrt(np.clip(a, 0, 1)))
    dt = np.diff(tr.t_s)
    speed = np.where(dt > 0, dist / np.where(dt > 0, dt, 1), np.nan)
    y = np.sin(dlon) * np.cos(lat[1:])
    x = np.cos(lat[:-1]) * np.sin(lat[1:]) - np.sin(lat[:-1]) * np.cos(lat[1:]) * np.cos(dlon)
    bearing = np.degrees(np.arctan2(y, x)) % 360
    bearing[~(speed > MOVING_MPS)] = np.nan
    return np.r_[np.nan, speed], np.r_[np.nan, bearing]


def kinematics(tr: Track) -> Kinematics | None:
    """The track on a 10 Hz grid (module docstring); None when it holds no speed."""
    grid = np.arange(tr.t_s[0], tr.t_s[-1] + 1e-9, 1.0 / GRID_HZ)
    moved_speed, bearing = _positions(tr)
    speed = tr.speed_mps if np.isfinite(tr.speed_mps).sum() >= 2 else moved_speed
    v = _smooth(_interp(grid, tr.t_s, speed))
    if np.isnan(v).all() or len(grid) < 2:
        return None
    given = _interp(grid, tr.t_s, tr.accel_long)
    a_long = given if np.isfinite(given).any() else np.gradient(v, 1.0 / GRID_HZ)
    a_lat = _interp(grid, tr.t_s, tr.accel_lat)
    if not np.isfinite(a_lat).any():
        heading = tr.heading if np.isfinite(tr.heading).sum() >= 2 else bearing
        ok = np.isfinite(heading)
        if ok.sum() >= 2:
            unwrapped = np.degrees(np.unwrap(np.radians(heading[ok])))
            psi = _smooth(np.radians(np.interp(grid, tr.t_s[ok], unwrapped)))
            a_lat = v * np.gradient(psi, 1.0 / GRID_HZ)
    jerk = np.gradient(_smooth(a_long), 1.0 / GRID_HZ)
    return Kinematics(grid, v, a_long, a_lat, jerk)


Scales = dict[str, tuple[float, float]]  # signal -> (median, scale)


def vehicle_scales(runs: list[Kinematics]) -> Scales:
    """Median and robust spread of each signal over one vehicle's telemetry."""
    out: Scales = {}
    for name in SIGNALS:
        x = np.concatenate([k.signals()[name] for k in runs]) if runs else np.zeros(0)
        x = x[np.isfinite(x)]
        if not len(x):
            continue
        med = float(np.median(x))
        out[name] = (med, max(MAD_TO_SIGMA * float(np.median(np.abs(x - med))), FLOORS[name]))
    return out


def danger(k: Kinematics, scales: Scales) -> np.ndarray:
    """The cue on the grid: the largest robust z of braking, |lateral| and |jerk|."""
    zs = [(k.signals()[n] - scales[n][0]) / scales[n][1] for n in SIGNALS if n in scales]
    if not zs:
        return np.full(len(k.t_s), np.nan)
    stacked = np.vstack(zs)
    has = np.isfinite(stacked).any(axis=0)
    z = np.where(has, np.nanmax(np.where(np.isfinite(stacked), stacked, -np.inf), axis=0), np.nan)
    return np.clip(z, -Z_MAX, Z_MAX)


def per_frame(
    k: Kinematics, scales: Scales, t_s: np.ndarray, rate: float
) -> Mapping[str, np.ndarray]:
    """`speed`, `accel_long`, `accel_lat` at each frame time and `telemetry`, the largest cue
    over `[t, t + 1 / rate)`; NaN for frames outside the telemetry's span."""
    z = danger(k, scales)
    inside = (t_s >= k.t_s[0] - 0.5 / GRID_HZ) & (t_s <= k.t_s[-1] + 0.5 / GRID_HZ)
    lo = np.searchsorted(k.t_s, t_s - 1e-9, "left")
    hi = np.maximum(np.searchsorted(k.t_s, t_s + 1.0 / rate - 1e-9, "left"), lo + 1)
    cue = np.full(len(t_s), np.nan)
    for i in np.flatnonzero(inside):
        window = z[min(lo[i], len(z) - 1) : min(hi[i], len(z))]
        window = window[np.isfinite(window)]
        cue[i] = window.max() if len(window) else np.nan
    out = {"telemetry": cue}
    for name, x in (("speed", k.speed), ("accel_long", k.accel_long), ("accel_lat", k.accel_lat)):
        out[name] = np.where(inside, _interp(t_s, k.t_s, x), np.nan)
    return out
