"""Generated drives and their telemetry files (CSV, JSON sidecar field, GPX, NMEA), so the
telemetry tests know the truth: planted hard brakes, a turn of known radius."""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

START = dt.datetime(2026, 5, 4, 8, 0, 0, tzinfo=dt.UTC)
EARTH_M = 6371008.8


@dataclass
class Drive:
    """A drive sampled at `hz`: time, speed, heading (degrees from north) and position."""

    t: np.ndarray
    speed: np.ndarray
    heading: np.ndarray
    lat: np.ndarray
    lon: np.ndarray


def drive(
    seconds: float,
    hz: float = 10.0,
    cruise: float = 15.0,
    brakes: tuple[tuple[float, float, float], ...] = (),
    turn: tuple[float, float, float] | None = None,
    noise: float = 0.3,
    seed: int = 0,
) -> Drive:
    """Cruising at `cruise` m/s with acceleration noise; each brake (start s, seconds,
    m/s^2) decelerates, and the speed recovers at 1 m/s^2; `turn` (start s, seconds,
    yaw rate rad/s) turns."""
    rng = np.random.default_rng(seed)
    t = np.arange(0, seconds, 1 / hz)
    v, psi, lat, lon = [cruise], [0.0], [48.0], [11.0]
    for k in range(1, len(t)):
        a = rng.normal(0, noise) + (cruise - v[-1]) * 0.5
        a = min(a, 1.0)
        for start, length, decel in brakes:
            if start <= t[k] < start + length:
                a = -decel
        v.append(max(0.0, v[-1] + a / hz))
        rate = turn[2] if turn and turn[0] <= t[k] < turn[0] + turn[1] else 0.0
        psi.append(psi[-1] + rate / hz)
        step = v[-1] / hz
        lat.append(lat[-1] + math.degrees(step * math.cos(psi[-1]) / EARTH_M))
        lon.append(
            lon[-1]
            + math.degrees(step * math.sin(psi[-1]) / (EARTH_M * math.cos(math.radians(lat[-1]))))
        )
    return Drive(
        t, np.asarray(v), np.degrees(np.asarray(psi)) % 360, np.asarray(lat), np.asarray(lon)
    )


def every(d: Drive, hz: float) -> Drive:
    """The drive sampled at `hz` (a GPS logs at 1 Hz)."""
    step = round((1 / hz) / (d.t[1] - d.t[0]))
    return Drive(d.t[::step], d.speed[::step], d.heading[::step], d.lat[::step], d.lon[::step])


def write_csv(path: Path, d: Drive, sensor_noise: float | None = None, seed: int = 0) -> Path:
    """Speed in km/h; with `sensor_noise` also a G-sensor's forward acceleration (m/s^2):
    the speed's derivative plus that much noise (road vibration)."""
    if sensor_noise is None:
        rows = ["t_s,speed_kmh"]
        rows += [f"{t:.3f},{v * 3.6:.4f}" for t, v in zip(d.t, d.speed, strict=True)]
    else:
        accel = np.gradient(d.speed, d.t)
        accel += np.random.default_rng(seed).normal(0, sensor_noise, len(accel))
        rows = ["t_s,speed_kmh,accel_long"]
        rows += [
            f"{t:.3f},{v * 3.6:.4f},{a:.4f}" for t, v, a in zip(d.t, d.speed, accel, strict=True)
        ]
    path.write_text("\n".join(rows) + "\n")
    return path


def write_json(path: Path, d: Drive, **fields: object) -> Path:
    samples = [
        {"time": (START + dt.timedelta(seconds=float(t))).isoformat(), "speed_mps": float(v)}
        for t, v in zip(d.t, d.speed, strict=True)
    ]
    path.write_text(json.dumps({**fields, "telemetry": samples}))
    return path


def write_gpx(path: Path, d: Drive) -> Path:
    import gpxpy.gpx

    gpx = gpxpy.gpx.GPX()
    seg = gpxpy.gpx.GPXTrackSegment()
    for t, la, lo in zip(d.t, d.lat, d.lon, strict=True):
        seg.points.append(
            gpxpy.gpx.GPXTrackPoint(la, lo, time=START + dt.timedelta(seconds=float(t)))
        )
    trk = gpxpy.gpx.GPXTrack()
    trk.segments.append(seg)
    gpx.tracks.append(trk)
    path.write_text(gpx.to_xml())
    return path


def _nmea_angle(value: float, lat: bool) -> tuple[str, str]:
    hemi = ("N" if value >= 0 else "S") if lat else ("E" if value >= 0 else "W")
    value = abs(value)
    deg = int(value)
    minutes = (value - deg) * 60
    return (f"{deg:02d}{minutes:07.4f}" if lat else f"{deg:03d}{minutes:07.4f}"), hemi


def write_nmea(path: Path, d: Drive) -> Path:
    """RMC sentences (with GGA noise between them, as recorders log)."""
    import pynmea2

    lines = []
    for t, v, h, la, lo in zip(d.t, d.speed, d.heading, d.lat, d.lon, strict=True):
        moment = START + dt.timedelta(seconds=float(t))
        lat, ns = _nmea_angle(la, True)
        lon, ew = _nmea_angle(lo, False)
        knots, day = f"{v / (1852 / 3600):.3f}", moment.strftime("%d%m%y")
        clock = moment.strftime("%H%M%S.%f")[:9]
        fields = (clock, "A", lat, ns, lon, ew, knots, f"{h:.2f}", day, "", "")
        lines.append(str(pynmea2.RMC("GP", "RMC", fields)))
        lines.append("$GPGGA,garbage*00")
    path.write_text("\n".join(lines) + "\n")
    return path
