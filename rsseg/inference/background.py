"""Overlapping I/O with compute: a prefetching iterator and a bounded background worker.

GDAL reads and writes, and most numpy work, release the GIL, so reading the next windows and
writing finished rows in threads runs beside the model. Both helpers keep at most ``depth`` items
in flight (memory stays bounded) and re-raise a worker's exception in the calling thread.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate ``items`` in a background thread, up to ``depth`` items ahead of the consumer.

    An exception raised while producing is re-raised here, at the item where it happened. If the
    consumer stops early (break, exception), the producer thread is told to stop and joined.
    """
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if not _put(slots, (item, None), stop):
                    return
        except BaseException as err:  # handed to the consumer, which re-raises it
            _put(slots, (_DONE, err), stop)
            return
        _put(slots, (_DONE, None), stop)

    thread = threading.Thread(target=produce, name="rsseg-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, err = slots.get()
            if err is not None:
                raise err
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        thread.join()


def _put(slots: queue.Queue, entry: tuple, stop: threading.Event) -> bool:
    """Put ``entry`` unless ``stop`` is set first; True when it was put."""
    while not stop.is_set():
        try:
            slots.put(entry, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


class BackgroundWorker:
    """Runs submitted calls one after another in one thread, at most ``depth`` pending.

    ``submit`` blocks while ``depth`` calls are pending and re-raises the first failure; leaving
    the ``with`` block waits for every call (and re-raises a failure), unless the block itself
    raised, in which case the pending calls are cancelled.
    """

    def __init__(self, depth: int = 2) -> None:
        self.depth = depth
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rsseg-writer")
        self._pending: deque[Future] = deque()

    def submit(self, fn: Callable[..., object], *args: object) -> None:
        while len(self._pending) >= self.depth:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(fn, *args))

    def __enter__(self) -> BackgroundWorker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                while self._pending:
                    self._pending.popleft().result()
        finally:
            for future in self._pending:
                future.cancel()
            self._pool.shutdown(wait=True)
