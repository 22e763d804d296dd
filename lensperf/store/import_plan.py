"""Which files an import reads and into which split each goes.

Trees the importer understands, each with image files (.npy or FITS) as `image_files` reads:
  * classification: one folder per class (no_sub|nosub|no, cdm|sphere, axion|vort), and
    optionally `unlabelled/` (or `unlabeled/`): images of no known class, for pretraining and a
    teacher's distillation, which go to the train split only;
  * super-resolution: `HR/` and `LR/` folders of files paired by name;
  * either of those inside split folders (`train/`, `val/` or `validation/`, `test/`), as
    DeepLense ships some sets: each keeps its split, and without a val folder the validation
    split is carved out of train by the val fraction.
Without split folders the tree is split into train and val by the val fraction (stratified by
class, seeded); `split="test"` (or any split name) imports the whole tree as that one split,
for a held-out set to score with `lensperf evaluate --split test`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lensperf.errors import DataError
from lensperf.store.image_files import image_files
from lensperf.store.layout import CLASSES, CLASSIFICATION, SPLITS, SR, UNLABELLED, UNLABELLED_NAME
from lensperf.store.splits import stratified_split

CLASS_ALIASES = {
    "no_sub": "no_sub", "nosub": "no_sub", "no": "no_sub",
    "cdm": "cdm", "sphere": "cdm",
    "axion": "axion", "vort": "axion",
    "unlabelled": UNLABELLED_NAME, "unlabeled": UNLABELLED_NAME,
}  # fmt: skip
SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val", "test": "test"}


@dataclass
class ImportPlan:
    kind: str
    items: list  # files (classification) or (lr, hr) file pairs (SR)
    labels: np.ndarray  # (len(items),) class index or UNLABELLED; zeros for SR
    splits: dict[str, np.ndarray]  # split -> indices into items, in writing order


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def split_folders(src: Path) -> dict[str, Path]:
    """Top-level folders named after splits (case-insensitive), mapped to lensperf's names."""
    found = {}
    for folder in _subdirs(src):
        name = SPLIT_ALIASES.get(folder.name.lower())
        if name is not None:
            if name in found:
                raise DataError(f"{src} has two folders for the {name} split")
            found[name] = folder
    return found


def detect_kind(src: Path) -> str:
    tree = next(iter(split_folders(src).values()), src)
    names = {p.name.upper() for p in _subdirs(tree)}
    return SR if {"HR", "LR"} <= names else CLASSIFICATION


def find_classification_files(src: Path) -> tuple[list[Path], np.ndarray]:
    files, labels = [], []
    for folder in _subdirs(src):
        name = CLASS_ALIASES.get(folder.name.lower())
        if name is None:
            known = ", ".join(sorted(CLASS_ALIASES))
            raise DataError(f"{folder}: not a class folder (expected one of: {known})")
        found = image_files(folder)
        if not found:
            raise DataError(f"{folder}: the class folder holds no image files (.npy, .fits)")
        files += found
        labels += [UNLABELLED if name == UNLABELLED_NAME else CLASSES.index(name)] * len(found)
    if not files:
        raise DataError(f"no class folders with image files under {src}")
    return files, np.asarray(labels, dtype=np.int64)


def find_sr_pairs(src: Path, skip_bad: bool, skipped: list[str]) -> list[tuple[Path, Path]]:
    dirs = {p.name.upper(): p for p in _subdirs(src)}
    if not {"LR", "HR"} <= set(dirs):
        raise DataError(f"{src} holds no HR/ and LR/ folders: it is not a super-resolution tree")
    lr = {p.name: p for p in image_files(dirs["LR"])}
    hr = {p.name: p for p in image_files(dirs["HR"])}
    for name in sorted(set(lr) ^ set(hr)):
        missing = "HR" if name in lr else "LR"
        if not skip_bad:
            raise DataError(f"{(lr.get(name) or hr.get(name))}: no partner file in {missing}/")
        skipped.append(f"{name}: no partner in {missing}/")
    pairs = [(lr[name], hr[name]) for name in sorted(set(lr) & set(hr), key=_natural_key)]
    if not pairs:
        raise DataError(f"no paired image files in {dirs['LR']} and {dirs['HR']}")
    return pairs


