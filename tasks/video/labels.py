"""Human labels for the video flow: a CSV of time spans, turned into per-frame truth.

The file has a header and one span per row::

    video,start_s,end_s,label
    a.mp4,12.0,14.5,near_miss

`label` is `near_miss` or `collision` (positive) or `normal` (negative). `video` names an
input by its URL or by the end of its path, whole components only: `a.mp4`, `cam1/a.mp4`
and `s3://fleet/raw/2024-05-01/cam1/a.mp4` all name that input. Videos are keyed by their
full URL everywhere else; a name that fits two inputs (`a.mp4` for `cam1/a.mp4` and
`cam2/a.mp4`) is refused with both named (`match_inputs`): write more of its path. A video
the file does not name is unlabelled (ignored by evaluation); within a named video, time no
positive span covers is negative, and a positive span wins over an overlapping `normal` one.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

POSITIVE = frozenset({"near_miss", "collision"})
NEGATIVE = frozenset({"normal"})
COLUMNS = ("video", "start_s", "end_s", "label")
EPS = 1e-9  # seconds: float noise in frame times never makes an overlap


class LabelError(ValueError):
    """A labels file that cannot be used; the message names the file and row."""


@dataclass(frozen=True)
class LabelRow:
    video: str  # the name as written: a URL or the end of an input's path
    start_s: float
    end_s: float
    label: str

    @property
    def positive(self) -> bool:
        return self.label in POSITIVE


def normal_name(name: str) -> str:
    """A video name with forward slashes, without surrounding blanks, `./` or a final `/`."""
    name = name.strip().replace("\\", "/").rstrip("/")
    while name.startswith("./"):
        name = name[2:]
    return name


def names(label: str, url: str) -> bool:
    """Whether a label's video name means the input `url` (the module docstring's rule)."""
    url = normal_name(url)
    return url == label or url.endswith("/" + label)


def match_inputs(rows: Iterable[LabelRow], urls: Iterable[str]) -> tuple[list[str], list[str]]:
    """(the inputs the labels name, in input order; the names no input fits). A name that
    fits several inputs raises `LabelError` naming them."""
    urls = list(urls)
    chosen: set[str] = set()
    unknown: list[str] = []
    for label in sorted(labelled_videos(rows)):
        fits = [u for u in urls if names(label, u)]
        if len(fits) > 1:
            raise LabelError(
                f"labels: video {label!r} fits {len(fits)} inputs ({', '.join(fits[:3])}): "
                "write more of its path"
            )
        chosen.update(fits)
        if not fits:
            unknown.append(label)
    return [u for u in urls if u in chosen], unknown


def parse_labels(text: str, source: str = "labels") -> list[LabelRow]:
    """Rows of a labels CSV; any bad row raises `LabelError` naming its line number."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise LabelError(f"{source}: header lacks column(s) {', '.join(missing)}")
    rows: list[LabelRow] = []
    for record in reader:
        where = f"{source} line {reader.line_num}"
        values = {c: (record.get(c) or "").strip() for c in COLUMNS}
        if not values["video"]:
            raise LabelError(f"{where}: empty video name")
        try:
            start, end = float(values["start_s"]), float(values["end_s"])
        except ValueError:
            raise LabelError(
                f"{where}: start_s/end_s must be numbers, got "
                f"{values['start_s']!r}, {values['end_s']!r}"
            ) from None
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end <= start:
            raise LabelError(f"{where}: need 0 <= start_s < end_s, got {start}, {end}")
        label = values["label"].lower()
        if label not in POSITIVE | NEGATIVE:
            known = ", ".join(sorted(POSITIVE | NEGATIVE))
            raise LabelError(f"{where}: unknown label {values['label']!r} (known: {known})")
        rows.append(LabelRow(normal_name(values["video"]), start, end, label))
    return rows


def read_labels(path: str | Path) -> list[LabelRow]:
    """`parse_labels` on a local file (UTF-8, a BOM allowed)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise LabelError(
            f"labels: cannot read {path}: {getattr(err, 'strerror', None) or err}"
        ) from None
    return parse_labels(text, source=str(path))


def labelled_videos(rows: Iterable[LabelRow]) -> set[str]:
    return {r.video for r in rows}


def positive_spans(rows: Iterable[LabelRow], video: str) -> list[tuple[float, float]] | None:
    """The positive spans of the input `video` (a URL), sorted, overlapping ones merged
    (touching ones are not: two near misses back to back are two events); None when the
    file does not name it."""
    mine = [r for r in rows if names(r.video, video)]
    if not mine:
        return None
    merged: list[tuple[float, float]] = []
    for r in sorted((r for r in mine if r.positive), key=lambda r: (r.start_s, r.end_s)):
        if merged and r.start_s < merged[-1][1] - EPS:
            merged[-1] = (merged[-1][0], max(merged[-1][1], r.end_s))
        else:
            merged.append((r.start_s, r.end_s))
    return merged


def clip_spans(
    spans: list[tuple[float, float]], duration_s: float
) -> tuple[list[tuple[float, float]], int]:
    """Spans within `[0, duration_s)`: one running past the end is cut there, one that
    starts after it is dropped; returns (spans, how many were cut or dropped)."""
    kept = [(s, min(e, duration_s)) for s, e in spans if s < duration_s]
    return kept, sum(e > duration_s for _, e in spans)


def frame_labels(
    label_rows: Iterable[LabelRow], video: str, t_s: np.ndarray, frame_duration: float
) -> np.ndarray | None:
    """Per-frame truth: positive iff the frame's interval overlaps a positive span.

    The frame at `t` stands for `[t, t + frame_duration)` (as in `tasks.video.events`), a
    span is `[start_s, end_s)`; positive iff `t < end_s` and `t + frame_duration > start_s`
    (with 1e-9 s of tolerance against float noise). So every span, however short, has at
    least one positive frame, and a span aligned to frame boundaries marks exactly the
    frames inside it. None for a video the labels do not name.
    """
    spans = positive_spans(label_rows, video)
    if spans is None:
        return None
    t = np.asarray(t_s, dtype=np.float64)
    out = np.zeros(t.shape, dtype=bool)
    for start, end in spans:
        out |= (t < end - EPS) & (t + frame_duration > start + EPS)
    return out
