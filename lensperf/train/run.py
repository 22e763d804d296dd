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
from lensperf.train.checkpoint import load_checkpoint
from lensperf.train.tasks import TASKS, model_from_checkpoint
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
    checkpoint: str | Path, data: str | Path, out: str | Path | None = None, *,
    split: str = "val", tta: bool = False,
) -> dict:  # fmt: skip
    """Metrics and report of a checkpoint on a split of the store `data`, at the run's precision
    (its `runtime.precision`, as in its training evaluations); a classifier's with `tta` on the
    mean over the 8 symmetries of each image."""
    task, model, loader = _loaded(checkpoint, data, split, tta)
    suffix = "" if split == "val" else f"-{split}"
    out = Path(out) if out else Path(checkpoint).parent / f"eval-{Path(data).stem}{suffix}"
    device = next(model.parameters()).device
    with (
        atomic_folder(out) as report,
        torch.no_grad(),
        run_autocast(task.config.runtime.precision, device),
    ):
        metrics = task.evaluate(model, loader)
        task.report(model, loader, {"train": [], "eval": []}, report)
        metrics = {"task": task.name, "checkpoint": str(checkpoint), "data": str(data),
                   "split": split, "tta": tta, **metrics}  # fmt: skip
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


def _loaded(checkpoint, data, split: str, tta: bool):
    state = load_checkpoint(checkpoint)
    task, model = model_from_checkpoint(state)
    if tta:
        if not hasattr(task.config, "tta"):
            raise ConfigError("tta", f"test-time averaging is for classifiers, not {task.name}")
        task.config = dataclasses.replace(task.config, tta=True)
    device = resolve_device("auto")
    model = model.to(device).eval()
    loader = make_loader(data, split, batch_size=128, backend="memory", shuffle=False,
                         device=device, kind=task.store_kind)  # fmt: skip
    if len(loader) == 0:
        raise DataError(f"{data} has no {split} samples")
    return task, model, loader
