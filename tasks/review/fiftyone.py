"""FiftyOne's documented on-disk dataset format (`fiftyone.types.LegacyFiftyOneDataset`),
which `fiftyone.Dataset.from_dir(DIR, dataset_type=fo.types.LegacyFiftyOneDataset)` loads
(and `fo.types.FiftyOneDataset` recognises and defers to)::

    DIR/metadata.json     {"name", "media_type": "image" | "video", "sample_fields",
                           "frame_fields", "info"}
    DIR/samples.json      {"samples": [{"filepath", "tags", "metadata", <fields>...}]}
    DIR/frames/N.json     video: {"frames": {"<frame_number>": {"frame_number", <fields>}}}
    DIR/data/...          the media files a relative `filepath` points into

Fields are plain JSON values (strings, numbers, booleans, null) or FiftyOne labels written
as their documents (`{"_cls": "TemporalDetections", "detections": [...]}`); nothing random
(no ids, no timestamps: FiftyOne assigns them on load), so the same partition exports the
same bytes. FiftyOne numbers a video's frames from 1; a `TemporalDetection`'s `support` is
`[first, last]`, both included.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

FIELD = "fiftyone.core.fields."
FIELD_TYPES = {bool: "BooleanField", int: "IntField", float: "FloatField", str: "StringField"}
TEMPORAL = f"{FIELD}EmbeddedDocumentField(fiftyone.core.labels.TemporalDetections)"


def plain(value: Any) -> Any:
    """A JSON value FiftyOne stores as it is: numpy scalars as numbers, NaN as null."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def field_types(docs: Sequence[Mapping[str, Any]], skip: Sequence[str] = ()) -> dict[str, str]:
    """FiftyOne's field type of every scalar field the documents hold (first non-null
    value decides; a float column with whole values stays a FloatField by its name's
    other values: any float makes the field a FloatField)."""
    found: dict[str, set[type]] = {}
    for doc in docs:
        for key, value in doc.items():
            if key in skip or value is None or isinstance(value, dict | list):
                continue
            found.setdefault(key, set()).add(type(value))
    out = {}
    for key, kinds in found.items():
        kind = float if kinds <= {int, float} and float in kinds else next(iter(kinds))
        out[key] = FIELD + FIELD_TYPES.get(kind, "StringField")
    return out


def temporal_detections(events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """`TemporalDetections` of `events` (each: `label`, `support`, `confidence`, attributes)."""
    detections = [{"_cls": "TemporalDetection", "tags": [], **e} for e in events]
    return {"_cls": "TemporalDetections", "detections": detections}


def event_support(
    start_s: float, end_s: float, t_s: np.ndarray, frame_index: np.ndarray, n_frames: int
) -> list[int]:
    """FiftyOne's `[first, last]` frames (1-based) of the event `[start_s, end_s)`: from the
    first sampled frame at or after its start to the frame before the first sampled frame at
    or after its end (the video's last frame when none): the presentation timestamps the
    flow sampled, not a constant rate, so a variable-rate video gets its true frames."""
    eps = 1e-9
    i = int(np.searchsorted(t_s, start_s - eps, "left"))
    j = int(np.searchsorted(t_s, end_s - eps, "left"))
    first = int(frame_index[min(i, len(t_s) - 1)]) + 1
    last = int(frame_index[j]) if j < len(t_s) else int(n_frames)
    return [first, max(first, last)]


def metadata(media_type: str, name: str, samples: Sequence[dict], frames: Sequence[dict]) -> dict:
    """metadata.json: the media type and every field's type (FiftyOne infers a video's)."""
    sample_fields = {
        "filepath": FIELD + "StringField",
        "tags": f"{FIELD}ListField({FIELD}StringField)",
        **field_types(samples, skip=("filepath", "tags", "metadata", "frames")),
    }
    if any(isinstance(s.get("events"), dict) for s in samples):
        sample_fields["events"] = TEMPORAL
    doc: dict[str, Any] = {"name": name, "media_type": media_type, "info": {}}
    doc["sample_fields"] = sample_fields
    if media_type == "video":
        doc["frame_fields"] = {
            "frame_number": FIELD + "FrameNumberField",
            **field_types(frames, skip=("frame_number",)),
        }
    return doc


def dumps(doc: Any) -> bytes:
    return (json.dumps(doc, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()
