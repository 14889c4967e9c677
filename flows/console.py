"""What a `curate` command prints on the terminal.

Progress and results are INFO lines from our loggers (and Prefect's flow-run lines). A
failure is reported once, as the command's last line on stderr (`flows.cli`): without
`--verbose` no traceback reaches the console and Prefect's own failure records (task
"Finished in state Failed", flow "Encountered exception") stay out of it. They still reach
the Prefect API, where the run's page shows them in full.
"""

from __future__ import annotations

import logging
import sys

OUR_LOGGERS = ("flows", "tasks", "infra")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _FirstLine(logging.Formatter):
    """Another formatter's output without traceback, stack or continuation lines."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__(FORMAT)
        self.inner = inner or logging.Formatter(FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return self.inner.format(record).split("\n", 1)[0]
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


class _NoPrefectFailures(logging.Filter):
    """Prefect's records about a failed task or flow: the CLI's last line says it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("prefect"):
            return True
        if record.levelno >= logging.ERROR:
            return False
        message = record.getMessage()
        return not message.startswith(("Finished in state Failed", "Finished in state Crashed"))


def _console_handlers() -> list[logging.Handler]:
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    found: list[logging.Handler] = []
    for lg in loggers:
        for handler in lg.handlers:
            stream = getattr(handler, "stream", None)
            is_console = type(handler).__name__ == "PrefectConsoleHandler" or stream in (
                sys.stderr,
                sys.stdout,
            )
            if is_console and handler not in found:
                found.append(handler)
    return found


def setup(verbose: bool) -> None:
    """Our loggers at INFO (DEBUG with --verbose); one-line failures unless verbose.

    Call again after importing Prefect: its logging setup adds console handlers.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format=FORMAT)
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per API call otherwise
    if verbose:
        return
    for handler in _console_handlers():
        if not isinstance(handler.formatter, _FirstLine):
            handler.setFormatter(_FirstLine(handler.formatter))
        if not any(isinstance(f, _NoPrefectFailures) for f in handler.filters):
            handler.addFilter(_NoPrefectFailures())
