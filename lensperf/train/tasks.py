"""The three training tasks. A task owns everything about its task: its config type, the store
kind it reads, its model, the loss of a batch, evaluation, the report, what a checkpoint must
hold to rebuild its model, and a synthetic batch for the bench. The trainer, `evaluate`, the API
and the bench go through the `TASKS` registry and never branch on a task's name.

`fixed_sections` are the config sections a resumed run must share with its checkpoint.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lensperf.config import from_dict, to_dict
from lensperf.data import make_loader
from lensperf.data.augment import random_shift, symmetric_view
from lensperf.data.reader import StoreReader
from lensperf.errors import DataError
from lensperf.models import MAE, Classifier, SuperResolution, ViTConfig, ViTEncoder
from lensperf.models.resnet import ResNet
from lensperf.store import CLASSES, CLASSIFICATION, SR, UNLABELLED
from lensperf.train import metrics as M
from lensperf.train import report as R
from lensperf.train.checkpoint import load_checkpoint
from lensperf.train.config import FinetuneClsConfig, FinetuneSRConfig, PretrainConfig
from lensperf.train.distill import (
    autocast_dtype_in_use,
    cache_path,
    cached,
    distillation_loss,
    teacher_targets,
)
from lensperf.train.encoder_io import load_encoder, load_head


class Task:
    name: ClassVar[str]
    config_type: ClassVar[type]
    store_kind: ClassVar[str]
    fixed_sections: ClassVar[tuple[str, ...]]
    selection_metric: ClassVar[str]  # the validation metric best.pt is chosen by, by default
    # Whether its loss and evaluation need each image's label: the loaders then leave out the
    # store's unlabelled images (label -1)
    uses_labels: ClassVar[bool] = False

    def __init__(self, config):
        self.config = config

    def build_model(self, encoder: ViTConfig | None = None) -> nn.Module:
        """The task's model; with `encoder`, a fresh one of that encoder shape, whatever the
        config says (to load a checkpoint's weights into)."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, loader) -> dict:
        raise NotImplementedError

    def report(self, model: nn.Module, loader, history: dict, out: Path) -> dict:
        raise NotImplementedError

    def example_batch(self, batch_size: int, device: torch.device) -> dict:
        """A random batch shaped like the loader's, for the bench."""
        raise NotImplementedError

    def train_per_class(self) -> int:
        """How many images of each class the training loader draws (0: all)."""
        return self.config.data.labels_per_class

    def train_unlabelled(self) -> bool:
        """Whether the training loader draws the store's unlabelled images too."""
        return not self.uses_labels

    def prepare(self, device: torch.device) -> None:
        """Load what training needs besides the model (a teacher), before the first step: a
        missing or wrong file then fails before any training. Nothing by default."""

    def checkpoint_extras(self, model: nn.Module) -> dict:
        """What a checkpoint holds besides the weights to rebuild `model` (`from_checkpoint`):
        the shape of its ViT encoder, which a pretrained one may give instead of the config."""
        encoder = getattr(model, "encoder", None)
        return {"encoder_config": to_dict(encoder.config) if encoder is not None else None}

    @classmethod
    def from_checkpoint(cls, state: dict) -> tuple[Task, nn.Module]:
        task = cls(from_dict(cls.config_type, state["config"]))
        shape = state.get("encoder_config")
        encoder = from_dict(ViTConfig, shape, prefix="encoder") if shape is not None else None
        model = task.build_model(encoder)
        model.load_state_dict(state["model"])
        return task, model


class PretrainTask(Task):
    name = "pretrain"
    config_type = PretrainConfig
    store_kind = CLASSIFICATION
    selection_metric = "val_loss"  # best.pt by default
    fixed_sections = ("model", "data")

    def build_model(self, encoder: ViTConfig | None = None) -> MAE:
        model = self.config.model
        return MAE(model if encoder is None else dataclasses.replace(model, encoder=encoder))

    def loss(self, model, batch) -> torch.Tensor:
        return model(batch["image"])[0]

    def evaluate(self, model, loader) -> dict:
        total, count = 0.0, 0
        generator_state = torch.get_rng_state()
        torch.manual_seed(0)  # the same masks every evaluation: comparable numbers
        for batch in loader:
            loss = model(batch["image"])[0]
            total += loss.item() * len(batch["index"])
            count += len(batch["index"])
        torch.set_rng_state(generator_state)
        return {"val_loss": total / max(count, 1)}

    def report(self, model, loader, history, out: Path) -> dict:
        R.curves(history, ["loss"], ["val_loss"], out / "loss.png", "MAE reconstruction loss")
        R.reconstructions(model, loader, out / "reconstructions.png")
        return {}

    def example_batch(self, batch_size: int, device: torch.device) -> dict:
        size = self.config.model.encoder.image_size
        return {"image": torch.rand(batch_size, 1, size, size, device=device)}


class _FinetuneTask(Task):
    """A task that fine-tunes an encoder: pretrained (`config.pretrained`) or from scratch."""

    def encoder(self, shape: ViTConfig | None = None) -> ViTEncoder:
        if shape is not None:
            return ViTEncoder(shape)
        if self.config.pretrained:
            encoder = load_encoder(self.config.pretrained)
            # fine-tuning settings that change no weight apply to a pretrained encoder too
            encoder.set_drop_path(self.config.encoder.drop_path)
            return encoder
        return ViTEncoder(self.config.encoder)

    @property
    def encoder_origin(self) -> str:
        pretrained = self.config.pretrained
        return f"pretrained: {pretrained}" if pretrained else "from scratch"


class ClassifyTask(_FinetuneTask):
    name = "finetune_cls"
    config_type = FinetuneClsConfig
    store_kind = CLASSIFICATION
    selection_metric = "accuracy"  # best.pt by default
    uses_labels = True
    fixed_sections = (
        "arch", "encoder", "resnet", "pretrained", "linear_probe", "head_init", "pool",
        "local_width", "data",
    )  # fmt: skip
    # config.teacher's targets for each training image, once `prepare` has computed them, and
    # with distill_unlabelled, which training images' labels are used
    teacher_log_probs: torch.Tensor | None = None
    labelled: torch.Tensor | None = None

    def build_model(self, encoder: ViTConfig | None = None) -> Classifier | ResNet:
        if self.config.arch == "resnet":
            return ResNet(self.config.resnet, num_classes=len(CLASSES))
        model = Classifier(
            self.encoder(encoder),
            num_classes=len(CLASSES),
            linear_probe=self.config.linear_probe,
            token_keep=self.config.token_keep,
            pool=self.config.pool,
            local_width=self.config.local_width,
        )
        # Only for a new model: one rebuilt from its own checkpoint (encoder given) gets that
        # checkpoint's head, and the probe it started from may be gone.
        if self.config.head_init and encoder is None:
            load_head(model, self.config.head_init)
        return model

    def train_per_class(self) -> int:
        # distill_unlabelled trains on every image; the labels drawn are used in `loss`
        return 0 if self.config.distill_unlabelled else super().train_per_class()

    def train_unlabelled(self) -> bool:
        return self.config.distill_unlabelled

    def prepare(self, device: torch.device) -> None:
        if not self.config.teacher:
            return
        if self.config.distill_unlabelled:
            self.labelled = torch.from_numpy(self._labels_used()).to(device)
        self.teacher_log_probs = self._teacher_targets(device)

    def _labels_used(self) -> np.ndarray:
        """(train rows,) bool: the images whose labels distill_unlabelled trains on: the
        data.labels_per_class drawn (never unlabelled ones) when it is set, else every one with
        a label."""
        data = self.config.data
        reader = StoreReader(data.store, "train", self.store_kind)
        if data.labels_per_class:
            return reader.per_class_mask(data.labels_per_class)
        used = reader.labelled_mask()
        if used is None:
            raise DataError(
                f"distill_unlabelled: {data.store} has no unlabelled training images (import "
                "them from an unlabelled/ folder) and data.labels_per_class is 0"
            )
        return used

    def _teacher_targets(self, device: torch.device) -> torch.Tensor:
        path, data = self.config.teacher, self.config.data
        state = load_checkpoint(path)
        if state.get("task") != self.name:
            raise DataError(f"{path} is not a classifier's checkpoint (teacher needs one)")
        task, teacher = model_from_checkpoint(state)
        teacher = teacher.eval().to(device)
        # The teacher runs 8 forwards an image once; compiled, a ResNet's run at twice the rate.
        if self.config.runtime.compile:
            teacher.embed = torch.compile(teacher.embed)
        task = ClassifyTask(dataclasses.replace(task.config, tta=True))
        loader = make_loader(
            data.store, "train", batch_size=256, shuffle=False, device=device,
            kind=self.store_kind, classes=data.classes, per_class=self.train_per_class(),
            unlabelled=self.train_unlabelled(),
        )  # fmt: skip
        rows = loader.reader.length  # the whole split, rows the loader skips included
        # the same teacher on the same images under the same precision: the same targets
        where = cache_path(path, data.store, rows=rows, classes=data.classes, device=device.type,
                           per_class=self.train_per_class(), unlabelled=self.train_unlabelled(),
                           precision=autocast_dtype_in_use(device))  # fmt: skip
        targets = cached(where, (rows, len(CLASSES)), lambda: teacher_targets(
            lambda batches: task.predict(teacher, batches), loader, rows, len(CLASSES)
        ))  # fmt: skip
        return targets.to(device)

    def loss(self, model, batch) -> torch.Tensor:
        images = batch["image"]
        if self.config.shift and model.training:
            images = random_shift(images, self.config.shift)
        logits = model(images).float()
        c = self.config
        per_image = F.cross_entropy(  # 0 for an unlabelled image (distill_unlabelled)
            logits, batch["label"], label_smoothing=c.label_smoothing, reduction="none",
            ignore_index=UNLABELLED,
        )  # fmt: skip
        if not c.teacher or not model.training:
            return per_image.mean()
        if self.teacher_log_probs is None:  # a task not prepared by the trainer
            self.prepare(images.device)
        if self.labelled is None:
            labelled = per_image.mean()
        else:  # the labels used only (_labels_used); a batch may hold none
            drawn = self.labelled[batch["index"]].float()
            labelled = (per_image * drawn).sum() / drawn.sum().clamp_min(1)
        targets = self.teacher_log_probs[batch["index"]]
        distilled = distillation_loss(logits, targets, c.distill_temperature)
        return (1 - c.distill_weight) * labelled + c.distill_weight * distilled

    def predict(self, model, loader) -> dict:
        """Logits, labels and embeddings of every sample; with `tta`, of the 8 symmetries of
        each image together (the log of the mean probability, the mean embedding)."""
        logits, labels, embeddings = [], [], []
        views = range(8) if self.config.tta else range(1)
        for batch in loader:
            images = batch["image"]
            n = len(images)
            # One view at a time: a CNN at full resolution runs half as fast on 8x the batch.
            features = torch.cat([model.embed(symmetric_view(images, v)) for v in views])
            probs = model.head(features).float().softmax(-1).view(len(views), n, -1).mean(0)
            logits.append(probs.clamp_min(1e-12).log().cpu())
            embeddings.append(features.float().view(len(views), n, -1).mean(0).cpu())
            labels.append(batch["label"].cpu())
        return {
            "logits": torch.cat(logits),
            "labels": torch.cat(labels),
            "embeddings": torch.cat(embeddings),
        }

    def evaluate(self, model, loader) -> dict:
        out = self.predict(model, loader)
        return M.classification_metrics(out["logits"], out["labels"])

    def report(self, model, loader, history, out: Path) -> dict:
        with torch.no_grad():
            pred = self.predict(model, loader)
        R.curves(history, ["loss"], ["accuracy", "auc_macro"], out / "curves.png", "classification")
        R.classification_figures(pred, out)
        return {"encoder": self.encoder_origin}

    def example_batch(self, batch_size: int, device: torch.device) -> dict:
        size = self.config.encoder.image_size
        return {
            "image": torch.rand(batch_size, 1, size, size, device=device),
            "label": torch.randint(0, len(CLASSES), (batch_size,), device=device),
        }


class SuperResolutionTask(_FinetuneTask):
    name = "finetune_sr"
    config_type = FinetuneSRConfig
    store_kind = SR
    selection_metric = "ssim"  # best.pt by default
    fixed_sections = ("encoder", "pretrained", "features", "data")
    FACTOR = 2
    EXAMPLE_LR_SIZE = 75  # DeepLense's SR set: 75x75 -> 150x150

    def build_model(self, encoder: ViTConfig | None = None) -> SuperResolution:
        return SuperResolution(
            self.encoder(encoder),
            factor=self.FACTOR,
            features=self.config.features,
            token_keep=self.config.token_keep,
        )

    def loss(self, model, batch) -> torch.Tensor:
        # The error of the output clamped to [0, 1], as evaluation, `predict` and the API use
        # it: the HR sky is about 0 and the LR sky is noise, and any value <= 0 there is then
        # right. On the raw output the model had to cancel the noise to the last digit, and what
        # it left cost the demo 0.13 SSIM and 2.7 dB (docs/recipes.md, "Super-resolution").
        # The gradient passes the clamp unchanged (straight through), so a faint pixel predicted
        # below 0 is still pulled up: a plain clamp left it none, and ended 0.3 dB lower.
        out = model(batch["lr"]).float()
        return F.mse_loss(out + (out.clamp(0, 1) - out).detach(), batch["hr"])

    def evaluate(self, model, loader) -> dict:
        preds, bicubic, targets = [], [], []
        for batch in loader:
            preds.append(model(batch["lr"]).float().clamp(0, 1).cpu())
            bicubic.append(M.bicubic(batch["lr"].float()).cpu())
            targets.append(batch["hr"].cpu())
        return M.sr_metrics(torch.cat(preds), torch.cat(bicubic), torch.cat(targets))

    def report(self, model, loader, history, out: Path) -> dict:
        R.curves(history, ["loss"], ["psnr", "ssim"], out / "curves.png", "super-resolution")
        R.sr_triptychs(model, loader, out / "triptychs.png")
        return {"encoder": self.encoder_origin}

    def example_batch(self, batch_size: int, device: torch.device) -> dict:
        n, f = self.EXAMPLE_LR_SIZE, self.FACTOR
        return {
            "lr": torch.rand(batch_size, 1, n, n, device=device),
            "hr": torch.rand(batch_size, 1, f * n, f * n, device=device),
        }


TASKS: dict[str, type[Task]] = {
    task.name: task for task in (PretrainTask, ClassifyTask, SuperResolutionTask)
}


def model_from_checkpoint(state: dict) -> tuple[Task, nn.Module]:
    """(task, model with the checkpoint's weights) for any lensperf checkpoint."""
    if state.get("task") not in TASKS:
        raise DataError(f"checkpoint of an unknown task {state.get('task')!r}")
    return TASKS[state["task"]].from_checkpoint(state)
