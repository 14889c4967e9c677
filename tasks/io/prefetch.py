"""Run a producer iterator in a background thread behind a bounded queue.

Decoding (PIL, decord, tar reading) releases the GIL, so a producer thread overlaps input
work with model compute; the bound keeps memory at `depth` items whatever the input size.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


class _Failure:
    def __init__(self, err: BaseException) -> None:
        self.err = err


def prefetch(items: Iterable[T], depth: int = 2, name: str = "prefetch") -> Iterator[T]:
    """Yield `items` produced ahead in a thread; exceptions re-raise in the consumer."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(item)
            q.put(_DONE)
        except BaseException as err:
            q.put(_Failure(err))

    thread = threading.Thread(target=produce, daemon=True, name=name)
    thread.start()
    try:
        while (item := q.get()) is not _DONE:
            if isinstance(item, _Failure):
                raise item.err
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)
