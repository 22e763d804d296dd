"""`lensperf predict`: apply a trained model to new images.

Inputs: image files (.npy or FITS), folders of them (searched recursively) and stores
(`STORE.zarr` or `STORE.zarr:split`, every image of the split; val by default). The model's
checkpoint says how its training images were made (`preprocessing`: per-image min-max scaling,
image size), and every input is made the same way, so raw files predict as the training data
did, at the precision the model was trained at (its `runtime.precision`). A classifier writes
one CSV row per image (path, p_no_sub, p_cdm, p_axion, predicted); an SR model writes each
upscaled image under the input's name and format into a folder. Images go through in batches;
outputs appear whole or not at all.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lensperf.atomic import atomic_file, atomic_folder
from lensperf.data.augment import symmetric_view
from lensperf.errors import DataError
from lensperf.progress import progress
from lensperf.runtime import resolve_device, run_autocast
from lensperf.store import CLASSES, LAYOUTS, SPLITS, open_store, read_rows, split_length
from lensperf.store.image_files import BadFile, image_files, is_image_file, minmax, read_image
from lensperf.train.ensemble import load_classifiers


@dataclass
class PredictReport:
    out: Path
    task: str
    count: int = 0
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Source:
    """One input image: a file, or row `index` of a store's split."""

    name: str  # the CSV's path column, and the output file's name stem for SR
    path: Path
    split: str | None = None
    index: int = 0


def expand_inputs(inputs: list[str | Path]) -> list[Source]:
    """Every image the inputs name, in the order given (folders sorted, recursively)."""
    sources: list[Source] = []
    for given in inputs:
        text = str(given)
        store, suffix, split = text.partition(".zarr")
        if suffix and (split == "" or split.startswith(":")):  # STORE.zarr or STORE.zarr:split
            sources += _store_sources(Path(store + ".zarr"), split.lstrip(":") or "val")
            continue
        path = Path(text)
        if path.is_dir():
            found = image_files(path, recursive=True)
            if not found:
                raise DataError(f"{path} holds no image files (.npy, .fits)")
            sources += [Source(str(p), p) for p in found]
        elif is_image_file(path):
            sources.append(Source(str(path), path))
        elif not path.exists():
            raise DataError(f"{path}: no such file, folder or store")
        else:
            raise DataError(f"{path} is not an image file (.npy, .fits, .fit, .fits.gz)")
    return sources


def _store_sources(store: Path, split: str) -> list[Source]:
    if split not in SPLITS:
        raise DataError(f"{store}:{split}: unknown split (one of {', '.join(SPLITS)})")
    group = open_store(store, splits=(split,))
    n = split_length(group, split)
    return [Source(f"{store}:{split}:{i}", store, split, i) for i in range(n)]


class _Reader:
    """Images for the model: files made as the training images were, store rows as stored."""

    def __init__(self, preprocessing: dict, kind: str):
        self.minmax = bool(preprocessing.get("minmax"))
        self.size = preprocessing.get("image_size")
        self.check_size = kind == "finetune_cls"
        self._stores: dict[Path, object] = {}

    def read(self, source: Source) -> np.ndarray:
        if source.split is None:
            image, _ = read_image(source.path, normalise=self.minmax)
        else:
            group = self._stores.setdefault(source.path, open_store(source.path))
            array = group[f"{source.split}/{LAYOUTS[group.attrs['kind']].images[0]}"]
            image = read_rows(array, slice(source.index, source.index + 1))[0, 0]
            image = minmax(image).astype(np.float32) if self.minmax else image
        if self.check_size and self.size and image.shape != (self.size, self.size):
            raise BadFile(source.path, f"a {image.shape[0]}x{image.shape[1]} image does not "
                          f"fit the model, trained on {self.size}x{self.size}")  # fmt: skip
        return image


