"""What each `curate` command does (the parser in `flows.cli` routes to these).

Commands that plan or validate do it before importing Prefect, torch or open_clip, so a bad
partition, config or input fails in about a second and a published partition is skipped as
fast; the read-only commands on published output live in `flows.browse`.
"""

from __future__ import annotations

import argparse
import json
import logging

from flows import console
from flows.exits import OK
from schemas.config import ConfigError, CurateConfig, load_config
from schemas.partition import check_date, check_optional_date, undated

logger = logging.getLogger("flows.cli")


def _config(args: argparse.Namespace) -> CurateConfig:
    return load_config(args.config, args.set or [])


def check_dated(cfg: CurateConfig, flows: list[str], command: str) -> None:
    """`backfill` and `serve` run many dates: an input without `{date}` would publish the same
    files under every one of them, so it is refused; one `run` only gets a warning."""
    for flow in flows:
        section = getattr(cfg, flow)
        if section is None or not (patterns := undated(section.input)):
            continue
        why = (
            f"{flow}.input {patterns[0]!r} has no {{date}}: every partition would read the "
            f"same files (put {{date}} where each day's files differ, e.g. .../{{date}}/*.tar)"
        )
        if command == "run":
            logger.warning("%s", why)
        else:
            raise ConfigError(f"config: {command}: {why}")


def cmd_run(args: argparse.Namespace) -> int:
    """Plan first (no Prefect, torch or open_clip imported): a partition already published
    with the same inputs, config and model is reported as skipped in about a second."""
    from flows.plan import already_published, plan_run, skipped

    if args.partition is not None:
        check_date(args.partition)
    cfg = _config(args)
    plan = plan_run(cfg, args.flow, args.partition)
    if not args.force and already_published(plan, cfg.storage_options):
        result = skipped(plan, cfg.storage_options)
    else:
        check_dated(cfg, [args.flow], "run")  # about to publish: warn of an undated input
        if args.flow == "pool":
            from flows.pool import run_pool as run_flow
        else:
            from flows.video import run_video as run_flow
        console.setup(args.verbose)  # Prefect is imported now: its console handlers too
        result = run_flow(cfg, plan.partition, args.force)
    print(json.dumps(result, indent=2, default=str))
    return OK


def cmd_backfill(args: argparse.Namespace) -> int:
    check_date(args.start, "--start")
    check_date(args.end, "--end")
    cfg = _config(args)
    check_dated(cfg, [args.flow], "backfill")
    import prefect  # noqa: F401 (its logging setup first, then ours on top)

    from flows.backfill import run_backfill

    console.setup(args.verbose)
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

    cfg = _config(args)
    check_dated(cfg, [f for f in ("pool", "video") if getattr(cfg, f) is not None], "serve")
    if args.prefect_yaml:
        print(prefect_yaml_text(cfg, args.work_pool), end="")
        return OK
    serve(cfg, args.config, concurrency_limit=args.concurrency_limit)
    return OK


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
    return OK


def cmd_nearmiss(args: argparse.Namespace) -> int:
    """fit: a GDA head from labelled videos; eval: metrics of zero-shot and with the head
    (per review round with --rounds); suggest: the spans to review next."""
    check_optional_date(getattr(args, "partition", None), "--partition")
    cfg = _config(args)
    from flows import nearmiss
    from tasks.video.evaluation import text_table

    console.setup(args.verbose)  # Prefect is imported now: its console handlers too
    if args.action == "suggest":
        from flows.suggest import suggest

        summary = suggest(cfg, args.start, args.end, args.n, args.labels or [], args.head,
                          args.window_s, args.out)  # fmt: skip
        print(json.dumps(summary, indent=2, default=str))
    elif args.action == "fit":
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
    return OK


def cmd_heads(args: argparse.Namespace) -> int:
    from flows.nearmiss import convert

    cfg = _config(args)
    result = convert(cfg, args.state_dict, args.out, args.activation, not args.no_normalize)
    print(json.dumps(result, indent=2, default=str))
    return OK


def cmd_demo(args: argparse.Namespace) -> int:
    from flows.demo import run_demo

    return run_demo(args.workdir, args.train_steps)
