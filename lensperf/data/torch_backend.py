"""The torch backend: batches built in this process, ahead of time on `num_workers` threads
(see prefetch.py for why threads, not worker processes), from the store or, with
in_memory=True, from the whole split held in RAM. (`loader.dataset`, a `StoreBatches`, is the
same batches as a torch Dataset, for users who want their own DataLoader.)"""

from __future__ import annotations

from collections.abc import Iterator

from lensperf.data.loader import Loader, StoreBatches
from lensperf.data.prefetch import Prefetcher


class TorchLoader(Loader):
    backend = "torch"

    def __init__(self, reader, plan, *, num_workers: int = 0, in_memory: bool = False, **kw):
        super().__init__(reader, plan, **kw)
        self.dataset = StoreBatches(
            reader, plan, augment=self.augment, standardise=self.standardise,
            arrays=reader.read_all() if in_memory else None,
        )  # fmt: skip
        self.num_workers = num_workers
        self._prefetcher = None

    def _batches(self, epoch: int, start: int) -> Iterator[dict]:
        if self.num_workers > 0 and self._prefetcher is None and len(self) > 0:
            self._prefetcher = Prefetcher(
                self.dataset.__getitem__, self.plan.next_key, threads=self.num_workers
            )
        for batch in range(start, len(self)):
            key = (epoch, batch)
            yield self._prefetcher.get(key) if self._prefetcher else self.dataset[key]

    def close(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None
