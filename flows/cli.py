"""`curate`: the command line. Every failure the user can fix ends in one line on stderr."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from flows import console
from schemas.config import CurateConfig, load_config

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INPUT, EXIT_HELD, EXIT_LOCKED = 0, 1, 2, 3, 4, 5
# Exit status by failure class (documented in the README); anything else exits 1.
EXIT_CODES = {
    "ConfigError": EXIT_USAGE,
    "CredentialError": EXIT_USAGE,
    "InputError": EXIT_INPUT,
    "MetadataError": EXIT_INPUT,
    "ExportError": EXIT_INPUT,
    "ReviewExportError": EXIT_INPUT,
    "LabelError": EXIT_INPUT,
    "HeadMismatch": EXIT_INPUT,
    "GateHeld": EXIT_HELD,
    "PartitionLocked": EXIT_LOCKED,
    "StoreError": EXIT_INPUT,  # a store that kept failing after its retries: unreachable
}
# What to do about it, appended to the one line.
FIXES = {
    "InputError": "check the input URIs and storage_options",
    "MetadataError": "check pool.balance.metadata",
    "ModelLoadError": "check model.name and model.pretrained (a path, URL or open_clip tag)",
    "PartitionLocked": "wait for that run; a dead run's lock is taken over after its lease",
    "LockLost": "another run took the partition over; re-run when it has finished",
    "LabelError": "the labels CSV needs video,start_s,end_s,label rows",
    "StoreError": "re-run when the store answers again: finished work is reused from the cache",
}
VERBOSE = False


def _config(args: argparse.Namespace) -> CurateConfig:
    return load_config(args.config, args.set or [])


def cmd_run(args: argparse.Namespace) -> int:
    """Plan first (no Prefect, torch or open_clip imported): a partition already published
    with the same inputs, config and model is reported as skipped in about a second."""
    from flows.plan import already_published, plan_run, skipped

    cfg = _config(args)
    plan = plan_run(cfg, args.flow, args.partition)
    if not args.force and already_published(plan, cfg.storage_options):
        result = skipped(plan, cfg.storage_options)
    elif args.flow == "pool":
        from flows.pool import run_pool

        console.setup(VERBOSE)  # Prefect is imported now: its console handlers too
        result = run_pool(cfg, plan.partition, args.force)
    else:
        from flows.video import run_video

        console.setup(VERBOSE)
        result = run_video(cfg, plan.partition, args.force)
    print(json.dumps(result, indent=2, default=str))
    return EXIT_OK


def cmd_backfill(args: argparse.Namespace) -> int:
    import prefect  # noqa: F401 (its logging setup first, then ours on top)

    from flows.backfill import run_backfill

    console.setup(VERBOSE)

    cfg = _config(args)
    return run_backfill(
        cfg,
        args.flow,
        args.start,
        args.end,
        args.force,
        args.max_parallel,
        mode=args.mode,
        force_range=args.force_range,
        timeout=args.timeout,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.serve import prefect_yaml_text, serve

    if args.prefect_yaml:
        print(prefect_yaml_text(_config(args), args.work_pool), end="")
        return EXIT_OK
    serve(_config(args), args.config, concurrency_limit=args.concurrency_limit)
    return EXIT_OK


def cmd_balance(args: argparse.Namespace) -> int:
    from tasks.metaclip.balance import balance_file

    stats = balance_file(
        args.metadata,
        args.input,
        args.out,
        t=args.t,
        seed=args.seed,
        caption_column=args.caption_column,
        uid_column=args.uid_column,
    )
    print(json.dumps(stats, indent=2, default=str))
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    """A partition (its files, counts, checksums), or a dataset's catalogs and dedup index."""
    from tasks.io import storage
    from tasks.verify import verify_dataset, verify_partition

    is_partition = storage.exists(storage.join(args.uri, "manifest.json")) or storage.exists(
        storage.join(args.uri, "_SUCCESS")
    )
    dataset = not is_partition and any(
        storage.exists(storage.join(args.uri, f)) for f in ("pool", "video")
    )
    if dataset and args.repair:
        from tasks.publish.catalog import write_rebuilt

        for flow in ("pool", "video"):
            if storage.exists(storage.join(args.uri, flow)):
                write_rebuilt(storage.join(args.uri, flow))
    problems = verify_dataset(args.uri) if dataset else verify_partition(args.uri)
    for p in problems:
        print(f"FAIL {p}")
    if problems:
        print(f"{args.uri}: {len(problems)} problem(s)", file=sys.stderr)
        return EXIT_FAILED
    print(f"OK {args.uri}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from tasks.verify import summarize_partition

    print(summarize_partition(args.uri))
    return EXIT_OK


def cmd_ls(args: argparse.Namespace) -> int:
    """A dataset's partitions: flow, date, counts, version, published time, held, stale (all
    from each flow's catalog: one read, however many partitions)."""
    import clip_curate as cc

    ds = cc.open_dataset(args.uri)
    rows = []
    for flow in ("pool", "video"):
        cat = ds.catalog(flow)
        for p in ds.partitions(flow, args.start, args.end, cat):
            counts = p.counts
            kept = counts.get("kept", counts.get("ok", ""))
            held = "held" if p.held() else ""
            stale = "stale" if cat.stale(p.name) else ""
            rows.append((flow, p.name, counts.get("input", ""), kept, p.version, p.created or "",
                         held, stale))  # fmt: skip
    header = ("flow", "partition", "input", "kept", "version", "published", "held", "stale")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    if args.format in ("labelstudio", "fiftyone"):
        from flows.review import export_command

        print(json.dumps(export_command(args), indent=2, default=str))
        return EXIT_OK
    import clip_curate as cc
    from clip_curate.export import datacomp_subset, kept_uids, write_npy
    from tasks.io import storage

    uids = kept_uids(cc.open_dataset(args.uri), args.start, args.end)
    if args.format == "datacomp-subset":
        array = datacomp_subset(uids["uid"].to_list())
        write_npy(array, args.out)
        print(f"wrote {len(array)} uids to {args.out}")
    else:
        storage.write_parquet(uids, args.out)
        print(f"wrote {uids.height} uids to {args.out}")
    return EXIT_OK


def cmd_nearmiss(args: argparse.Namespace) -> int:
    """fit: a GDA head from labelled videos; eval: metrics of zero-shot and with the head."""
    from flows import nearmiss
    from tasks.video.evaluation import text_table

    console.setup(VERBOSE)  # Prefect is imported now: its console handlers too
    cfg = _config(args)
    if args.action == "suggest":
        from flows.suggest import suggest

        summary = suggest(cfg, args.start, args.end, args.n, args.labels or [], args.head,
                          args.window_s, args.out)  # fmt: skip
        print(json.dumps(summary, indent=2, default=str))
        return EXIT_OK
    if args.action == "fit":
        summary = nearmiss.fit(cfg, args.labels, args.partition, args.out)
        print(json.dumps(summary, indent=2, default=str))
    else:
        if args.rounds:
            from flows.rounds import eval_rounds

            doc = eval_rounds(cfg, args.labels, args.partition, args.head, args.rounds, args.out)
        else:
            doc = nearmiss.evaluate(cfg, args.labels, args.partition, args.head, args.out)
        print(text_table(doc))
        print(f"wrote {args.out}/metrics.json and {args.out}/report.md")
    return EXIT_OK


def cmd_heads(args: argparse.Namespace) -> int:
    from flows.nearmiss import convert

    cfg = _config(args)
    result = convert(cfg, args.state_dict, args.out, args.activation, not args.no_normalize)
    print(json.dumps(result, indent=2, default=str))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from flows.demo import run_demo

    return run_demo(args.workdir, args.train_steps)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, help="YAML config file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--force", action="store_true", help="recompute even when cached/published")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="curate", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one partition of a flow")
    run.add_argument("flow", choices=["pool", "video"])
    _add_config_args(run)
    run.add_argument("--partition", help="partition (default: today in the config timezone)")
    run.set_defaults(func=cmd_run)

    bf = sub.add_parser("backfill", help="run one partition per date in a range")
    bf.add_argument("flow", choices=["pool", "video"])
    _add_config_args(bf)
    bf.add_argument("--start", required=True, help="YYYY-MM-DD")
    bf.add_argument("--end", required=True, help="YYYY-MM-DD (inclusive)")
    bf.add_argument("--max-parallel", type=int, default=1, help="partitions at once")
    bf.add_argument("--force-range", action="store_true", help="allow more than 366 dates")
    bf.add_argument("--timeout", type=float, help="seconds to wait for each deployment run")
    where = bf.add_mutually_exclusive_group()
    where.add_argument(
        "--local",
        dest="mode",
        action="store_const",
        const="local",
        help="run in this process even when a server has the deployment",
    )
    where.add_argument(
        "--deployment",
        dest="mode",
        action="store_const",
        const="deployment",
        help="run as deployment runs on PREFECT_API_URL (else: auto)",
    )
    bf.set_defaults(func=cmd_backfill, mode="auto")

    serve = sub.add_parser("serve", help="serve the nightly deployments")
    serve.add_argument("-c", "--config", required=True)
    serve.add_argument("--set", action="append", metavar="KEY=VALUE")
    serve.add_argument("--concurrency-limit", type=int, default=1, help="runs per deployment")
    serve.add_argument(
        "--prefect-yaml",
        action="store_true",
        help="print the deployments as a prefect.yaml (for `prefect deploy`)",
    )
    serve.add_argument("--work-pool", default="curate-process", help="for --prefect-yaml")
    serve.set_defaults(func=cmd_serve)

    bal = sub.add_parser("balance", help="MetaCLIP-balance a captions parquet")
    bal.add_argument("--metadata", required=True)
    bal.add_argument("--input", required=True)
    bal.add_argument("--t", type=int, required=True)
    bal.add_argument("--seed", type=int, default=0)
    bal.add_argument("--caption-column", default="caption")
    bal.add_argument("--uid-column", default=None)
    bal.add_argument("--out", required=True)
    bal.set_defaults(func=cmd_balance)

    ver = sub.add_parser(
        "verify", help="check a published partition, or a dataset's catalogs and dedup index"
    )
    ver.add_argument("uri", help="a partition folder, or {output}/{dataset}")
    ver.add_argument("--repair", action="store_true",
                     help="dataset: rebuild the catalogs from the manifests first")  # fmt: skip
    ver.set_defaults(func=cmd_verify)
    rep = sub.add_parser("report", help="print the summary of a published partition")
    rep.add_argument("uri")
    rep.set_defaults(func=cmd_report)

    ls = sub.add_parser("ls", help="list a dataset's published partitions")
    ls.add_argument("uri", help="{output}/{dataset}")
    ls.add_argument("--start", help="YYYY-MM-DD")
    ls.add_argument("--end", help="YYYY-MM-DD")
    ls.set_defaults(func=cmd_ls)

    export = sub.add_parser("export", help="export uids, or partitions for review tools")
    export.add_argument("format", choices=["datacomp-subset", "uids", "labelstudio", "fiftyone"])
    export.add_argument("uri", nargs="?", help="{output}/{dataset}")
    export.add_argument("--start", help="YYYY-MM-DD")
    export.add_argument("--end", help="YYYY-MM-DD")
    export.add_argument("--out", required=True, help="subset.npy, uids.parquet or a folder")
    _add_review_args(export, sub)
    export.set_defaults(func=cmd_export)

    _add_nearmiss_parsers(sub)

    demo = sub.add_parser("demo", help="generate a small pool and model, run the pool flow")
    demo.add_argument("--workdir", default="demo")
    demo.add_argument("--train-steps", type=int, default=200, help="0 = random weights")
    demo.set_defaults(func=cmd_demo)
    return parser


