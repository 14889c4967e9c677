"""Exit statuses of `curate` and the one line a failed command ends with.

One taxonomy for every command: a failure's class (or one of its bases) decides its status,
as the manual's "Exit status" table (docs/cli.md) lists them (`tests/flows/test_exits.py` walks that
table). The line names the cause and what to do; exception names of libraries and of Python
itself never reach it (`--verbose` shows the traceback).
"""

from __future__ import annotations

OK, FAILED, USAGE, INPUT, HELD, LOCKED = 0, 1, 2, 3, 4, 5
INTERRUPTED, TERMINATED = 130, 143

# failure class (its own name or a base class's) -> exit status; anything else is FAILED
STATUS = {
    "ConfigError": USAGE,
    "CredentialError": USAGE,
    "UsageError": USAGE,
    "PartitionError": USAGE,
    "InputError": INPUT,
    "MetadataError": INPUT,
    "ExportError": INPUT,
    "ReviewExportError": INPUT,
    "LabelError": INPUT,
    "FitError": INPUT,
    "HeadMismatch": INPUT,
    "FileNotFoundError": INPUT,
    "GateHeld": HELD,
    "PartitionLocked": LOCKED,
    "StoreError": INPUT,  # a store that kept failing after its retries: unreachable
}
# what to do about it, appended to the line (the most specific class that has one)
FIXES = {
    "InputError": "check the input URIs and storage_options",
    "NothingPublished": "",  # its messages say what was found and what to pass
    "MetadataError": "check pool.balance.metadata",
    "ModelLoadError": "check model.name and model.pretrained (a path, URL or open_clip tag)",
    "PartitionLocked": "wait for that run; a dead run's lock is taken over after its lease",
    "LockLost": "another run took the partition over; re-run when it has finished",
    "LabelError": "the labels CSV needs video,start_s,end_s,label rows",
    "FileNotFoundError": "check the path",
    "StoreError": "re-run when the store answers again: finished work is reused from the cache",
    "ServerError": "see the server log above; set PREFECT_API_URL to use a running server",
    "ApiGone": "start the Prefect server again or point PREFECT_API_URL at one, then re-run",
}
# messages already phrased for the user: no class name in front of them
PLAIN = ("ConfigError", "CredentialError", "UsageError", "PartitionError", "NothingPublished")
PROJECT = ("flows", "tasks", "schemas", "infra", "clip_curate")
UNEXPECTED_FIX = "re-run with --verbose for the traceback"
IO_FIX = "check the store or disk, then re-run; --verbose shows where"


class UsageError(ValueError):
    """The command line names something it cannot use (one line saying what to pass)."""


def _names(err: BaseException) -> list[str]:
    return [cls.__name__ for cls in type(err).__mro__]


def exit_status(err: BaseException) -> int:
    """The exit status (docs/cli.md) for a failure of this kind."""
    return next((STATUS[n] for n in _names(err) if n in STATUS), FAILED)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0].strip() if text else ""


def is_ours(err: BaseException) -> bool:
    return type(err).__module__.split(".")[0] in PROJECT


def failure_text(err: BaseException) -> str:
    """The failure in one line, without the `curate:` prefix (a backfill row's detail)."""
    names, line = _names(err), _first_line(err)
    if is_ours(err):
        if names[0] not in PLAIN:
            line = f"{names[0]}: {line}" if line else names[0]
    elif isinstance(err, FileNotFoundError) and err.filename:
        line = f"not found: {err.filename}"
    elif isinstance(err, OSError):
        line = f"I/O failure: {err.strerror or line or 'no message'}"
    else:  # a library's or Python's own exception: its words, never its name
        line = f"unexpected failure: {line or 'no message'}"
    fix = next((FIXES[n] for n in names if n in FIXES), None)
    if fix is None and not is_ours(err):
        fix = IO_FIX if isinstance(err, OSError) else UNEXPECTED_FIX
    return f"{line} ({fix})" if fix else line


def failure_line(err: BaseException) -> tuple[str, int]:
    """The one line on stderr for a failed command, and its exit status."""
    return f"curate: {failure_text(err)}", exit_status(err)


def combined_status(statuses: list[int]) -> int:
    """One status for several failures (a backfill's dates): theirs when they agree, else 1."""
    if not statuses:
        return OK
    return statuses[0] if len(set(statuses)) == 1 else FAILED
