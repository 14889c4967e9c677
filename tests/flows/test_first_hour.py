"""A newcomer's first hour, as the README tells it: the synopsis is the parser's, and every
command of the quick start and of the synopsis works on the demo (exit 0). The manual's
pages (docs/) repeat both blocks: they must say the same."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from flows.cli import build_parser
from tests.helpers import ROOT, run_cli

PARTITION = "2026-01-01"


def readme_block(heading: str, fence: str, page: str = "README.md") -> str:
    """The first fenced block after `heading` in the README (or a page of the manual)."""
    text = "\n" + (ROOT / page).read_text()
    after = text.split(f"\n{heading}\n", 1)[1]
    return after.split(f"```{fence}\n", 1)[1].split("```", 1)[0]


def commands(block: str) -> list[list[str]]:
    """The `curate ...` command lines of a block (continuation lines joined, comments cut)."""
    out: list[str] = []
    for line in block.splitlines():
        if line.startswith("curate "):
            out.append(line.split("  #", 1)[0])
        elif line.startswith(" ") and out:
            out[-1] += " " + line.strip()
    return [shlex.split(c) for c in out]


def test_the_readme_synopsis_is_the_parsers() -> None:
    """Defect: the synopsis omitted backfill --set/--force-range, balance's --caption-column
    and --uid-column, and serve's flags."""
    from flows.synopsis import synopsis

    assert readme_block("## The CLI", "") == synopsis(build_parser())
    assert readme_block("# The CLI", "", "docs/cli.md") == synopsis(build_parser())


def test_the_manual_repeats_the_readmes_first_hour() -> None:
    block = readme_block("## First hour", "bash")
    assert readme_block("## First hour", "bash", "docs/index.md") == block


def test_the_first_hour_commands_run_on_the_demo(demo: Path, capsys) -> None:
    lines = commands(readme_block("## First hour", "bash"))
    assert len(lines) >= 8
    for words in lines:
        args = [f"{demo}/{w[5:]}" if w.startswith("demo/") else w for w in words[1:]]
        result = run_cli(capsys, *args)
        assert result.status == 0, (words, result.line)


def _state_dict(path: Path, tiny_model: dict) -> Path:
    import torch

    dim = json.loads(Path(tiny_model["name"]).read_text())["embed_dim"]
    torch.save(torch.nn.Linear(dim, 1).state_dict(), path)
    return path


def _first_video_labels(labels: Path, tmp: Path) -> Path:
    """The labels of the demo's first video only: `suggest` leaves labelled videos out."""
    head, *rows = labels.read_text().splitlines()
    first = rows[0].split(",")[0]
    out = tmp / "labels-first.csv"
    out.write_text("\n".join([head, *(r for r in rows if r.startswith(first + ","))]) + "\n")
    return out


def values(demo: Path, tmp: Path, tiny_model: dict) -> dict[str, str]:
    """What to type for each placeholder (by option, or by metavar for the rest)."""
    dataset = demo / "curated" / "demo"
    return {
        "CONFIG": str(demo / "demo.yaml"),
        "KEY=VALUE": "model.batch_size=16",  # not part of a run key: changes nothing published
        "P": PARTITION,
        "YYYY-MM-DD": PARTITION,
        "D": PARTITION,
        "N": "1",
        "--timeout": "600",
        "--seed": "0",
        "POOL": "curate-process",
        "META": str(demo / "metadata.json"),
        "CAPTIONS.parquet": str(demo / "captions.parquet"),
        "T": "2",
        "--caption-column": "caption",
        "--uid-column": "uid",
        "OUT.parquet": str(tmp / "balanced.parquet"),
        "verify URI": str(dataset / "pool" / PARTITION),
        "report URI": str(dataset / "pool" / PARTITION),
        "URI": str(dataset),
        "SEP": "::",
        "datacomp-subset OUT": str(tmp / "subset.npy"),
        "uids OUT": str(tmp / "uids.parquet"),
        "LABELS.csv": str(demo / "labels.csv"),
        "fit HEAD.safetensors": str(tmp / "head.safetensors"),
        "HEAD": str(tmp / "head.safetensors"),
        "DIR": str(tmp / "out-dir"),
        "STATE_DICT.pt": str(_state_dict(tmp / "linear.pt", tiny_model)),
        "convert HEAD.safetensors": str(tmp / "linear.safetensors"),
        "demo DIR": str(tmp / "demo-again"),
        "LABELS": str(demo / "labels.csv"),  # eval --rounds: one round
        "suggest LABELS.csv": str(_first_video_labels(demo / "labels.csv", tmp)),
        "--window-s": "2",
        "REVIEW.parquet": str(tmp / "review.parquet"),  # suggest writes it, export reads it
        "--local-root": "/",
        "labelstudio OUT": str(tmp / "labelstudio"),
        "fiftyone OUT": str(tmp / "fiftyone"),
        "EXPORT.json": str(tmp / "labelstudio" / "tasks.json"),  # tasks not reviewed yet
    }


