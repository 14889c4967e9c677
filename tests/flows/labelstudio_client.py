"""A reviewer's session on a real Label Studio server, run by Label Studio's own Python
(tests/review_tools.py): `label-studio-sdk` creates the project from our config.xml, a
Local Storage over the videos, imports our tasks.json, fetches each task's video by its URL,
annotates as a reviewer's clicks would (the prediction accepted, moved, a span added, a
task skipped), and downloads the JSON export. Argument: JSON {url, token, out, ...}."""

import json
import sys
import urllib.request
from pathlib import Path

from label_studio_sdk import LabelStudio

args = json.loads(sys.argv[1])
out = Path(args["out"])
ls = LabelStudio(base_url=args["url"], api_key=args["token"])
project = ls.projects.create(
    title="near-miss review", label_config=(out / "config.xml").read_text()
)
ls.import_storage.local.create(project=project.id, path=args["media_dir"], use_blob_urls=True)
ls.projects.import_tasks(id=project.id, request=json.loads((out / "tasks.json").read_text()))
tasks = sorted(ls.tasks.list(project=project.id), key=lambda t: t.data["source"])

media = {}
for task in tasks:  # Label Studio serves each video from the URL the task names
    req = urllib.request.Request(
        args["url"] + task.data["video"], headers={"Authorization": f"Token {args['token']}"}
    )
    with urllib.request.urlopen(req) as resp:
        media[task.data["source"]] = len(resp.read())

region = lambda a, b, label: {  # noqa: E731
    "from_name": "events",
    "to_name": "video",
    "type": "timelinelabels",
    "value": {"ranges": [{"start": a, "end": b}], "timelinelabels": [label]},
}
plan = args["annotate"]  # file name -> "accept" | "skip" | [[a, b, label], ...]
for task in tasks:
    what = plan.get(task.data["source"].rsplit("/", 1)[1])
    if what is None:
        continue
    if what == "skip":
        ls.annotations.create(id=task.id, result=[], was_cancelled=True)
        continue
    if what == "accept":
        predictions = list(ls.predictions.list(task=task.id))
        result = [
            {k: r[k] for k in ("from_name", "to_name", "type", "value")}
            for r in predictions[0].result
        ]
    else:
        result = [region(a, b, label) for a, b, label in what]
    ls.annotations.create(id=task.id, result=result, was_cancelled=False)

export = b"".join(
    ls.projects.exports.download_sync(id=project.id, export_type="JSON", download_all_tasks=True)
)
(out / "export.json").write_bytes(export)
print(json.dumps({"tasks": len(tasks), "media_bytes": media}))
