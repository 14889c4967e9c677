"""Helper processes for untrusted decoding (`tasks.isolation`): results come back, errors
keep their kind, a crash or a hang costs the call, never the caller."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from tasks.errors import InfraError, SampleError, is_infrastructure
from tasks.isolation import IsolatedError, blob_array, isolated

ECHO, PID = "tests.isolation_ops:echo", "tests.isolation_ops:pid"


def helper_pid() -> int:
    ((head, _),) = list(isolated(PID, {}, 120))
    return head["pid"]


def test_items_come_back_and_the_helper_is_reused(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tests.isolation_ops"):
        items = list(isolated(ECHO, {"n": 3}, 120))
    assert [head["k"] for head, _ in items] == [0, 1, 2]
    for head, (blob,) in items:
        assert np.array_equal(blob_array(head["array"], blob), np.full((2, 3), head["k"]))
    assert "echo 3" in caplog.text  # the helper's log record, re-emitted here
    first = helper_pid()
    assert first != os.getpid() and helper_pid() == first


@pytest.mark.parametrize(
    ("fail", "kind", "match"),
    [
        ("sample", SampleError, "bad_bytes: planted"),
        ("disk", InfraError, "No space left on device"),
        ("bug", IsolatedError, "KeyError"),
    ],
)
def test_errors_keep_their_kind(fail: str, kind: type, match: str) -> None:
    before = helper_pid()
    got = []
    with pytest.raises(kind, match=match) as err:
        got.extend(isolated(ECHO, {"n": 2, "fail": fail}, 120))
    assert len(got) == 2  # what came before the error was delivered
    assert is_infrastructure(err.value) is (fail == "disk")
    assert helper_pid() == before  # an error is an answer: the helper goes on


@pytest.mark.parametrize(
    ("fail", "detail"),
    [
        ("crash", "the decoder process died of SIGSEGV"),
        ("exit", "the decoder process exited with status 3"),
    ],
)
def test_a_dead_helper_costs_the_call(fail: str, detail: str) -> None:
    before = helper_pid()
    with pytest.raises(SampleError) as err:
        list(isolated(ECHO, {"n": 1, "fail": fail}, 120))
    assert (err.value.code, err.value.detail) == ("decoder_crash", detail)
    after = helper_pid()  # a new helper serves the next call
    assert after != before


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_hang_is_timed_out() -> None:
    """The helper sleeps for an hour: the wait for its next message ends after 2 s."""
    got = []
    with pytest.raises(SampleError) as err:
        got.extend(isolated(ECHO, {"n": 1, "fail": "hang"}, 2.0, timeout_code="decode_timeout"))
    assert err.value.code == "decode_timeout"
    assert "no progress for 2s" in err.value.detail
    assert gone(got[0][0]["pid"])  # the hung helper was ended
    assert helper_pid() > 0  # and the next call is served


def test_a_caller_that_stops_reading_leaves_no_helper_behind() -> None:
    items = isolated(ECHO, {"n": 5}, 120)
    head, _ = next(items)
    items.close()  # mid-conversation: the helper cannot be reused, it is ended
    assert gone(head["pid"])
    assert helper_pid() != head["pid"]


def test_only_project_operations_run() -> None:
    with pytest.raises(IsolatedError, match="not allowed"):
        list(isolated("os:system", {"command": "true"}, 120))
