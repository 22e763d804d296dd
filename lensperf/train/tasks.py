"""The three training tasks: what the trainer needs to know about each.

A task builds its model, gives the loss of a batch, evaluates on the validation loader and
writes its report. `fixed_sections` are the config sections a resumed run must share with its
checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from lensperf.models import MAE, Classifier, SuperResolution, ViTEncoder
from lensperf.store import CLASSIFICATION, SR
from lensperf.train import metrics as M
from lensperf.train import report as R
from lensperf.train.encoder_io import load_encoder


class PretrainTask:
    name = "pretrain"
    store_kind = CLASSIFICATION
    fixed_sections = ("model", "data")

    def __init__(self, config):
        self.config = config

    def build_model(self) -> MAE:
        return MAE(self.config.model)

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


def _encoder(config) -> tuple[ViTEncoder, str]:
    if config.pretrained:
        return load_encoder(config.pretrained), f"pretrained: {config.pretrained}"
    return ViTEncoder(config.encoder), "from scratch"


class ClassifyTask:
    name = "finetune_cls"
    store_kind = CLASSIFICATION
    fixed_sections = ("encoder", "pretrained", "linear_probe", "data")

    def __init__(self, config):
        self.config = config

    def build_model(self) -> Classifier:
        encoder, self.origin = _encoder(self.config)
        return Classifier(encoder, num_classes=3, linear_probe=self.config.linear_probe)

    def loss(self, model, batch) -> torch.Tensor:
        logits = model(batch["image"])
        return F.cross_entropy(
            logits.float(), batch["label"], label_smoothing=self.config.label_smoothing
        )

    def predict(self, model, loader) -> dict:
        logits, labels, embeddings = [], [], []
        for batch in loader:
            features = model.embed(batch["image"])
            logits.append(model.head(features).float().cpu())
            embeddings.append(features.float().cpu())
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
        return {"encoder": getattr(self, "origin", "")}


class SuperResolutionTask:
    name = "finetune_sr"
    store_kind = SR
    fixed_sections = ("encoder", "pretrained", "features", "data")

    def __init__(self, config):
        self.config = config

    def build_model(self) -> SuperResolution:
        encoder, self.origin = _encoder(self.config)
        return SuperResolution(encoder, factor=2, features=self.config.features)

    def loss(self, model, batch) -> torch.Tensor:
        return F.mse_loss(model(batch["lr"]).float(), batch["hr"])

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
        return {"encoder": getattr(self, "origin", "")}


TASKS = {"pretrain": PretrainTask, "finetune_cls": ClassifyTask, "finetune_sr": SuperResolutionTask}
