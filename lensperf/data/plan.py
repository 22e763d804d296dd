"""Which samples each batch holds: deterministic per (seed, epoch), chunk-aligned, sharded.

Each epoch, the store's chunks are put in a random order and cut into windows of a few chunks;
samples are shuffled within each window. Batches then draw from a few consecutive chunks (reads
stay chunk-aligned) while the order still changes every epoch. Shard s of S takes every S-th
sample of that order: shards are disjoint, their union is the split, and they differ in length
by at most one sample. Augmentation choices are drawn per batch from (seed, epoch, batch), so a
resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WINDOW_CHUNKS = 8  # chunks shuffled together: 512 images at 64x64, 64 SR pairs at 150x150
AUGMENT_STREAM = 0xA06


@dataclass(frozen=True)
class EpochPlan:
    n: int  # samples in the split
    chunk: int  # samples per store chunk
    batch_size: int
    seed: int = 0
    shuffle: bool = True
    shard_id: int = 0
    num_shards: int = 1
    drop_last: bool = False
    keep: np.ndarray | None = None  # (n,) bool: visit only these samples (e.g. one class)

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not 0 <= self.shard_id < self.num_shards:
            raise ValueError(
                f"shard_id {self.shard_id} is not in [0, num_shards={self.num_shards})"
            )

    def order(self, epoch: int) -> np.ndarray:
        """This shard's sample indices for `epoch`, in visiting order."""
        if not self.shuffle:
            full = np.arange(self.n)
        else:
            rng = np.random.default_rng([self.seed, epoch])
            n_chunks = -(-self.n // self.chunk)
            chunks = rng.permutation(n_chunks)
            parts = []
            for start in range(0, n_chunks, WINDOW_CHUNKS):
                window = np.concatenate(
                    [
                        np.arange(c * self.chunk, min((c + 1) * self.chunk, self.n))
                        for c in chunks[start : start + WINDOW_CHUNKS]
                    ]
                )
                parts.append(rng.permutation(window))
            full = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        if self.keep is not None:
            full = full[self.keep[full]]  # a filter keeps the chunk-local order
        return full[self.shard_id :: self.num_shards]

    def shard_length(self) -> int:
        members = self.n if self.keep is None else int(self.keep.sum())
        return len(range(self.shard_id, members, self.num_shards))

    def __len__(self) -> int:
        """Batches per epoch (the same every epoch)."""
        n = self.shard_length()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def next_key(self, key: tuple[int, int]) -> tuple[int, int]:
        """The (epoch, batch) after `key`: the next batch, or the next epoch's first."""
        epoch, batch = key
        return (epoch, batch + 1) if batch + 1 < len(self) else (epoch + 1, 0)

    def batch_indices(self, epoch: int, batch: int, order: np.ndarray | None = None) -> np.ndarray:
        order = self.order(epoch) if order is None else order
        return order[batch * self.batch_size : (batch + 1) * self.batch_size]

    def augment_flags(self, epoch: int, batch: int, size: int) -> np.ndarray:
        """(size, 3) uint8: horizontal flip, vertical flip, transpose. Together they give the
        eight symmetries of a square (the dihedral group), all valid for lens images."""
        rng = np.random.default_rng([self.seed, epoch, batch, AUGMENT_STREAM])
        return rng.integers(0, 2, size=(size, 3), dtype=np.uint8)
