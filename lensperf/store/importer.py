"""Import DeepLense `.npy` folders into a store.

Classification trees hold one folder per class; super-resolution trees hold `HR/` and `LR/`
with files paired by name. Every file format seen in the wild loads:
plain (H, W) arrays, (1, H, W), flat (H*W,) vectors with or without an appended label, and
object arrays `[image, axion_mass]` (these need pickle: only import files you trust).

Files are read in output order, one store chunk at a time, so memory stays bounded by the chunk
size whatever the dataset size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lensperf.errors import DataError
from lensperf.progress import progress
from lensperf.store import CLASSES, CLASSIFICATION, SR, StoreWriter, chunk_length
from lensperf.store.splits import stratified_split

# Folder names of the DeepLense sets, mapped onto lensperf's classes.
CLASS_ALIASES = {
    "no_sub": "no_sub",
    "nosub": "no_sub",
    "no": "no_sub",
    "cdm": "cdm",
    "sphere": "cdm",
    "axion": "axion",
    "vort": "axion",
}
RANGE_TOLERANCE = 1e-4  # float64 -> float32 round-off and min-max rounding in the wild
READ_THREADS = 4  # np.load releases the GIL during file reads


class BadFile(DataError):
    def __init__(self, path: Path, reason: str):
        self.path = path
        super().__init__(f"{path}: {reason}")


@dataclass
class ImportReport:
    out: Path
    kind: str
    counts: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- reading one file


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as error:
        if "allow_pickle" not in str(error):
            raise BadFile(path, f"not a readable .npy file ({error})") from None
    except (OSError, EOFError) as error:
        raise BadFile(path, f"cannot read ({error})") from None
    try:  # DeepLense axion files are object arrays [image, mass]
        return np.load(path, allow_pickle=True)
    except Exception as error:
        raise BadFile(path, f"not a readable .npy file ({type(error).__name__})") from None


def _as_image(path: Path, array: np.ndarray) -> np.ndarray:
    """(H, W) float64 from any of the accepted layouts."""
    if np.iscomplexobj(array):
        raise BadFile(path, "pixels are complex numbers; an image must be real")
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    elif array.ndim == 1:
        n = array.shape[0]
        side = math.isqrt(n)
        if side * side == n:
            array = array.reshape(side, side)
        elif math.isqrt(n - 1) ** 2 == n - 1:  # a label appended after the pixels
            side = math.isqrt(n - 1)
            array = array[:-1].reshape(side, side)
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise BadFile(path, f"expected a square image, got shape {array.shape}")
    try:
        return array.astype(np.float64)
    except (TypeError, ValueError):
        raise BadFile(path, f"pixels of dtype {array.dtype} are not numbers") from None


def read_image(path: Path, *, normalise: bool = False) -> tuple[np.ndarray, float]:
    """(image float32 (H, W) in [0, 1], axion mass in eV or NaN) of one DeepLense file."""
    raw = _load_npy(path)
    mass = math.nan
    if raw.dtype == object:
        items = list(raw.ravel()) if raw.ndim else [raw.item()]
        if not items:
            raise BadFile(path, "empty object array")
        raw = np.asarray(items[0])
        if len(items) > 1:
            try:
                mass = float(items[1])
            except (TypeError, ValueError):
                raise BadFile(path, "second item of the object array is not a mass") from None
            if not math.isfinite(mass) or mass <= 0:
                raise BadFile(path, f"axion mass {mass!r} is not a positive number")
    image = _as_image(path, raw)
    if not np.isfinite(image).all():
        raise BadFile(path, "image has NaN or infinite pixels")
    if normalise:
        lo, hi = image.min(), image.max()
        image = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    lo, hi = float(image.min()), float(image.max())
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise BadFile(path, f"values outside [0, 1] (min {lo:.4g}, max {hi:.4g}); pass --normalise")
    return np.clip(image, 0.0, 1.0).astype(np.float32), mass


# ---------------------------------------------------------------- finding files


def detect_kind(src: Path) -> str:
    names = {p.name.upper() for p in src.iterdir() if p.is_dir()}
    return SR if {"HR", "LR"} <= names else CLASSIFICATION


def find_classification_files(src: Path) -> tuple[list[Path], np.ndarray]:
    files, labels = [], []
    folders = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    for folder in folders:
        name = CLASS_ALIASES.get(folder.name.lower())
        if name is None:
            known = ", ".join(sorted(CLASS_ALIASES))
            raise DataError(f"{folder}: not a class folder (expected one of: {known})")
        found = sorted(folder.glob("*.npy"))
        if not found:
            raise DataError(f"{folder}: the class folder holds no .npy files")
        files += found
        labels += [CLASSES.index(name)] * len(found)
    if not files:
        raise DataError(f"no class folders with .npy files under {src}")
    present = sorted({CLASSES[label] for label in labels}, key=CLASSES.index)
    if len(present) < 2:
        raise DataError(
            f"{src} holds one class only ({present[0]}); a classifier needs at least two"
        )
    return files, np.asarray(labels, dtype=np.int64)


def find_sr_pairs(src: Path, skip_bad: bool, skipped: list[str]) -> list[tuple[Path, Path]]:
    dirs = {p.name.upper(): p for p in src.iterdir() if p.is_dir()}
    if not {"LR", "HR"} <= set(dirs):
        raise DataError(f"{src} holds no HR/ and LR/ folders: it is not a super-resolution tree")
    lr = {p.name: p for p in dirs["LR"].glob("*.npy")}
    hr = {p.name: p for p in dirs["HR"].glob("*.npy")}
    for name in sorted(set(lr) ^ set(hr)):
        missing = "HR" if name in lr else "LR"
        if not skip_bad:
            raise DataError(f"{(lr.get(name) or hr.get(name))}: no partner file in {missing}/")
        skipped.append(f"{name}: no partner in {missing}/")
    pairs = [(lr[name], hr[name]) for name in sorted(set(lr) & set(hr), key=_natural_key)]
    if not pairs:
        raise DataError(f"no paired .npy files in {dirs['LR']} and {dirs['HR']}")
    return pairs


def _natural_key(name: str) -> tuple:
    digits = "".join(ch for ch in name if ch.isdigit())
    return (int(digits) if digits else -1, name)


# ---------------------------------------------------------------- writing


def _splits(labels: np.ndarray, val_fraction: float, seed: int, unit: str) -> dict:
    """The seeded train/val split, refused before anything is written if either is empty: the
    training commands need both."""
    train, val = stratified_split(labels, val_fraction, seed)
    if len(val) == 0:
        raise DataError(
            f"--val-fraction {val_fraction} leaves no validation {unit}s of {len(labels)}; "
            f"training and evaluation need some (a fraction above 0, two {unit}s a class or more)"
        )
    return {"train": train, "val": val}


def _check_counts(report: ImportReport) -> None:
    """After skipped files, each split must still hold something (else no store is made)."""
    for split, count in report.counts.items():
        if count == 0:
            raise DataError(
                f"no {split} samples are left after skipping {len(report.skipped)} bad file(s), "
                f"first: {report.skipped[0]}"
            )


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


def _read_all(
    items: Sequence, reader: Callable, skip_bad: bool, skipped: list[str], bar, chunk: int
):
    """Yield (item, reader(item)) in order for readable items, a chunk at a time."""
    with ThreadPoolExecutor(READ_THREADS) as pool:
        for start in range(0, len(items), chunk):
            batch = items[start : start + chunk]
            for item, result in zip(batch, pool.map(_catching(reader), batch)):
                bar.update(1)
                if isinstance(result, BadFile):
                    if not skip_bad:
                        raise result
                    skipped.append(str(result))
                    continue
                yield item, result


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


def import_classification(
    src: Path,
    out: Path,
    *,
    val_fraction: float,
    seed: int,
    skip_bad: bool,
    normalise: bool,
    overwrite: bool,
    compress: bool = False,
) -> ImportReport:
    files, labels = find_classification_files(src)
    size = _first_readable(
        files, lambda f: read_image(f, normalise=normalise)[0].shape[0], skip_bad
    )
    chunk = chunk_length((1, size, size))
    report = ImportReport(out=out, kind=CLASSIFICATION)
    splits = _splits(labels, val_fraction, seed, "file")

    def reader(i: int):
        image, mass = read_image(files[i], normalise=normalise)
        if image.shape != (size, size):
            raise BadFile(files[i], f"shape {image.shape} differs from {(size, size)}")
        return image, mass

    with StoreWriter(out, kind=CLASSIFICATION, overwrite=overwrite, compress=compress) as writer:
        writer.set_attrs(
            classes=list(CLASSES),
            image_size=size,
            source=f"imported: {src.resolve()}",
            config={"val_fraction": val_fraction, "normalise": normalise, "skip_bad": skip_bad},
            seed=seed,
        )
        with progress(total=len(files), desc="import", unit="file") as bar:
            for split, order in splits.items():
                m = len(order)
                sink = _ChunkedSplitWriter(
                    {
                        "images": writer.create(
                            split, "images", (m, 1, size, size), "float32", chunk
                        ),
                        "labels": writer.create(split, "labels", (m,), "int64", chunk),
                        "axion_mass": writer.create(split, "axion_mass", (m,), "float32", chunk),
                    },
                    chunk,
                )
                for i, (image, mass) in _read_all(
                    list(order), reader, skip_bad, report.skipped, bar, chunk
                ):
                    sink.add(images=image[None], labels=labels[i], axion_mass=np.float32(mass))
                report.counts[split] = sink.finish()
        _check_counts(report)
    return report


def import_sr(
    src: Path,
    out: Path,
    *,
    val_fraction: float,
    seed: int,
    skip_bad: bool,
    overwrite: bool,
    compress: bool = False,
) -> ImportReport:
    report = ImportReport(out=out, kind=SR)
    pairs = find_sr_pairs(src, skip_bad, report.skipped)
    lr0, hr0 = _first_readable(
        pairs, lambda p: (read_image(p[0])[0], read_image(p[1])[0]), skip_bad
    )
    lr_size, hr_size = lr0.shape[0], hr0.shape[0]
    if hr_size % lr_size or hr_size // lr_size < 2:
        raise DataError(f"{pairs[0][1]}: HR size {hr_size} is not a multiple of LR size {lr_size}")
    chunk = chunk_length((1, hr_size, hr_size))
    splits = _splits(np.zeros(len(pairs), dtype=np.int64), val_fraction, seed, "pair")

    def reader(i: int):
        lr_path, hr_path = pairs[i]
        lr, _ = read_image(lr_path)
        hr, _ = read_image(hr_path)
        if lr.shape != (lr_size, lr_size):
            raise BadFile(lr_path, f"shape {lr.shape} differs from {(lr_size, lr_size)}")
        if hr.shape != (hr_size, hr_size):
            raise BadFile(hr_path, f"shape {hr.shape} differs from {(hr_size, hr_size)}")
        return lr, hr

    with StoreWriter(out, kind=SR, overwrite=overwrite, compress=compress) as writer:
        writer.set_attrs(
            lr_size=lr_size,
            hr_size=hr_size,
            factor=hr_size // lr_size,
            source=f"imported: {src.resolve()}",
            config={"val_fraction": val_fraction, "skip_bad": skip_bad},
            seed=seed,
        )
        with progress(total=len(pairs), desc="import", unit="pair") as bar:
            for split, order in splits.items():
                m = len(order)
                sink = _ChunkedSplitWriter(
                    {
                        "lr": writer.create(
                            split, "lr", (m, 1, lr_size, lr_size), "float32", chunk
                        ),
                        "hr": writer.create(
                            split, "hr", (m, 1, hr_size, hr_size), "float32", chunk
                        ),
                    },
                    chunk,
                )
                for _, (lr, hr) in _read_all(
                    list(order), reader, skip_bad, report.skipped, bar, chunk
                ):
                    sink.add(lr=lr[None], hr=hr[None])
                report.counts[split] = sink.finish()
        _check_counts(report)
    return report


def import_tree(
    src: str | Path,
    out: str | Path,
    *,
    kind: str | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    skip_bad: bool = False,
    normalise: bool = False,
    overwrite: bool = False,
    compress: bool = False,
) -> ImportReport:
    """Import the DeepLense tree `src` into the store `out` (see the module docstring)."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise DataError(f"{src} is not a directory")
    if not 0 <= val_fraction < 1:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    kind = kind or detect_kind(src)
    if kind == SR:
        return import_sr(
            src, out, val_fraction=val_fraction, seed=seed, skip_bad=skip_bad,
            overwrite=overwrite, compress=compress,
        )  # fmt: skip
    return import_classification(
        src,
        out,
        val_fraction=val_fraction,
        seed=seed,
        skip_bad=skip_bad,
        normalise=normalise,
        overwrite=overwrite,
        compress=compress,
    )
