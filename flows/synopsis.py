"""The README's CLI synopsis, rendered from the argparse parser so the two cannot drift.

`python -m flows.synopsis` prints it; `tests/flows/test_first_hour.py` checks that the
README holds exactly this text and runs every line of it against the demo.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

WIDTH = 96
INDENT = 4


def _choices(action: argparse.Action) -> str:
    return "{" + "|".join(str(c) for c in action.choices or ()) + "}"


def _option(action: argparse.Action) -> str:
    flag = action.option_strings[0]
    if action.nargs == 0:  # store_true / store_const
        return flag
    value = _choices(action) if action.choices else (action.metavar or action.dest.upper())
    more = " ..." if isinstance(action, argparse._AppendAction) else ""
    return f"{flag} {value}{more}"


def _words(parser: argparse.ArgumentParser) -> list[str]:
    """The command's arguments in the order they were added, optional ones in brackets."""
    grouped = {a: g for g in parser._mutually_exclusive_groups for a in g._group_actions}
    words, seen = [], set()
    for action in parser._actions:
        skip = isinstance(action, argparse._HelpAction) or action.dest == "verbose"
        if skip or action in seen or isinstance(action, argparse._SubParsersAction):
            continue
        if not action.option_strings:
            words.append(_choices(action) if action.choices else str(action.metavar))
            continue
        group = grouped.get(action)
        members = group._group_actions if group else [action]
        seen.update(members)
        text = " | ".join(_option(a) for a in members)
        words.append(text if action.required else f"[{text}]")
    return words


def _commands(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, str, list]]:
    """(command path, its help, its argument words) of every leaf command, in parser order."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {a.dest: a.help for a in action._choices_actions}
        for name, sub in action.choices.items():
            if _has_sub(sub):
                yield from _commands(sub, f"{path} {name}")
            else:
                yield f"{path} {name}", helps.get(name) or "", _words(sub)


def _has_sub(parser: argparse.ArgumentParser) -> bool:
    return any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


def _wrap(head: str, words: list[str]) -> list[str]:
    lines, line = [], head
    for word in words:
        if len(line) + 1 + len(word) > WIDTH and line.strip():
            lines.append(line)
            line = " " * INDENT + word
        else:
            line = f"{line} {word}"
    return [*lines, line]


def synopsis(parser: argparse.ArgumentParser) -> str:
    """One block: per command its help as a comment, then its arguments, wrapped."""
    out = ["# every command: -v/--verbose (debug logs, a traceback on failure), before or after it"]
    for path, text, words in _commands(parser, parser.prog):
        out += [f"# {text}", *_wrap(path, words)]
    return "\n".join(out) + "\n"


if __name__ == "__main__":  # pragma: no cover
    from flows.cli import build_parser

    print(synopsis(build_parser()), end="")
