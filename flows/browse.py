"""The commands that read published output: `ls`, `verify`, `report`, `export`, `urls`.

Each first finds out what its URI is (`clip_curate.locate`): given a flow, partition or
version folder where a dataset was expected it does the right thing (lists, checks or
exports just that), and given an output root, another folder or a typo it says what to pass.
Finding nothing published is a failure (exit 3), never an empty table with exit 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any

from clip_curate.dataset import Dataset, Partition
from clip_curate.locate import FLOWS, Location, NothingPublished, locate
from flows.exits import FAILED, OK, UsageError
from schemas.partition import check_optional_date


@dataclass(frozen=True)
class Scope:
    """The published partitions a command works on, and how to name them in a message."""

    dataset: Dataset
    flows: tuple[str, ...]
    start: str | None
    end: str | None
    where: str  # "in URI between S and E", for messages

    def partitions(self) -> list[Partition]:
        return [p for f in self.flows for p in self.dataset.partitions(f, self.start, self.end)]


def _wrong_kind(loc: Location, command: str, wants: str) -> UsageError | NothingPublished:
    """What to say when `loc` is not something `command` can use."""
    if loc.kind == "nothing":
        return NothingPublished(f"nothing at {loc.uri} (check the path; {command} takes {wants})")
    if loc.kind == "root":
        names = ", ".join(loc.datasets)
        return UsageError(
            f"{loc.uri} is an output root holding datasets {names}: pass one of them, "
            f"e.g. `curate {command} {loc.uri}/{loc.datasets[0]}`"
        )
    return UsageError(
        f"{loc.uri} is not curated output (no pool/ or video/ partitions in it): "
        f"{command} takes {wants}"
    )


def scope(
    uri: str, command: str, start: str | None, end: str | None, flow: str | None = None
) -> Scope:
    """The dataset (and flow, partition) a URI names, with the date bounds checked."""
    lo, hi = check_optional_date(start, "--start"), check_optional_date(end, "--end")
    loc = locate(uri)
    if loc.kind not in ("dataset", "flow", "partition", "version") or loc.dataset is None:
        raise _wrong_kind(loc, command, "{output}/{dataset}")
    if flow and loc.flow and flow != loc.flow:
        raise UsageError(f"{loc.uri} is the {loc.flow} flow's folder, not {flow}'s")
    flows = (flow or loc.flow,) if (flow or loc.flow) else FLOWS
    if loc.partition:  # a partition (or a version of one): just that date
        lo = hi = loc.partition
    where = f"in {loc.uri}{_dates(lo, hi)}"
    return Scope(Dataset(loc.dataset), tuple(f for f in flows if f), lo, hi, where)


def _dates(lo: str | None, hi: str | None) -> str:
    if lo and hi:
        return f" on {lo}" if lo == hi else f" between {lo} and {hi}"
    return f" from {lo} on" if lo else (f" up to {hi}" if hi else "")


# ---------------------------------------------------------------- ls


def _ls_row(p: Partition, stale: bool) -> tuple[Any, ...]:
    counts = p.counts  # from the flow's catalog: one read, however many partitions
    # a video partition publishes events, not its input videos
    kept = p.entry.get("events", "") if p.flow == "video" else counts.get("kept", "")
    held = "held" if p.held() else ""
    return (p.flow, p.name, counts.get("input", ""), kept, p.version, p.created or "", held,
            "stale" if stale else "")  # fmt: skip


def cmd_ls(args: argparse.Namespace) -> int:
    """A dataset's partitions: flow, date, counts, version, published time, held, stale."""
    found = scope(args.uri, "ls", args.start, args.end)
    rows = []
    for flow in found.flows:
        catalog = found.dataset.catalog(flow)
        parts = found.dataset.partitions(flow, found.start, found.end, catalog)
        rows += [_ls_row(p, catalog.stale(p.name)) for p in parts]
    if not rows:
        raise NothingPublished(f"no published partitions {found.where}")
    header = ("flow", "partition", "input", "kept", "version", "published", "held", "stale")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return OK


# ---------------------------------------------------------------- verify, report


def _target(uri: str, command: str) -> Location:
    """A published partition, or a dataset or flow (several); anything else is refused."""
    loc = locate(uri)
    if loc.kind == "version":
        raise UsageError(
            f"{loc.uri} is a version folder: pass its partition {loc.partition_uri} "
            f"({command} follows the partition's manifest.json to its published version)"
        )
    if loc.kind == "partition":
        from tasks.publish.manifest import read_published

        if read_published(loc.uri) is None:
            raise NothingPublished(f"partition {loc.uri} is not published (no _SUCCESS)")
        return loc
    if loc.kind in ("dataset", "flow"):
        return loc
    raise _wrong_kind(loc, command, "a partition folder, {output}/{dataset}/{flow}/{date}")


