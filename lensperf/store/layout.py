"""The facts of the store format, in one place: kinds, classes, splits, arrays, chunking, and the
names the arrays take in a loader's batch.

    DIR.zarr/   attrs: lensperf_format, kind, classes, image_size, source, config, seed
      train/images (N, 1, H, W) float32 in [0, 1]   train/labels (N,) int64, -1: unlabelled
      train/axion_mass (N,) float32, NaN where not axion
      val/...                                         (SR stores: train/lr, train/hr, val/...)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FORMAT_VERSION = 1
# Attribute of stores that hold every chunk file (since lensperf 0.1): a missing one is damage.
ALL_CHUNKS_WRITTEN = "all_chunks_written"
CLASSIFICATION = "classification"
SR = "sr"
# The splits a store may hold: training needs train and val; a held-out test split is optional,
# and a store imported whole for scoring may hold only it.
SPLITS = ("train", "val", "test")
TRAINING_SPLITS = ("train", "val")
# The classes of a classification store, in label order (label i is CLASSES[i]).
CLASSES = ("no_sub", "cdm", "axion")
# The label of an image whose class is not known (train split only): pretraining and a teacher's
# distillation (`distill_unlabelled`) use it; cross-entropy and evaluation skip it.
UNLABELLED = -1
UNLABELLED_NAME = "unlabelled"  # its name where classes are named (data.classes, inspect)
# About 1 MiB of raw data per chunk: small enough that a random batch reads little it does not
# need, large enough that an epoch is a few thousand files rather than 89k.
CHUNK_TARGET_BYTES = 1 << 20


@dataclass(frozen=True)
class Layout:
    """The arrays of one split of a store of one kind."""

    arrays: tuple[str, ...]  # every array, the first one fixing the split's length
    images: tuple[str, ...]  # the arrays that hold images (augmented and standardised)
    batch_names: dict[str, str]  # array -> its key in a loader's batch (the rest stay out)


LAYOUTS = {
    CLASSIFICATION: Layout(
        arrays=("images", "labels", "axion_mass"),
        images=("images",),
        batch_names={"images": "image", "labels": "label"},
    ),
    SR: Layout(arrays=("lr", "hr"), images=("lr", "hr"), batch_names={"lr": "lr", "hr": "hr"}),
}


def chunk_length(sample_shape: tuple[int, ...], itemsize: int = 4) -> int:
    """Samples per chunk for samples of `sample_shape`: a power of two near CHUNK_TARGET_BYTES."""
    sample_bytes = int(np.prod(sample_shape)) * itemsize
    n = max(1, CHUNK_TARGET_BYTES // sample_bytes)
    return 1 << (n.bit_length() - 1)
