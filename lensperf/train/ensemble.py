"""Several classifiers as one: their class probabilities averaged.

On these data the MAE fine-tune and the ResNet err on different images (docs/recipes.md, "What
else was tried on the held-out images"): the mean of their probabilities makes fewer errors
than either. `lensperf evaluate` and `lensperf predict` take `--checkpoint` more than once to
score or apply such an average. Each member keeps its own precision (a batch-norm ResNet can
move by points between bf16 and fp32), and every member must have been trained on images made
the same way, since one image is read once for all of them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from lensperf.errors import DataError
from lensperf.runtime import run_autocast
from lensperf.train.checkpoint import load_checkpoint
from lensperf.train.tasks import model_from_checkpoint


class Ensemble(nn.Module):
    """Classifiers whose `forward` is the log of their mean probability (so a softmax of it is
    that mean). `embed` joins the members' features side by side and `head` maps them back,
    each member's part through its own head, so code written for one classifier's
    embed-then-head (the task's test-time averaging, the reports) works unchanged."""

    def __init__(self, members: list[nn.Module], precisions: list[str]):
        super().__init__()
        if len(members) != len(precisions) or not members:
            raise ValueError("an ensemble needs one precision per member, and a member")
        self.members = nn.ModuleList(members)
        self.precisions = list(precisions)
        self._widths: list[int] = []

    def _autocast(self, i: int, x: Tensor) -> torch.autocast:
        return run_autocast(self.precisions[i], x.device)

    def embed(self, images_BCHW: Tensor) -> Tensor:
        parts = []
        for i, member in enumerate(self.members):
            with self._autocast(i, images_BCHW):
                parts.append(member.embed(images_BCHW).float())
        self._widths = [p.shape[-1] for p in parts]
        return torch.cat(parts, dim=-1)

    def head(self, features: Tensor) -> Tensor:
        if sum(self._widths) != features.shape[-1]:
            raise ValueError("Ensemble.head takes the features of its own embed")
        parts, probs = features.split(self._widths, dim=-1), 0
        for i, (member, part) in enumerate(zip(self.members, parts)):
            with self._autocast(i, part):
                probs = probs + member.head(part).float().softmax(-1)
        return (probs / len(self.members)).clamp_min(1e-12).log()

    def forward(self, images_BCHW: Tensor) -> Tensor:
        return self.head(self.embed(images_BCHW))


def checkpoint_list(checkpoint) -> list:
    """One checkpoint's path, or a list or tuple of them, as a list."""
    return list(checkpoint) if isinstance(checkpoint, (list, tuple)) else [checkpoint]


def load_classifiers(checkpoint) -> tuple[object, nn.Module, dict]:
    """(task, model, preprocessing) of one checkpoint (any task's), or of a list of classifiers
    averaged (the first one's task and config stand for the ensemble's). Refuses checkpoints
    that are not classifiers, whose training images were made differently, or that are given
    twice, with one line."""
    checkpoints = checkpoint_list(checkpoint)
    if not checkpoints:
        raise DataError("no checkpoint given")
    resolved = [Path(path).resolve() for path in checkpoints]
    for i, path in enumerate(checkpoints):
        if resolved[i] in resolved[:i]:
            raise DataError(f"{path} is given twice: an average of a model with itself is "
                            "that model (give each checkpoint once)")  # fmt: skip
    loaded = []
    for path in checkpoints:
        state = load_checkpoint(path)
        task, model = model_from_checkpoint(state)
        loaded.append((path, task, model, state.get("preprocessing", {})))
    if len(loaded) == 1:
        return loaded[0][1], loaded[0][2], loaded[0][3]
    first_path, first_task, _, first_prep = loaded[0]
    for path, task, _, prep in loaded:
        if task.name != "finetune_cls":
            raise DataError(f"{path} is a {task.name} checkpoint: only classifiers (finetune_cls) "
                            "can be averaged")  # fmt: skip
        if prep != first_prep:
            raise DataError(f"{path} was trained on images made another way ({prep}) than "
                            f"{first_path} ({first_prep}): they cannot share an input")  # fmt: skip
    model = Ensemble([m for _, _, m, _ in loaded],
                     [t.config.runtime.precision for _, t, _, _ in loaded])  # fmt: skip
    return first_task, model, first_prep
