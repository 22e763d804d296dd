"""Entry points of the training commands: train a task from a config, evaluate a checkpoint."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from lensperf.atomic import atomic_folder
from lensperf.config import load_config
from lensperf.data import make_loader
from lensperf.errors import ConfigError, DataError
from lensperf.runtime import resolve_device, run_autocast
from lensperf.store import CLASSIFICATION
from lensperf.train.ensemble import checkpoint_list, load_classifiers
from lensperf.train.tasks import TASKS
from lensperf.train.trainer import Trainer


def train(
    task_name: str,
    config_path,
    overrides=(),
    *,
    resume: bool = False,
    overwrite: bool = False,
    stop_after: int = 0,
) -> dict:
    """Train `task_name` from a config file plus overrides. A run continues its checkpoint with
    `resume`, replaces a finished run in out_dir with `overwrite`, and refuses otherwise."""
    config = load_config(TASKS[task_name].config_type, config_path, overrides)
    return train_config(task_name, config, resume=resume, overwrite=overwrite,
                        stop_after=stop_after)  # fmt: skip


def train_config(
    task_name: str, config, *, resume: bool = False, overwrite: bool = False, stop_after: int = 0
) -> dict:
    task = TASKS[task_name](config)
    return Trainer(config, task, resume=resume, overwrite=overwrite, stop_after=stop_after).run()


def evaluate(
    checkpoint: str | Path | list, data: str | Path, out: str | Path | None = None, *,
    split: str = "val", tta: bool = False, shift: tuple[int, int] = (0, 0),
) -> dict:  # fmt: skip
    """Metrics and report of a checkpoint on a split of the store `data`, at the run's precision
    (its `runtime.precision`, as in its training evaluations); a classifier's with `tta` on the
    mean over the 8 symmetries of each image, and with `shift` (dy, dx) on every image rolled
    by that many pixels: how much the model depends on where the lens sits. A list of
    classifier checkpoints is scored as the mean of their probabilities (train/ensemble.py);
    its report goes beside the first unless `out` says otherwise."""
    task, model, loader = _loaded(checkpoint, data, split, tta, shift)
    suffix = ("" if split == "val" else f"-{split}") + (
        f"-shift{shift[0]}_{shift[1]}" if any(shift) else ""
    )
    checkpoints = checkpoint_list(checkpoint)
    if len(checkpoints) > 1:
        suffix += f"-mean{len(checkpoints)}"
    out = Path(out) if out else Path(checkpoints[0]).parent / f"eval-{Path(data).stem}{suffix}"
    device = next(model.parameters()).device
    with (
        atomic_folder(out) as report,
        torch.no_grad(),
        run_autocast(task.config.runtime.precision, device),
    ):
        metrics = task.evaluate(model, loader)
        task.report(model, loader, {"train": [], "eval": []}, report)
        named = str(checkpoints[0]) if len(checkpoints) == 1 else [str(c) for c in checkpoints]
        metrics = {"task": task.name, "checkpoint": named, "data": str(data),
                   "split": split, "tta": tta, "shift": list(shift), **metrics}  # fmt: skip
        (report / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def score(
    checkpoint: str | Path, data: str | Path, *, split: str = "val", tta: bool = False
) -> dict:
    """The metrics alone, under the run's own precision (its evaluations' autocast): no
    report, nothing written."""
    task, model, loader = _loaded(checkpoint, data, split, tta)
    device = next(model.parameters()).device
    with torch.no_grad(), run_autocast(task.config.runtime.precision, device):
        return task.evaluate(model, loader)


def classifier_predictions(
    checkpoint: str | Path, data: str | Path, *, split: str = "val", tta: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities (N, classes), labels (N,)) of a classifier on every image of a split,
    under the run's own precision, in the store's order: what per-image comparisons need."""
    task, model, loader = _loaded(checkpoint, data, split, tta)
    if task.store_kind != CLASSIFICATION:
        raise ConfigError("checkpoint", f"{checkpoint} is a {task.name} model, not a classifier")
    device = next(model.parameters()).device
    with torch.no_grad(), run_autocast(task.config.runtime.precision, device):
        out = task.predict(model, loader)
    return out["logits"].float().softmax(-1), out["labels"]


def _loaded(checkpoint, data, split: str, tta: bool, shift: tuple[int, int] = (0, 0)):
    """(task, model in eval mode, loader); `checkpoint` may be a list: classifiers averaged."""
    task, model, _ = load_classifiers(checkpoint)
    if tta:
        if not hasattr(task.config, "tta"):
            raise ConfigError("tta", f"test-time averaging is for classifiers, not {task.name}")
        task.config = dataclasses.replace(task.config, tta=True)
    if any(shift) and task.store_kind != CLASSIFICATION:
        raise ConfigError("shift", f"shifted evaluation is for classifiers, not {task.name}")
    device = resolve_device("auto")
    model = model.to(device).eval()
    loader = make_loader(data, split, batch_size=128, backend="memory", shuffle=False,
                         device=device, kind=task.store_kind,
                         unlabelled=not task.uses_labels)  # fmt: skip
    if len(loader) == 0:
        labelled = " labelled" if task.uses_labels else ""
        raise DataError(f"{data} has no{labelled} {split} samples")
    return task, model, (ShiftedImages(loader, shift) if any(shift) else loader)


class ShiftedImages:
    """A loader whose batches' images are rolled by (dy, dx) pixels (wrapping round: the edges
    of a DeepLense image are empty sky, so the roll loses nothing)."""

    def __init__(self, loader, shift: tuple[int, int]):
        self.loader, self.shift = loader, tuple(shift)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield {**batch, "image": batch["image"].roll(self.shift, dims=(-2, -1))}
