"""Batches built ahead on threads, handed out in order.

Building a batch is chunk reads and a compiled gather, both of which release the GIL:
threads overlap them with the training step and with each other, and a batch never crosses
a process boundary. On the 2-core CPU a torch DataLoader's worker processes topped out near
40k images/s on 4 MB batches of nothing at all, the cost of moving each batch through shared
memory.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

Key = tuple[int, int]  # (epoch, batch)


class Prefetcher:
    """`get(key)` returns build(key); the keys after it are built ahead on `threads` threads.

    `next_key` gives the key that follows one (the next batch, or the next epoch's first), so
    an epoch boundary does not stall. Asking for a key that was not expected (a resume, a new
    epoch started early) drops what was built ahead and starts again from there.
    """

    def __init__(
        self,
        build: Callable[[Key], dict],
        next_key: Callable[[Key], Key],
        *,
        threads: int,
        depth: int | None = None,
    ):
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.build, self.next_key = build, next_key
        self.depth = depth if depth is not None else 2 * threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="lensperf-loader")
        self._pending: dict[Key, Future] = {}
        self._last: Key | None = None  # the furthest key submitted

    def get(self, key: Key) -> dict:
        future = self._pending.pop(key, None)
        if future is None:
            self._drop()
            future = self._submit(key)
        self._top_up(key)
        return future.result()

    def _submit(self, key: Key) -> Future:
        self._last = key
        return self._pool.submit(self.build, key)

    def _top_up(self, key: Key) -> None:
        last = key if self._last is None else self._last
        while len(self._pending) < self.depth:
            last = self.next_key(last)
            self._pending[last] = self._submit(last)

    def _drop(self) -> None:
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        self._last = None

    def close(self) -> None:
        self._drop()
        self._pool.shutdown(wait=True, cancel_futures=True)
