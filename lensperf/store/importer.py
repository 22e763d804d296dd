"""Import DeepLense folders (.npy or FITS files) into a store.

`import_plan.py` says which trees are understood and which split each file goes to;
`image_files.py` reads one file. Files are read in output order, one store chunk at a time (on
a few threads: file reads release the GIL), so memory stays bounded by the chunk size whatever
the dataset size. A bad file stops the import with a line naming it, or with `skip_bad` is
counted and left out; either way nothing is written unless the whole store is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lensperf.errors import DataError
from lensperf.progress import progress
from lensperf.store.image_files import BadFile, read_image
from lensperf.store.import_plan import ImportPlan, detect_kind, plan_import
from lensperf.store.io import StoreWriter
from lensperf.store.layout import CLASSES, CLASSIFICATION, SR, chunk_length

READ_THREADS = 4  # np.load releases the GIL during file reads


@dataclass
class ImportReport:
    out: Path
    kind: str
    counts: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


@dataclass
class _Layout:
    """What one sample of an import becomes: arrays (name -> (shape of a row, dtype)), the
    store's attributes, and `read(i)`, the rows of item i."""

    arrays: dict[str, tuple[tuple[int, ...], str]]
    attrs: dict
    read: Callable[[int], dict[str, np.ndarray]]


def _classification(plan: ImportPlan, normalise: bool, skip_bad: bool) -> _Layout:
    files, labels = plan.items, plan.labels
    size = _first_readable(files, lambda f: read_image(f, normalise=normalise)[0].shape[0],
                           skip_bad)  # fmt: skip

    def read(i: int) -> dict[str, np.ndarray]:
        image, mass = read_image(files[i], normalise=normalise)
        if image.shape != (size, size):
            raise BadFile(files[i], f"shape {image.shape} differs from {(size, size)}")
        return {"images": image[None], "labels": labels[i], "axion_mass": np.float32(mass)}

    arrays = {"images": ((1, size, size), "float32"), "labels": ((), "int64"),
              "axion_mass": ((), "float32")}  # fmt: skip
    return _Layout(arrays, {"classes": list(CLASSES), "image_size": size}, read)


