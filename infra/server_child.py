"""`python -m infra.server_child PARENT_PID ARGS...`: run `prefect ARGS...`, and end it (and
its process group) as soon as the process that started it is gone, SIGKILL included.

A temporary Prefect server belongs to the run that started it. Started in its own session
(so that Ctrl-C in a terminal reaches the run first, which then stops it cleanly), it would
otherwise outlive a run that is killed outright. A watchdog thread notices that the parent
changed (the orphan is re-parented) and terminates the group.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
import time

POLL_S = 0.5
GRACE_S = 10.0


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_S)
    os.killpg(0, signal.SIGTERM)  # our group: the server and anything it started
    time.sleep(GRACE_S)
    os._exit(1)


def main() -> None:
    parent = int(sys.argv[1])
    sys.argv = ["prefect", *sys.argv[2:]]
    threading.Thread(target=_watch, args=(parent,), daemon=True, name="parent-watch").start()
    if os.getppid() != parent:  # the parent died while we started
        os._exit(1)
    runpy.run_module("prefect", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