def _add_review_args(export: argparse.ArgumentParser, sub: Any) -> None:
    """Options of the review exports, and `curate import labelstudio` (flows/review.py)."""
    export.add_argument("--from", dest="review", help="labelstudio: review.parquet (suggest)")
    export.add_argument("--local-root", default="/", help="labelstudio: local files root")
    export.add_argument("--flow", choices=["pool", "video"], help="fiftyone: default both")
    imp = sub.add_parser("import", help="labels from a review tool's export")
    imp.add_argument("format", choices=["labelstudio"])
    imp.add_argument("export", help="Label Studio's JSON export")
    imp.add_argument("--out", required=True, help="labels CSV")
    imp.set_defaults(func=cmd_import)


def cmd_import(args: argparse.Namespace) -> int:
    from flows.review import import_labelstudio

    print(json.dumps(import_labelstudio(args.export, args.out), indent=2, default=str))
    return EXIT_OK


def _add_nearmiss_parsers(sub: Any) -> None:
    nearmiss = sub.add_parser("nearmiss", help="fit and evaluate near-miss heads on labels")
    actions = nearmiss.add_subparsers(dest="action", required=True)
    for name, text in (
        ("fit", "fit a GDA head on labelled videos' cached frame embeddings"),
        ("eval", "frame and event metrics of zero-shot and with a head, against labels"),
    ):
        p = actions.add_parser(name, help=text)
        p.add_argument("--labels", required=True, help="CSV: video,start_s,end_s,label")
        p.add_argument("-c", "--config", required=True, help="YAML config file")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key")
        p.add_argument("--partition", help="partition of video.input (default: today)")
        if name == "eval":
            p.add_argument("--head", help="head file (default: video.head of the config)")
            p.add_argument("--rounds", nargs="+", metavar="LABELS",
                           help="labels CSV of each review round: a head per round")  # fmt: skip
        p.add_argument("--out", required=True, help="HEAD.safetensors (fit) or a folder (eval)")
        p.set_defaults(func=cmd_nearmiss)
    _add_suggest_parser(actions)
    heads = sub.add_parser("heads", help="embedding heads in the safetensors head format")
    heads_actions = heads.add_subparsers(dest="action", required=True)
    conv = heads_actions.add_parser("convert", help="a PyTorch Linear/MLP state dict -> head")
    conv.add_argument("state_dict", help="STATE_DICT.pt (loaded with weights_only=True)")
    conv.add_argument("-c", "--config", "--model-config", dest="config", required=True)
    conv.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key")
    conv.add_argument("--out", required=True, help="HEAD.safetensors")
    conv.add_argument("--activation", choices=["relu", "none"], default="relu")
    conv.add_argument("--no-normalize", action="store_true", help="no L2 norm of embeddings")
    conv.set_defaults(func=cmd_heads)


