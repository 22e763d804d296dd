"""Knowledge distillation for the classifier: a trained teacher's predictions on the training
images, learnt beside the labels (`FinetuneClsConfig.teacher`).

The teacher's targets are computed once, before training, on every training image averaged
over its 8 symmetries, and looked up by the batch's rows: a per-step teacher forward halved the
fine-tune's speed on the 2-core CPU (the ResNet's forward runs at about 600 images a second
there, the ViT's training step at 770), and the averaged teacher is the better one (the
ResNet's held-out errors fall from 2-19 to 0-4, docs/recipes.md, E26). The class of an image
does not change with its symmetry, so one target serves every augmented view of it.

The targets are cached beside the teacher's checkpoint (`teacher_targets/`), keyed by the
checkpoint's bytes, the store and the rows drawn: a second fine-tune from the same teacher (a
sweep, a resumed run) loads them in a second instead of recomputing them (6.2 minutes for
32,400 images on the 2-core CPU).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from lensperf.atomic import atomic_file
from lensperf.progress import progress

CACHE_DIR = "teacher_targets"  # beside the teacher's checkpoint
CACHE_VERSION = 1  # what the targets are: the log of the mean probability over 8 symmetries


def distillation_loss(logits, teacher_log_probs, temperature: float) -> torch.Tensor:
    """KL(teacher || model) of the two distributions softened by `temperature`, times T^2 so
    that the gradient's scale does not change with T (Hinton et al. 2015); 0 when they match."""
    log_p = F.log_softmax(logits / temperature, -1)
    log_q = F.log_softmax(teacher_log_probs / temperature, -1)
    kl = F.kl_div(log_p, log_q, log_target=True, reduction="batchmean")
    return kl * temperature**2


def teacher_targets(predict, loader, rows: int, classes: int) -> torch.Tensor:
    """(rows, classes): the log of the teacher's mean probability over the 8 symmetries of each
    image `loader` gives, at its row of the split (rows it does not give stay 0). `predict` is
    the teacher task's, with tta on."""
    targets = torch.zeros(rows, classes)
    bar = progress(len(loader), "teacher's targets", "batch")
    with torch.no_grad():
        for batch in loader:
            at = torch.as_tensor(batch["index"]).cpu()  # predict keeps the batch's order
            targets[at] = predict([batch])["logits"]
            bar.update(1)
    bar.close()
    return targets


def autocast_dtype_in_use(device: torch.device) -> torch.dtype:
    """The dtype the teacher's forwards run in here: autocast's, or float32 without it."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return torch.float32


def cache_path(teacher: str | Path, store: str | Path, **settings) -> Path:
    """Where the targets of `teacher` on `store` with `settings` (the rows drawn, the precision)
    are cached: named by a hash of the checkpoint's bytes, the store's path and the time its
    metadata was written (a store simulated or imported again is a new one), and `settings`."""
    teacher, store = Path(teacher), Path(store).resolve()
    digest = hashlib.sha256(teacher.read_bytes())
    identity = {"store": str(store), "written_ns": (store / "zarr.json").stat().st_mtime_ns,
                "version": CACHE_VERSION, **settings}  # fmt: skip
    digest.update(json.dumps(identity, sort_keys=True, default=str).encode())
    return teacher.parent / CACHE_DIR / f"{digest.hexdigest()[:24]}.pt"


def cached(path: Path, shape: tuple[int, int], compute: Callable[[], torch.Tensor]):
    """The targets at `path` when they are there and of `shape`; else `compute()`, saved there
    (atomically; where the folder cannot be written, a line says so and nothing is saved)."""
    if path.is_file():
        try:
            targets = torch.load(path, weights_only=True)
            if tuple(targets.shape) == shape and torch.isfinite(targets).all():
                return targets
        except Exception:  # a damaged cache file is recomputed, never trusted
            pass
    targets = compute()
    try:
        path.parent.mkdir(exist_ok=True)
        with atomic_file(path) as tmp:
            torch.save(targets.cpu(), tmp)
    except OSError as error:
        print(f"lensperf: the teacher's targets are not cached ({error})", file=sys.stderr)
    return targets
