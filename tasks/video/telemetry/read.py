"""A video's telemetry from its sidecars: speed (and acceleration, heading) on its clock.

Where it comes from, the first found (sidecar file names follow `tasks.video.sidecar`):

- the JSON sidecar's `telemetry` field: a list of samples (objects);
- `<stem>.csv`: a header and one sample per row;
- `<stem>.gpx`: a GPS track (gpxpy): times and positions, speed where the file has it;
- `<stem>.nmea`: NMEA 0183 sentences (pynmea2): `RMC` gives time, position, speed over
  ground and course.

A sample (JSON object or CSV row) has a time, `t_s` (seconds on the video's clock) or
`time` (ISO 8601), and any of `speed_mps` or `speed_kmh`, `accel_long` and `accel_lat`
(m/s^2, forward and leftward), `heading` (degrees), `lat`/`lon`. Absolute times are put
on the video's clock by the sidecar's `start_time` (else the first sample is taken as
the video's start: a recorder starts its log with the video).

Telemetry is metadata beside the video: a file that does not parse is logged and ignored,
never a reason to drop the video.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks.errors import short
from tasks.io import storage
from tasks.video.sidecar import TELEMETRY_EXTS, sidecar_url

logger = logging.getLogger(__name__)
KMH = 1 / 3.6
KNOTS = 1852 / 3600
FIELDS = ("speed_mps", "accel_long", "accel_lat", "heading", "lat", "lon")


@dataclass(frozen=True)
class Track:
    """Telemetry samples on the video's clock, sorted by time; NaN where a field is absent."""

    source: str  # the file it came from (for logs and the report)
    t_s: np.ndarray
    speed_mps: np.ndarray
    accel_long: np.ndarray
    accel_lat: np.ndarray
    heading: np.ndarray  # degrees clockwise from north
    lat: np.ndarray
    lon: np.ndarray


def _number(value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


def _instant(value: Any) -> float | None:
    """Seconds since the epoch of an ISO 8601 time (naive = UTC), else None."""
    if isinstance(value, dt.datetime):
        moment = value
    else:
        try:
            moment = dt.datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def _sample(row: Mapping[str, Any]) -> dict[str, float] | None:
    """One sample's fields (speed in m/s); None without a time."""
    out = {k: _number(row.get(k)) for k in FIELDS}
    if math.isnan(out["speed_mps"]):
        out["speed_mps"] = _number(row.get("speed_kmh")) * KMH
    if row.get("t_s") not in (None, ""):
        out["t_s"] = _number(row.get("t_s"))
    elif (instant := _instant(row.get("time"))) is not None:
        out["time"] = instant
    else:
        return None
    return out


def track(samples: Iterable[Mapping[str, Any]], source: str, start: float | None) -> Track | None:
    """A `Track` of raw samples: absolute times made relative to `start` (epoch seconds;
    None: the first sample's time), rows without a time dropped, sorted by time."""
    rows = [s for s in samples if s]
    if any("time" in r for r in rows):
        first = min(r["time"] for r in rows if "time" in r)
        origin = first if start is None else start
        rows = [{**r, "t_s": r["time"] - origin} for r in rows if "time" in r]
    rows = [r for r in rows if math.isfinite(r.get("t_s", math.nan))]
    if len(rows) < 2:
        return None
    rows.sort(key=lambda r: r["t_s"])
    cols = {k: np.asarray([r.get(k, math.nan) for r in rows], np.float64) for k in FIELDS}
    return Track(source, np.asarray([r["t_s"] for r in rows], np.float64), **cols)


def _json_samples(data: bytes) -> list[dict[str, float] | None]:
    doc = json.loads(data)
    field = doc.get("telemetry") if isinstance(doc, dict) else None
    if not isinstance(field, list):
        return []
    return [_sample(r) for r in field if isinstance(r, dict)]


def _csv_samples(data: bytes) -> list[dict[str, float] | None]:
    reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
    return [_sample({k.strip(): v for k, v in row.items() if k}) for row in reader]


def _gpx_samples(data: bytes) -> list[dict[str, float] | None]:
    import gpxpy

    gpx = gpxpy.parse(data.decode("utf-8-sig"))
    out = []
    for trk in gpx.tracks:
        for seg in trk.segments:
            for p in seg.points:
                row = {"time": p.time, "lat": p.latitude, "lon": p.longitude,
                       "heading": p.course, "speed_mps": p.speed}  # fmt: skip
                out.append(_sample(row))
    return out


def _nmea_samples(data: bytes) -> list[dict[str, float] | None]:
    import pynmea2

    out = []
    for line in data.decode("ascii", "replace").splitlines():
        try:
            msg = pynmea2.parse(line.strip())
        except (pynmea2.ParseError, ValueError, AttributeError):
            continue  # other talkers, checksum errors, partial lines
        if msg.sentence_type != "RMC" or msg.status != "A" or msg.datestamp is None:
            continue
        moment = dt.datetime.combine(msg.datestamp, msg.timestamp).replace(tzinfo=dt.UTC)
        speed = _number(msg.spd_over_grnd) * KNOTS
        row = {"time": moment, "lat": msg.latitude, "lon": msg.longitude,
               "heading": msg.true_course, "speed_mps": speed}  # fmt: skip
        out.append(_sample(row))
    return out


PARSERS = {".csv": _csv_samples, ".gpx": _gpx_samples, ".nmea": _nmea_samples}


def read_track(
    url: str, so: dict | None, inputs: Collection[str] = (), start_time: str | None = None
) -> Track | None:
    """The video's telemetry (module docstring), None when it has none that parses."""
    start = _instant(start_time) if start_time else None
    found: list[tuple[str, Any]] = []
    side = sidecar_url(url, so, inputs)
    if side is not None:
        found.append((side, _json_samples))
    for ext in TELEMETRY_EXTS:
        path = sidecar_url(url, so, inputs, ext)
        if path is not None:
            found.append((path, PARSERS[ext]))
    for path, parse in found:
        try:
            got = track(parse(storage.read_bytes(path, so)), path, start)
        except Exception as err:  # a broken file of any kind: logged, the next one is tried
            logger.warning("ignoring telemetry %s: %s", path, short(err))
            continue
        if got is not None:
            return got
    return None