def in_order(lines: list[list[str]]) -> list[list[str]]:
    """Synopsis lines in an order their files exist in: the review exports read what
    `nearmiss suggest` wrote, and `import` reads what `export` wrote."""
    return sorted(lines, key=lambda words: {"export": 1, "import": 2}.get(words[1], 0))


def fill(words: list[str], known: dict[str, str]) -> list[list[str]]:
    """Concrete command lines for one synopsis line (without `curate`): every optional
    argument included, the first of alternatives (`--local | --deployment`) and of an
    option's choices, and one line per choice of a positional `{a|b}`."""
    flat = " ".join(words[1:]).replace("[", " ").replace("]", " ").replace(" ...", " ")
    tokens: list[str] = []
    for token in flat.split():
        if tokens and tokens[-1] == "|":
            tokens.pop()  # the alternative after `|` is left out
        elif token != "|" or tokens:
            tokens.append(token)
    lines: list[list[str]] = [[]]
    for i, token in enumerate(tokens):
        choices = re.fullmatch(r"\{(.+)\}", token)
        options = choices.group(1).split("|") if choices else [token]
        if choices and i and tokens[i - 1].startswith("-"):
            options = options[:1]
        lines = [[*line, option] for line in lines for option in options]
    return [[_value(line, i, known) for i in range(len(line))] for line in lines]


def _value(line: list[str], i: int, known: dict[str, str]) -> str:
    """The token itself, or what to type for a placeholder (an upper-case metavar)."""
    token = line[i]
    if not token[0].isupper():
        return token
    words = [w for w in line[:i] if not w.startswith("-") and not w[0].isupper()]
    keys = [f"{w} {token}" for w in reversed(words)] + [line[i - 1], token]
    return next(known[k] for k in keys if k in known)


def test_every_synopsis_command_runs_on_the_demo(demo, tmp_path, tiny_model, capsys) -> None:
    from flows.synopsis import synopsis

    known = values(demo, tmp_path, tiny_model)
    ran = []
    for words in in_order(commands(synopsis(build_parser()))):
        for line in fill(words, known):
            result = run_cli(capsys, *line)
            assert result.status == 0, (line, result.line)
            ran.append(" ".join(line[:2]))
    assert {"run pool", "run video", "serve -c", "nearmiss eval", "nearmiss suggest",
            "heads convert", "export labelstudio", "export fiftyone",
            "import labelstudio"} <= set(ran)  # fmt: skip


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_before_or_after_the_command(where, capsys) -> None:
    """Defect: `--verbose` was only accepted before the subcommand."""
    args = ["ls", "/nowhere/at/all"]
    args = ["-v", *args] if where == "before" else [*args, "-v"]
    from flows.cli import build_parser as parser

    assert parser().parse_args(args).verbose is True
    assert parser().parse_args(["ls", "/x"]).verbose is False