def _super_resolution(plan: ImportPlan, normalise: bool, skip_bad: bool) -> _Layout:
    pairs = plan.items

    def sizes(pair) -> tuple[int, int]:
        return tuple(read_image(p, normalise=normalise)[0].shape[0] for p in pair)

    lr_size, hr_size = _first_readable(pairs, sizes, skip_bad)
    if hr_size % lr_size or hr_size // lr_size < 2:
        raise DataError(f"{pairs[0][1]}: HR size {hr_size} is not a multiple of LR size {lr_size}")

    def read(i: int) -> dict[str, np.ndarray]:
        rows = {}
        lr_path, hr_path = pairs[i]
        for name, path, size in (("lr", lr_path, lr_size), ("hr", hr_path, hr_size)):
            image, _ = read_image(path, normalise=normalise)
            if image.shape != (size, size):
                raise BadFile(path, f"shape {image.shape} differs from {(size, size)}")
            rows[name] = image[None]
        return rows

    arrays = {"lr": ((1, lr_size, lr_size), "float32"), "hr": ((1, hr_size, hr_size), "float32")}
    attrs = {"lr_size": lr_size, "hr_size": hr_size, "factor": hr_size // lr_size}
    return _Layout(arrays, attrs, read)


def import_tree(
    src: str | Path,
    out: str | Path,
    *,
    kind: str | None = None,
    split: str | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    skip_bad: bool = False,
    normalise: bool = False,
    overwrite: bool = False,
    compress: bool = False,
) -> ImportReport:
    """Import the tree `src` into the store `out`: a classification or super-resolution tree
    (detected unless `kind` says), split as import_plan.py describes. `normalise` min-max
    scales every image to [0, 1] (without it, images must be in [0, 1] already)."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise DataError(f"{src} is not a directory")
    if not 0 <= val_fraction < 1:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    kind = kind or detect_kind(src)
    report = ImportReport(out=out, kind=kind)
    plan = plan_import(src, kind, split=split, val_fraction=val_fraction, seed=seed,
                       skip_bad=skip_bad, skipped=report.skipped)  # fmt: skip
    layout = (_super_resolution if kind == SR else _classification)(plan, normalise, skip_bad)
    # chunks sized by the largest sample (HR images in an SR store)
    chunk = chunk_length(max((shape for shape, _ in layout.arrays.values()), key=np.prod))
    with StoreWriter(out, kind=kind, overwrite=overwrite, compress=compress) as writer:
        writer.set_attrs(
            **layout.attrs,
            source=f"imported: {src.resolve()}",
            config={
                "val_fraction": val_fraction,
                "normalise": normalise,
                "skip_bad": skip_bad,
                "split": split,
            },  # fmt: skip
            preprocessing={"minmax": normalise},
            seed=seed,
        )
        unit = "pair" if kind == SR else "file"
        with progress(total=len(plan.items), desc="import", unit=unit) as bar:
            for name, order in plan.splits.items():
                sink = _ChunkedSplitWriter({
                    array: writer.create(name, array, (len(order), *shape), dtype, chunk)
                    for array, (shape, dtype) in layout.arrays.items()
                }, chunk)  # fmt: skip
                for rows in _read_all(list(order), layout.read, skip_bad, report.skipped, bar,
                                      chunk):  # fmt: skip
                    sink.add(**rows)
                report.counts[name] = sink.finish()
        _check_counts(report)
    return report


# ---------------------------------------------------------------- writing


class _ChunkedSplitWriter:
    """Appends good samples to a split's arrays a chunk at a time; `finish` trims the arrays to
    what was written (less than planned when bad files were skipped)."""

    def __init__(self, arrays: dict, chunk: int):
        self.arrays = arrays
        self.chunk = chunk
        self.buffer: dict[str, list] = {name: [] for name in arrays}
        self.written = 0

    def add(self, **values) -> None:
        for name, value in values.items():
            self.buffer[name].append(value)
        if len(next(iter(self.buffer.values()))) == self.chunk:
            self.flush()

    def flush(self) -> None:
        n = len(next(iter(self.buffer.values())))
        if n == 0:
            return
        for name, rows in self.buffer.items():
            self.arrays[name][self.written : self.written + n] = np.stack(rows)
            rows.clear()
        self.written += n

    def finish(self) -> int:
        self.flush()
        for array in self.arrays.values():
            array.resize((self.written,) + array.shape[1:])
        return self.written


def _check_counts(report: ImportReport) -> None:
    """After skipped files, each split must still hold something (else no store is made)."""
    for split, count in report.counts.items():
        if count == 0:
            raise DataError(
                f"no {split} samples are left after skipping {len(report.skipped)} bad file(s), "
                f"first: {report.skipped[0]}"
            )


def _read_all(
    items: Sequence, reader: Callable, skip_bad: bool, skipped: list[str], bar, chunk: int
) -> Iterator:
    """Yield reader(item) in order for readable items, a chunk at a time."""
    with ThreadPoolExecutor(READ_THREADS) as pool:
        for start in range(0, len(items), chunk):
            batch = items[start : start + chunk]
            for result in pool.map(_catching(reader), batch):
                bar.update(1)
                if isinstance(result, BadFile):
                    if not skip_bad:
                        raise result
                    skipped.append(str(result))
                    continue
                yield result


def _first_readable(items: Sequence, reader: Callable, skip_bad: bool):
    """reader() of the first item that reads: it fixes the image size of the import."""
    for item in items:
        try:
            return reader(item)
        except BadFile:
            if not skip_bad:
                raise
    raise DataError("no readable file to import")


def _catching(reader: Callable) -> Callable:
    def call(item):
        try:
            return reader(item)
        except BadFile as error:
            return error

    return call


__all__ = ["CLASSIFICATION", "SR", "BadFile", "ImportReport", "import_tree", "read_image"]
