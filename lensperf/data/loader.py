"""The loader every training command uses: batches of torch tensors from a store.

A `Loader` walks its `EpochPlan` and hands out dicts of tensors on `device`: `image` (B, 1, H, W)
and `label` (B,) for classification stores, `lr` and `hr` for SR stores, and `index` (B,), the
samples' rows in the split. `state_dict()` after a batch names the next one, so a resumed run
continues at exactly that batch. Backends differ only in who builds the batch (`_batches`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from lensperf.data.augment import flag_codes, take
from lensperf.data.plan import EpochPlan
from lensperf.data.reader import StoreReader
from lensperf.errors import DataError


def build_batch(
    reader: StoreReader,
    plan: EpochPlan,
    epoch: int,
    batch: int,
    *,
    augment: bool,
    standardise: tuple[float, float] | None,
    order: np.ndarray | None = None,
    arrays: dict | None = None,
) -> dict[str, np.ndarray]:
    """One batch in numpy: rows from the store (or from `arrays` held in memory), each image
    given the plan's symmetry and standardised as it is gathered, LR and HR alike."""
    indices = plan.batch_indices(epoch, batch, order)
    codes = flag_codes(plan.augment_flags(epoch, batch, len(indices))) if augment else None
    if arrays:
        rows = {
            k: take(v, indices, codes, standardise) if k in reader.layout.images else v[indices]
            for k, v in arrays.items()
        }
    else:
        rows = reader.read(indices, codes, standardise)
    names = reader.layout.batch_names
    out = {names[k]: v for k, v in rows.items() if k in names}
    out["index"] = indices
    return out


class StoreBatches(Dataset):
    """Item (epoch, batch) -> that batch in numpy (`build_batch`); the latest epoch's order is
    kept, since every batch of an epoch needs it. Safe to call from several threads. Also a
    torch Dataset, for users who want their own DataLoader (with batch_size=None)."""

    def __init__(
        self,
        reader: StoreReader,
        plan: EpochPlan,
        *,
        augment: bool,
        standardise: tuple[float, float] | None,
        arrays: dict | None = None,
    ):
        self.reader, self.plan, self.arrays = reader, plan, arrays
        self.augment, self.standardise = augment, standardise
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, order), swapped whole

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, np.ndarray]:
        epoch, batch = key
        cached = self._order
        if cached is None or cached[0] != epoch:
            cached = self._order = (epoch, self.plan.order(epoch))
        return build_batch(
            self.reader, self.plan, epoch, batch, augment=self.augment,
            standardise=self.standardise, order=cached[1], arrays=self.arrays,
        )  # fmt: skip


class Loader:
    backend = "base"

    def __init__(
        self,
        reader: StoreReader,
        plan: EpochPlan,
        *,
        device: str | torch.device = "cpu",
        augment: bool = False,
        standardise: tuple[float, float] | None = None,
    ):
        self.reader = reader
        self.plan = plan
        self.device = torch.device(device)
        self.augment = augment
        self.standardise = standardise
        self.epoch = 0
        self.batch = 0  # the next batch of `epoch` to hand out

    def __len__(self) -> int:
        return len(self.plan)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.plan.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.plan.seed) != self.plan.seed:
            raise DataError(f"loader state is for seed {state['seed']}, not {self.plan.seed}")
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.batch = epoch, 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """The rest of the current epoch; afterwards the loader stands at the next epoch."""
        for batch_np in self._batches(self.epoch, self.batch):
            self.batch += 1
            yield {
                k: torch.as_tensor(v).to(self.device, non_blocking=True)
                for k, v in batch_np.items()
            }
        self.epoch, self.batch = self.epoch + 1, 0

    def _batches(self, epoch: int, start: int) -> Iterator[dict]:
        raise NotImplementedError

    def close(self) -> None:
        pass
