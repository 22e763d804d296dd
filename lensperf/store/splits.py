"""Seeded, stratified train/val splits shared by the simulator and the importer."""

from __future__ import annotations

import numpy as np

from lensperf.store.layout import UNLABELLED


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) into `labels`: each class split by `val_fraction`, then each split
    shuffled so that consecutive samples (and so each stored chunk) mix the classes.

    A class of two or more samples gets at least one validation sample when val_fraction > 0.
    Unlabelled samples (UNLABELLED) all go to train: validation is scored against labels.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, 0x5E1A])
    train, val = [np.flatnonzero(labels == UNLABELLED)], []
    for label in np.unique(labels[labels != UNLABELLED]):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = int(round(len(members) * val_fraction))
        if val_fraction > 0 and len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        val.append(members[:n_val])
        train.append(members[n_val:])
    train_idx = rng.permutation(np.concatenate(train))
    val_idx = rng.permutation(np.concatenate(val)) if val else np.zeros(0, np.int64)
    return train_idx.astype(np.int64), val_idx.astype(np.int64)