def _natural_key(name: str) -> tuple:
    digits = "".join(ch for ch in name if ch.isdigit())
    return (int(digits) if digits else -1, name)


def _find(tree: Path, kind: str, skip_bad: bool, skipped: list[str]) -> tuple[list, np.ndarray]:
    if kind == SR:
        pairs = find_sr_pairs(tree, skip_bad, skipped)
        return pairs, np.zeros(len(pairs), dtype=np.int64)
    return find_classification_files(tree)


def plan_import(
    src: Path, kind: str, *, split: str | None, val_fraction: float, seed: int,
    skip_bad: bool, skipped: list[str],
) -> ImportPlan:  # fmt: skip
    """Find the files under `src` and assign each to a split (see the module docstring)."""
    if split is not None and split not in SPLITS:
        raise DataError(f"unknown split {split!r} (one of {', '.join(SPLITS)})")
    folders = split_folders(src)
    rng = np.random.default_rng([seed, 0x5E1A, 1])
    if split is not None:
        if folders:
            raise DataError(f"{src} has split folders ({', '.join(folders)}); --split imports "
                            "a plain tree whole")  # fmt: skip
        items, labels = _find(src, kind, skip_bad, skipped)
        splits = {split: rng.permutation(len(items))}
    elif folders:
        items, labels, splits = [], np.zeros(0, np.int64), {}
        for name in (s for s in SPLITS if s in folders):  # train, val, test order
            found, found_labels = _find(folders[name], kind, skip_bad, skipped)
            splits[name] = len(items) + rng.permutation(len(found))
            items += found
            labels = np.concatenate([labels, found_labels])
        if "train" not in splits:
            raise DataError(f"{src} has split folders but no train/ folder")
        if "val" not in splits:  # carve it out of train, stratified
            train = splits.pop("train")
            keep, val = stratified_split(labels[train], val_fraction, seed)
            splits = {"train": train[keep], "val": train[val], **splits}
    else:
        items, labels = _find(src, kind, skip_bad, skipped)
        train, val = stratified_split(labels, val_fraction, seed)
        splits = {"train": train, "val": val}
    _check(src, kind, labels, splits, val_fraction)
    return ImportPlan(kind=kind, items=items, labels=labels, splits=splits)


def _check(src: Path, kind: str, labels: np.ndarray, splits: dict, val_fraction: float) -> None:
    """Refuse, before anything is written, a store the training commands cannot use."""
    if kind == CLASSIFICATION:
        _check_labels(src, labels, splits)
    unit = "pair" if kind == SR else "file"
    for name, order in splits.items():
        if len(order) > 0:
            continue
        if name == "val":
            raise DataError(
                f"{src}: --val-fraction {val_fraction} leaves no validation {unit}s; training "
                f"and evaluation need some (a fraction above 0, two {unit}s a class or more)"
            )
        raise DataError(f"{src}: the {name} split holds no {unit}s")


def _check_labels(src: Path, labels: np.ndarray, splits: dict) -> None:
    for name, order in splits.items():
        if name != "train" and (labels[order] == UNLABELLED).any():
            raise DataError(
                f"{src}: unlabelled images can go to the train split only, not {name} "
                "(validation and test are scored against labels)"
            )
    if "train" in splits:
        train = labels[splits["train"]]
        present = [CLASSES[k] for k in sorted(set(train[train != UNLABELLED].tolist()))]
        if len(present) < 2:
            held = f"one class only ({present[0]})" if present else "no labelled images"
            raise DataError(f"{src} holds {held}; a classifier needs at least two classes")
