"""The dataset store and its tools: the format (`layout`), reading and writing (`io`), direct
chunk reads for the loaders (`chunk_files`), train/val splits, the importer and `inspect`.

The names below are the store's interface; the importer and inspector are imported from their
modules (they pull in more than a reader needs).
"""

from lensperf.store.io import (
    StoreWriter,
    check_output_path,
    open_store,
    preprocessing,
    read_rows,
    split_length,
    store_splits,
)
from lensperf.store.layout import (
    CLASSES,
    CLASSIFICATION,
    FORMAT_VERSION,
    LAYOUTS,
    SPLITS,
    SR,
    TRAINING_SPLITS,
    UNLABELLED,
    UNLABELLED_NAME,
    Layout,
    chunk_length,
)

__all__ = [
    "CLASSES", "CLASSIFICATION", "FORMAT_VERSION", "LAYOUTS", "SPLITS", "SR", "Layout",
    "StoreWriter", "check_output_path", "chunk_length", "open_store", "read_rows", "split_length",
    "store_splits", "TRAINING_SPLITS", "UNLABELLED", "UNLABELLED_NAME", "preprocessing",
]  # fmt: skip
