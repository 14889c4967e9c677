"""`curate`: the command line. Every failure the user can fix ends in one line on stderr."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from flows import browse, console
from flows.commands import (
    cmd_backfill,
    cmd_balance,
    cmd_demo,
    cmd_heads,
    cmd_nearmiss,
    cmd_run,
    cmd_serve,
)
from flows.exits import INTERRUPTED, TERMINATED, failure_line


def _flags(parent: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`-v` after the command too (`curate run pool -c C -v`), as users of git or prefect
    expect; SUPPRESS leaves the value given before the command in place."""
    parent.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP
    )
    return parent


def _config_args(p: argparse.ArgumentParser, force: bool = True) -> None:
    p.add_argument("-c", "--config", required=True, metavar="CONFIG", help="YAML config file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    if force:
        p.add_argument("--force", action="store_true", help="recompute even when published")


def _dates(p: argparse.ArgumentParser, required: bool = False, metavar: str = "D") -> None:
    p.add_argument("--start", required=required, metavar=metavar, help="first date, YYYY-MM-DD")
    p.add_argument("--end", required=required, metavar=metavar, help="last date (inclusive)")


def build_parser() -> argparse.ArgumentParser:
    """The command line; `flows.synopsis` renders the README's synopsis from it."""
    parser = argparse.ArgumentParser(prog="curate", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _flags(argparse.ArgumentParser(add_help=False))

    def command(name: str, text: str, func: Callable[..., int], where: Any = sub) -> Any:
        p = where.add_parser(name, help=text, description=text, parents=[common])
        p.set_defaults(func=func)
        return p

    run = command("run", "run one partition of a flow", cmd_run)
    run.add_argument("flow", choices=["pool", "video"])
    _config_args(run)
    run.add_argument("--partition", metavar="P", help="YYYY-MM-DD (default: today)")

    bf = command("backfill", "run one partition per date in a range", cmd_backfill)
    bf.add_argument("flow", choices=["pool", "video"])
    _config_args(bf)
    _dates(bf, required=True, metavar="YYYY-MM-DD")
    bf.add_argument("--force-range", action="store_true", help="allow more than 366 dates")
    bf.add_argument("--max-parallel", type=int, default=1, metavar="N", help="dates at once")
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
    bf.add_argument("--timeout", type=float, metavar="S", help="seconds per deployment run")
    bf.set_defaults(mode="auto")

    serve = command("serve", "serve the nightly deployments on their schedules", cmd_serve)
    _config_args(serve, force=False)
    serve.add_argument(
        "--concurrency-limit", type=int, default=1, metavar="N", help="runs per deployment at once"
    )
    serve.add_argument(
        "--prefect-yaml",
        action="store_true",
        help="print them as a prefect.yaml instead (for `prefect deploy`)",
    )
    serve.add_argument(
        "--work-pool",
        default="curate-process",
        metavar="POOL",
        help="work pool named in --prefect-yaml",
    )

    bal = command("balance", "MetaCLIP-balance a captions parquet", cmd_balance)
    bal.add_argument("--metadata", required=True, metavar="META", help="MetaCLIP entries")
    bal.add_argument("--input", required=True, metavar="CAPTIONS.parquet")
    bal.add_argument("--t", type=int, required=True, metavar="T", help="per-entry cap")
    bal.add_argument("--seed", type=int, default=0, metavar="S")
    bal.add_argument("--caption-column", default="caption", metavar="COLUMN")
    bal.add_argument("--uid-column", default=None, metavar="COLUMN", help="default: uid")
    bal.add_argument("--out", required=True, metavar="OUT.parquet")

    ver = command(
        "verify",
        "check published partitions (files, counts, checksums), a dataset's catalogs and index",
        browse.cmd_verify,
    )
    ver.add_argument("uri", metavar="URI", help=URI_HELP)
    ver.add_argument(
        "--repair",
        action="store_true",
        help="dataset: rebuild the catalogs from the manifests first",
    )
    rep = command("report", "print the summary of a published partition", browse.cmd_report)
    rep.add_argument("uri", metavar="URI", help=URI_HELP)
    ls = command("ls", "list a dataset's published partitions", browse.cmd_ls)
    ls.add_argument("uri", metavar="URI", help="{output}/{dataset}")
    _dates(ls)
    urls = command(
        "urls", "print the published shard URLs (open_clip --train-data)", browse.cmd_urls
    )
    urls.add_argument("uri", metavar="URI", help="{output}/{dataset}")
    urls.add_argument("--flow", choices=["pool", "video"], help="default: pool")
    _dates(urls)
    urls.add_argument(
        "--sep",
        default="\n",
        metavar="SEP",
        help="between URLs (default: a newline; '::' for open_clip)",
    )
    export = command("export", "export uids, or partitions for review tools", browse.cmd_export)
    export.add_argument("format", choices=["datacomp-subset", "uids", "labelstudio", "fiftyone"])
    export.add_argument("uri", metavar="URI", nargs="?", help="{output}/{dataset}")
    _dates(export)
    export.add_argument(
        "--out", required=True, metavar="OUT", help="subset.npy, uids.parquet or a folder"
    )
    export.add_argument("--from", dest="review", metavar="REVIEW.parquet",
                        help="labelstudio: the spans of `nearmiss suggest`")  # fmt: skip
    export.add_argument("--local-root", default="/", metavar="DIR",
                        help="labelstudio: its local files root")  # fmt: skip
    export.add_argument("--flow", choices=["pool", "video"], help="fiftyone: default both")
    imp = command("import", "labels from a review tool's export", browse.cmd_import)
    imp.add_argument("format", choices=["labelstudio"])
    imp.add_argument("export", metavar="EXPORT.json", help="Label Studio's JSON export")
    imp.add_argument("--out", required=True, metavar="LABELS.csv")

    _add_nearmiss_parsers(sub, command)

    demo = command("demo", "generate a small pool, videos and model; run the pool flow", cmd_demo)
    demo.add_argument("--workdir", default="demo", metavar="DIR")
    demo.add_argument(
        "--train-steps", type=int, default=200, metavar="N", help="0 = random weights"
    )
    return parser


VERBOSE_HELP = "debug logs, and a traceback on failure (before or after the command)"
URI_HELP = "a partition {output}/{dataset}/{flow}/{date}, or a dataset for all of them"


def _add_nearmiss_parsers(sub: Any, command: Callable[..., Any]) -> None:
    nearmiss = sub.add_parser("nearmiss", help="fit and evaluate near-miss heads on labels")
    actions = nearmiss.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("fit", "fit a GDA head on labelled videos' cached frame embeddings"),
        ("eval", "frame and event metrics of zero-shot and with a head, against labels"),
    ):
        p = command(name, text, cmd_nearmiss, actions)
        p.add_argument(
            "--labels", required=True, metavar="LABELS.csv", help="CSV: video,start_s,end_s,label"
        )
        _config_args(p, force=False)
        p.add_argument("--partition", metavar="P", help="of video.input (default: today)")
        if name == "eval":
            p.add_argument("--head", metavar="HEAD", help="default: video.head of the config")
            p.add_argument("--rounds", nargs="+", metavar="LABELS",
                           help="labels CSV of each review round: a head per round")  # fmt: skip
        out = "HEAD.safetensors" if name == "fit" else "DIR"
        p.add_argument("--out", required=True, metavar=out, help="the head (fit), a folder (eval)")
    p = command("suggest", "the spans to review next (flows/suggest.py)", cmd_nearmiss, actions)
    _config_args(p, force=False)
    _dates(p, required=True, metavar="YYYY-MM-DD")
    p.add_argument("--n", type=int, default=50, metavar="N", help="how many spans")
    p.add_argument("--labels", action="append", metavar="LABELS.csv",
                   help="labels so far (repeatable)")  # fmt: skip
    p.add_argument("--head", metavar="HEAD", help="default: video.head of the config")
    p.add_argument("--window-s", type=float, default=2.0, metavar="S", help="window length")
    p.add_argument("--out", required=True, metavar="REVIEW.parquet")
    heads = sub.add_parser("heads", help="embedding heads in the safetensors head format")
    heads_actions = heads.add_subparsers(dest="action", required=True, metavar="ACTION")
    conv = command("convert", "a PyTorch Linear/MLP state dict -> head", cmd_heads, heads_actions)
    conv.add_argument("state_dict", metavar="STATE_DICT.pt", help="loaded with weights_only=True")
    conv.add_argument(
        "-c",
        "--config",
        "--model-config",
        dest="config",
        required=True,
        metavar="CONFIG",
        help="the config whose model the head is for",
    )
    conv.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key")
    conv.add_argument("--activation", choices=["relu", "none"], default="relu")
    conv.add_argument("--no-normalize", action="store_true", help="no L2 norm of embeddings")
    conv.add_argument("--out", required=True, metavar="HEAD.safetensors")


class Terminated(BaseException):
    """SIGTERM: a scheduler or `prefect` cancellation asked this process to stop."""


def _on_sigterm(signum: int, frame: Any) -> None:
    """Tell every run's in-flight tasks to stop (they check between batches), then unwind:
    locks are released, unfinished versions removed, nothing unfinished is cached."""
    from tasks import cancel

    cancel.cancel_all()
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console.setup(args.verbose)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    handler: Callable[[argparse.Namespace], int] = args.func
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("curate: interrupted", file=sys.stderr)
        return INTERRUPTED
    except Terminated:
        print("curate: terminated (SIGTERM); unfinished work stopped", file=sys.stderr)
        return TERMINATED
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