def _published(uri: str, command: str) -> list[Partition]:
    found = scope(uri, command, None, None)
    parts = found.partitions()
    if not parts:
        raise NothingPublished(f"no published partitions {found.where}")
    return parts


def cmd_verify(args: argparse.Namespace) -> int:
    """Check one partition, or every published partition of a dataset or flow together with
    the dataset's catalogs and dedup index (`--repair` rebuilds the catalogs first)."""
    from tasks.verify import verify_dataset, verify_partition

    loc = _target(args.uri, "verify")
    many = loc.kind != "partition"
    if many and args.repair:
        _repair_catalogs(loc)
    shared = verify_dataset(loc.dataset) if many else []
    try:
        uris = [p.uri for p in _published(args.uri, "verify")] if many else [loc.uri]
    except NothingPublished:
        if not shared:  # a catalog that lost its entries is a problem to show, not "nothing"
            raise
        uris = []
    bad = 0
    for uri in uris:
        problems = verify_partition(uri)
        for p in problems:
            print(f"FAIL {uri}: {p}" if len(uris) > 1 else f"FAIL {p}")
        if not problems:
            print(f"OK {uri}")
        bad += bool(problems)
    for p in shared:
        print(f"FAIL {loc.dataset}: {p}")
    if bad or shared:
        where = f"; {len(shared)} in the dataset's catalogs or dedup index" if shared else ""
        print(f"curate: {bad} of {len(uris)} partition(s) failed{where}", file=sys.stderr)
        return FAILED
    return OK


def _repair_catalogs(loc: Location) -> None:
    """Rewrite each flow's catalog from its partitions' manifests (the manifests are the truth)."""
    from tasks.io import storage
    from tasks.publish.catalog import write_rebuilt

    for flow in (loc.flow,) if loc.flow else FLOWS:
        folder = storage.join(loc.dataset, flow)
        if storage.exists(folder):
            write_rebuilt(folder)


def cmd_report(args: argparse.Namespace) -> int:
    """Print the summary of one published partition."""
    from tasks.verify import summarize_partition

    loc = _target(args.uri, "report")
    if loc.kind != "partition":
        latest = _published(args.uri, "report")[-1]
        raise UsageError(
            f"{loc.uri} is a {loc.kind} folder: report summarises one partition, e.g. "
            f"`curate report {latest.uri}` (`curate ls {loc.dataset}` lists them)"
        )
    print(summarize_partition(loc.uri))
    return OK


# ---------------------------------------------------------------- export, urls


def cmd_export(args: argparse.Namespace) -> int:
    """The kept pool samples' uids, as DataComp's subset file or a parquet table; or
    partitions for a review tool (Label Studio, FiftyOne: flows/review.py)."""
    if args.format in ("labelstudio", "fiftyone"):
        from flows.review import export_command

        print(json.dumps(export_command(args), indent=2, default=str))
        return OK
    if not args.uri:
        raise UsageError(f"export {args.format} needs URI ({{output}}/{{dataset}})")
    from clip_curate.export import datacomp_subset, kept_uids, write_npy
    from tasks.io import storage

    found = scope(args.uri, "export", args.start, args.end, flow="pool")
    if not found.partitions():
        raise NothingPublished(
            f"no published pool partitions {found.where} (export writes the pool flow's "
            "kept samples)"
        )
    uids = kept_uids(found.dataset, found.start, found.end)
    if args.format == "datacomp-subset":
        array = datacomp_subset(uids["uid"].to_list())
        write_npy(array, args.out)
        print(f"wrote {len(array)} uids to {args.out}")
    else:
        storage.write_parquet(uids, args.out)
        print(f"wrote {uids.height} uids to {args.out}")
    return OK


def cmd_import(args: argparse.Namespace) -> int:
    """Labels from Label Studio's JSON export, as the labels CSV `nearmiss` reads."""
    from flows.review import import_labelstudio

    print(json.dumps(import_labelstudio(args.export, args.out), indent=2, default=str))
    return OK


def cmd_urls(args: argparse.Namespace) -> int:
    """The published shard tars, for open_clip's `--train-data` or `wds.WebDataset`."""
    found = scope(args.uri, "urls", args.start, args.end, flow=args.flow)
    if found.flows == FLOWS:
        found = Scope(found.dataset, ("pool",), found.start, found.end, found.where)
    parts = found.partitions()
    sizes = {u: n for p in parts for u, n in p.sizes().items()}
    urls = [u for p in parts for u in p.shard_urls()]
    if not urls:
        raise NothingPublished(f"no published {found.flows[0]} shards {found.where}")
    print(args.sep.join(urls))
    print(
        f"{len(urls)} shards, {sum(sizes.values())} samples in {len(parts)} partitions",
        file=sys.stderr,
    )
    return OK