def _add_suggest_parser(actions: Any) -> None:
    p = actions.add_parser("suggest", help="the spans to review next (flows/suggest.py)")
    p.add_argument("-c", "--config", required=True, help="YAML config file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key")
    p.add_argument("--start", required=True, help="YYYY-MM-DD")
    p.add_argument("--end", required=True, help="YYYY-MM-DD (inclusive)")
    p.add_argument("--n", type=int, default=50, help="how many spans")
    p.add_argument("--labels", action="append", help="labels CSV so far (repeatable)")
    p.add_argument("--head", help="head file (default: video.head of the config)")
    p.add_argument("--window-s", type=float, default=2.0, help="candidate window length")
    p.add_argument("--out", required=True, help="review.parquet")
    p.set_defaults(func=cmd_nearmiss)


class Terminated(BaseException):
    """SIGTERM: a scheduler or `prefect` cancellation asked this process to stop."""


def _on_sigterm(signum: int, frame: Any) -> None:
    """Tell every run's in-flight tasks to stop (they check between batches), then unwind:
    locks are released, unfinished versions removed, nothing unfinished is cached."""
    from tasks import cancel

    cancel.cancel_all()
    raise Terminated()


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def failure_line(err: BaseException) -> tuple[str, int]:
    """The one line on stderr for a failed command, and its exit status."""
    kind = type(err).__name__
    line = _one_line(err)
    if kind not in ("ConfigError", "CredentialError"):
        line = f"{kind}: {line}"
    if fix := FIXES.get(kind):
        line = f"{line} ({fix})"
    return f"curate: {line}", EXIT_CODES.get(kind, EXIT_FAILED)


def main(argv: list[str] | None = None) -> int:
    global VERBOSE
    args = build_parser().parse_args(argv)
    VERBOSE = args.verbose
    console.setup(args.verbose)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    handler: Callable[[argparse.Namespace], int] = args.func
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("curate: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("curate: terminated (SIGTERM); unfinished work stopped", file=sys.stderr)
        return 143
    except Exception as err:
        if args.verbose:
            raise
        line, status = failure_line(err)
        print(line, file=sys.stderr)
        return status
    finally:  # a caller embedding main() (a test, a notebook) keeps its own handling
        signal.signal(signal.SIGTERM, previous)


def entry() -> Any:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
