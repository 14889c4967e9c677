"""What a partition is called: an ISO calendar date, `YYYY-MM-DD`.

Partition names become folders that `curate ls`, the consumer API, the dataset card and the
exports sort and compare as dates, and `{date}` in an input URI is replaced by them. A name
that is not a real date (`2026-13-01`) would publish where date ranges never look, and one
with a slash (`12/01/2026`) would publish into nested folders nobody lists. So every command
and flow checks a partition (or a date bound) with `check_date` before anything is read.
"""

from __future__ import annotations

import datetime as dt
import re

DATE_FORMAT = "YYYY-MM-DD"
DATE_TOKEN = "{date}"
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class PartitionError(ValueError):
    """A partition name or date bound that is not a calendar date (exit status 2, like a
    bad config: the command line is wrong). Light on purpose: the consumer API raises it."""


def check_date(value: str, what: str = "--partition") -> str:
    """`value` when it is a real calendar date written `YYYY-MM-DD`, else a one-line
    PartitionError naming `what` (an option or a config key) and what to write instead."""
    text = str(value)
    if not _ISO_DATE.fullmatch(text):
        raise PartitionError(
            f"{what} {text!r} is not a date written {DATE_FORMAT} "
            f"(partitions are calendar dates, e.g. 2026-01-31)"
        )
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError as err:
        raise PartitionError(f"{what} {text!r} is not a calendar date ({err})") from None


def check_optional_date(value: str | None, what: str) -> str | None:
    """`check_date` for an optional bound (`--start`, `--end`); None passes."""
    return None if value is None else check_date(value, what)


def undated(pattern: str | list[str]) -> list[str]:
    """The input patterns without `{date}`: they read the same files for every partition."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    return [p for p in patterns if DATE_TOKEN not in p]
