"""Dynamic batching: concurrent requests are queued and run together on one worker thread.

Torch never runs on the event loop: handlers await a future that the worker completes. Items are grouped by
a key (e.g. the CAM settings), so one batch only mixes requests that the model can serve in one call.
"""

import asyncio
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

P = TypeVar("P")
R = TypeVar("R")
# runs one group of payloads that share a key; returns one result per payload, in order
BatchFn = Callable[[Hashable, Sequence[P]], Sequence[R]]


class QueueFull(RuntimeError):
    """The bounded queue is full: the client should retry later (HTTP 503 with Retry-After)."""


@dataclass(frozen=True)
class Outcome(Generic[R]):
    """One item's result and where its time went."""

    value: R
    queue_ms: float
    inference_ms: float
    batch_size: int


@dataclass
class _Item:
    key: Hashable
    payload: Any
    future: Future
    enqueued: float


class DynamicBatcher(Generic[P, R]):
    """Collect up to `max_batch_size` items or `max_wait_ms` after the first, run them, resolve futures."""

    def __init__(
        self, fn: BatchFn, max_batch_size: int = 16, max_wait_ms: float = 5.0, max_queue: int = 64
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1 and max_wait_ms >= 0")
        self.fn = fn
        self.max_batch_size = int(max_batch_size)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.max_queue = int(max_queue)
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=self.max_queue)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._batch_sizes: Counter[int] = Counter()
        self._thread = threading.Thread(target=self._run, name="inference-worker", daemon=True)
        self._thread.start()

    def submit_nowait(self, key: Hashable, payload: P) -> Future:
        """Queue one item; raise QueueFull rather than grow without bound."""
        if self._stop.is_set():
            raise RuntimeError("the batcher is closed")
        future: Future = Future()
        try:
            self._queue.put_nowait(_Item(key, payload, future, time.perf_counter()))
        except queue.Full:
            raise QueueFull(f"{self.max_queue} items already queued") from None
        return future

    async def submit(self, key: Hashable, payload: P) -> Outcome[R]:
        """Queue one item and wait for its outcome without blocking the event loop."""
        return await asyncio.wrap_future(self.submit_nowait(key, payload))

    @property
    def queued(self) -> int:
        """Items waiting for the worker."""
        return self._queue.qsize()

    def stats(self) -> dict[str, Any]:
        """Batches run so far and how many items each had (a histogram: size -> count)."""
        with self._lock:
            sizes = dict(sorted(self._batch_sizes.items()))
        return {"batches_run": sum(sizes.values()), "batch_sizes": sizes, "queued": self.queued}

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker after its current batch; items still queued fail with RuntimeError."""
        self._stop.set()
        self._thread.join(timeout)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            item.future.set_exception(RuntimeError("the server is shutting down"))

    def _run(self) -> None:
        """The worker: take a first item, gather more until full or its wait is over, run the groups."""
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            items = [first]
            deadline = first.enqueued + self.max_wait
            while len(items) < self.max_batch_size:
                try:
                    items.append(self._queue.get(timeout=max(deadline - time.perf_counter(), 0.0)))
                except queue.Empty:
                    break
            groups: dict[Hashable, list[_Item]] = {}
            for item in items:
                groups.setdefault(item.key, []).append(item)
            for key, group in groups.items():
                self._run_group(key, group)

    def _run_group(self, key: Hashable, group: list[_Item]) -> None:
        """Run one call of `fn`; its error (a bug, not bad input) fails exactly this group's futures."""
        start = time.perf_counter()
        try:
            results = self.fn(key, [item.payload for item in group])
        except Exception as error:  # handed to the awaiting requests, which answer 500; the worker lives on
            log.exception("Batch of %d failed", len(group))
            for item in group:
                item.future.set_exception(error)
            return
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        with self._lock:
            self._batch_sizes[len(group)] += 1
        for item, result in zip(group, results, strict=True):
            queue_ms = (start - item.enqueued) * 1000.0
            item.future.set_result(Outcome(result, queue_ms, elapsed_ms, len(group)))
