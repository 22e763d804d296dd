"""The torch backend: a DataLoader over (epoch, batch) keys, workers opening the store lazily;
or, with in_memory=True, the whole split in RAM and batches built in the main process."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import DataLoader, Dataset, Sampler

from lensperf.data.loader import Loader, build_batch
from lensperf.errors import DataError


class _Batches(Dataset):
    """Item (epoch, batch) -> that batch in numpy; the epoch's order is cached per worker."""

    def __init__(self, loader: Loader):
        self.reader, self.plan = loader.reader, loader.plan
        self.augment, self.normalize = loader.augment, loader.normalize
        self._order_epoch, self._order = None, None

    def __getitem__(self, key):
        epoch, batch = key
        if self._order_epoch != epoch:
            self._order_epoch, self._order = epoch, self.plan.order(epoch)
        return build_batch(
            self.reader, self.plan, epoch, batch,
            augment=self.augment, normalize=self.normalize, order=self._order,
        )  # fmt: skip


class _Keys(Sampler):
    """Yields the (epoch, batch) keys of the loader's current position onwards."""

    def __init__(self, loader: Loader):
        self.loader = loader

    def __iter__(self):
        epoch, start = self.loader.epoch, self.loader.batch
        return iter([(epoch, b) for b in range(start, len(self.loader))])

    def __len__(self):
        return len(self.loader) - self.loader.batch


class TorchLoader(Loader):
    backend = "torch"

    def __init__(self, reader, plan, *, num_workers: int = 0, in_memory: bool = False, **kw):
        super().__init__(reader, plan, **kw)
        self.arrays = reader.read_all() if in_memory else None
        self._dataloader = None
        if not in_memory:
            self._dataloader = DataLoader(
                _Batches(self),
                sampler=_Keys(self),
                batch_size=None,
                num_workers=num_workers,
                persistent_workers=num_workers > 0,
                # forkserver: workers start clean, without the parent's zarr I/O threads.
                multiprocessing_context="forkserver" if num_workers > 0 else None,
                prefetch_factor=4 if num_workers > 0 else None,
            )

    def _batches(self, epoch: int, start: int) -> Iterator[dict]:
        if self.arrays is not None:
            order = self.plan.order(epoch)
            for b in range(start, len(self)):
                yield build_batch(
                    self.reader, self.plan, epoch, b, augment=self.augment,
                    normalize=self.normalize, order=order, arrays=self.arrays,
                )  # fmt: skip
            return
        try:
            yield from self._dataloader
        except Exception as error:  # `except DataError` would be looked up at interpreter exit
            if isinstance(error, DataError) or not isinstance(error, RuntimeError):
                raise
            # A worker that died (killed, out of memory) or raised: one line, not a traceback.
            first = str(error).strip().splitlines()[0]
            raise DataError(f"data loading failed ({self.reader.path}): {first}") from None

    def close(self) -> None:
        if self._dataloader is not None and self._dataloader._iterator is not None:
            self._dataloader._iterator._shutdown_workers()