def _batches(sources, reader: _Reader, batch_size: int, skip_bad: bool, report, bar) -> Iterator:
    """(sources, images (B, 1, H, W)) for the readable inputs, a batch at a time; images of a
    batch share a size (an SR input of another size starts a new batch)."""
    batch, images = [], []
    for source in sources:
        try:
            image = reader.read(source)
        except BadFile as error:
            if not skip_bad:
                raise
            report.skipped.append(str(error))
            bar.update(1)
            continue
        if images and (len(batch) == batch_size or image.shape != images[0].shape):
            yield batch, np.stack(images)[:, None]
            batch, images = [], []
        batch.append(source)
        images.append(image)
        bar.update(1)
    if batch:
        yield batch, np.stack(images)[:, None]


def predict(
    checkpoint: str | Path | list, inputs: list, out: str | Path, *, batch_size: int = 64,
    tta: bool = False, skip_bad: bool = False, overwrite: bool = False,
) -> PredictReport:  # fmt: skip
    """Predict every input image with the model of `checkpoint` into `out` (see the module). A
    list of classifier checkpoints predicts the mean of their probabilities (train/ensemble.py)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise DataError(f"{out} already exists (pass --overwrite to replace it)")
    task, model, preprocessing = load_classifiers(checkpoint)
    if task.name not in ("finetune_cls", "finetune_sr"):
        raise DataError(f"{checkpoint} is a {task.name} checkpoint; predict needs a "
                        "finetune_cls or finetune_sr one")  # fmt: skip
    device = resolve_device("auto")
    model = model.to(device).eval()
    sources = expand_inputs(inputs)
    reader = _Reader(preprocessing, task.name)
    report = PredictReport(out=out, task=task.name)
    precision = run_autocast(task.config.runtime.precision, device)  # as it was trained
    with progress(total=len(sources), desc="predict", unit="img") as bar, precision:
        batches = _batches(sources, reader, batch_size, skip_bad, report, bar)
        if task.name == "finetune_cls":
            _classify(model, batches, out, tta, report, device)
        else:
            _upscale(model, batches, out, report, device)
    return report


@torch.no_grad()
def _classify(model, batches, out: Path, tta: bool, report, device) -> None:
    with atomic_file(out) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", *(f"p_{name}" for name in CLASSES), "predicted"])
        for sources, images in batches:
            x = torch.from_numpy(images).to(device)
            views = range(8) if tta else range(1)
            probs = torch.stack([model(symmetric_view(x, v)).float().softmax(1) for v in views])
            for source, p in zip(sources, probs.mean(0).cpu().tolist()):
                predicted = CLASSES[int(np.argmax(p))]
                writer.writerow([source.name, *(f"{v:.6f}" for v in p), predicted])
            report.count += len(sources)


@torch.no_grad()
def _upscale(model, batches, out: Path, report, device) -> None:
    with atomic_folder(out) as folder:
        names: set[str] = set()
        for sources, images in batches:
            hr = model(torch.from_numpy(images).to(device)).float().clamp(0, 1).cpu().numpy()
            for source, image in zip(sources, hr):
                name = _output_name(source, names)
                if name.endswith(".npy"):
                    np.save(folder / name, image.astype(np.float32))
                else:
                    from astropy.io import fits

                    fits.PrimaryHDU(image[0].astype(np.float32)).writeto(folder / name)
            report.count += len(sources)


def _output_name(source: Source, taken: set[str]) -> str:
    """The input's file name (a store row: SPLIT_INDEX.npy), made unique within the output."""
    name = source.path.name if source.split is None else f"{source.split}_{source.index}.npy"
    stem, suffix = name, ""
    for ending in (".fits.gz", ".fits", ".fit", ".npy"):
        if name.lower().endswith(ending):
            stem, suffix = name[: -len(ending)], name[-len(ending) :]
            break
    unique, n = name, 1
    while unique in taken:
        unique, n = f"{stem}_{n}{suffix}", n + 1
    taken.add(unique)
    return unique
