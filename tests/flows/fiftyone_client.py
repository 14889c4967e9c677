"""Load our FiftyOne exports with FiftyOne itself (run by FiftyOne's own Python, see
tests/review_tools.py) and print what it holds as JSON: argument {pool, video} folders."""

import json
import sys

import fiftyone as fo

args = json.loads(sys.argv[1])
out = {}
pool = fo.Dataset.from_dir(args["pool"], dataset_type=fo.types.LegacyFiftyOneDataset)
out["pool"] = {
    "media_type": pool.media_type,
    "schema": sorted(pool.get_field_schema()),
    "samples": [
        {
            "filepath": s.filepath,
            "tags": s.tags,
            "uid": s["uid"],
            "caption": s["caption"],
            "clip_score": s["clip_score"],
            "status": s["status"],
            "reason": s["reason"],
            "dup_group": s["dup_group"],
            "aesthetic": s["aesthetic"],
        }
        for s in pool.iter_samples()
    ],
}
video = fo.Dataset.from_dir(args["video"], dataset_type=fo.types.LegacyFiftyOneDataset)
out["video"] = {
    "media_type": video.media_type,
    "frame_schema": sorted(video.get_frame_field_schema()),
    "samples": [
        {
            "filepath": s.filepath,
            "status": s["status"],
            "events": [
                [d.label, list(d.support), d.confidence, d["event_id"]]
                for d in (s["events"].detections if s["events"] else [])
            ],
            "frames": {str(n): [f["t_s"], f["score"], f["ood_flag"]] for n, f in s.frames.items()},
        }
        for s in video.iter_samples()
    ],
}
# the format FiftyOne itself names by default recognises the legacy layout too
out["auto"] = len(fo.Dataset.from_dir(args["pool"], dataset_type=fo.types.FiftyOneDataset))
print(json.dumps(out))
