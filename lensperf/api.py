"""Python API for notebooks and scripts.

    from lensperf import api
    store = api.simulate("model_ii", "data/small.zarr", n_per_class=500)
    images, labels = api.samples(store, "val", 8)
    api.train("pretrain", "demo", [f"data.store={store}", "out_dir=runs/mae"])
    model = api.load_model("runs/cpu/finetune_cls/checkpoint.pt")   # any task's checkpoint
    both = api.load_model([vit_checkpoint, resnet_checkpoint])  # classifiers, averaged
    probs = api.predict(model, images, tta=True)  # (B, 3): no_sub, cdm, axion
    emb = api.embed(model, images)              # (B, D) embeddings
    hr = api.upscale(api.load_model("runs/cpu/finetune_sr/checkpoint.pt"), lr_images)
    encoder = api.load_encoder("exported_dir_or_checkpoint")
    mae = api.build_model("pretrain", "cpu")    # untrained, from a preset or a YAML file
Images are float tensors or numpy arrays in [0, 1], (B, 1, H, W), (B, H, W) or (H, W).
Importing this module changes no global state (matplotlib's backend, torch's threads, signals).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from lensperf.config import load_config
from lensperf.data.augment import symmetric_view
from lensperf.models import MAE, Classifier, SuperResolution
from lensperf.models.resnet import ResNet
from lensperf.presets import resolve_config
from lensperf.runtime import run_autocast
from lensperf.store import CLASSES, open_store, read_rows
from lensperf.train.encoder_io import load_encoder
from lensperf.train.ensemble import Ensemble, load_classifiers
from lensperf.train.tasks import TASKS

__all__ = [
    "CLASSES", "build_model", "embed", "load_encoder", "load_model", "predict", "samples",
    "simulate", "train", "upscale",
]  # fmt: skip


def simulate(preset: str, out, *, n_per_class: int = 1000, workers: int | None = None,
             overwrite: bool = True) -> Path:  # fmt: skip
    """Simulate a classification store from a data preset (model_i, model_ii, model_iii) or a
    YAML file; replaces `out` unless overwrite=False."""
    from lensperf.simulate.config import SimulationConfig
    from lensperf.simulate.runner import default_workers, simulate_classification

    config = load_config(
        SimulationConfig, resolve_config(preset, "data"), [f"n_per_class={n_per_class}"]
    )
    return simulate_classification(
        config, out, workers=workers or default_workers(), overwrite=overwrite
    )


def samples(store, split: str = "val", n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` images of a classification store's split and their labels (index into
    CLASSES; -1 for an unlabelled training image)."""
    group = open_store(store, "classification")
    return (
        read_rows(group[f"{split}/images"], slice(0, n)),
        read_rows(group[f"{split}/labels"], slice(0, n)),
    )


def train(task: str, config="demo", overrides=(), *, resume: bool = False,
          overwrite: bool = False) -> dict:  # fmt: skip
    """Train `task` ("pretrain", "finetune_cls", "finetune_sr") from a preset name or a YAML
    file plus `key.sub=value` overrides; returns the final metrics."""
    from lensperf.train.run import train as run

    return run(task, resolve_config(config, task), overrides, resume=resume, overwrite=overwrite)


def build_model(task: str, config, overrides=()) -> nn.Module:
    """An untrained model of `task` ("pretrain", "finetune_cls", "finetune_sr") from a preset
    name or a config file."""
    config = load_config(TASKS[task].config_type, resolve_config(config, task), overrides)
    return TASKS[task](config).build_model()


def load_model(checkpoint) -> nn.Module:
    """The model of any lensperf checkpoint (checkpoint.pt, best.pt, ema.pt), in eval mode on
    the CPU. `model.preprocessing` says how its training images were made from their files;
    predict, embed and upscale apply it to the images they are given, and run at
    `model.precision`, the run's `runtime.precision` (as `lensperf predict` does). A list of
    classifier checkpoints loads as one classifier, the mean of their probabilities, each
    member at its own precision (as `lensperf predict --checkpoint A --checkpoint B`)."""
    task, model, preprocessing = load_classifiers(checkpoint)
    model.eval().preprocessing = preprocessing
    model.precision = task.config.runtime.precision
    return model


def _images(x, model: nn.Module | None = None) -> torch.Tensor:
    """(B, 1, H, W) float32 on the model's device, preprocessed as the model's training images
    were (per-image min-max scaling, in float64 as `lensperf predict` does for files)."""
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).double()
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[:, None]
    if getattr(model, "preprocessing", {}).get("minmax"):
        lo = x.amin(dim=(-2, -1), keepdim=True)
        span = x.amax(dim=(-2, -1), keepdim=True) - lo
        x = torch.where(span > 0, (x - lo) / span.clamp_min(1e-300), 0.0).clamp(0, 1)
    return x.float().to(_device(model)) if model is not None else x.float()


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _precision(model: nn.Module) -> torch.autocast:
    """Autocast at a loaded model's training precision; fp32 for a model built here."""
    return run_autocast(getattr(model, "precision", "fp32"), _device(model))


@torch.no_grad()
def embed(model: nn.Module, images) -> torch.Tensor:
    """(B, D) embeddings: a classifier's features before its head, or the mean patch token of
    a model's ViT encoder (or of an encoder itself)."""
    x = _images(images, model)
    if hasattr(model, "embed"):
        with _precision(model):
            return model.embed(x).float()
    encoder = model.encoder if hasattr(model, "encoder") else model
    with _precision(model):
        return encoder(x)[:, 1:].mean(dim=1).float()


@torch.no_grad()
def predict(model: nn.Module, images, *, tta: bool = False) -> torch.Tensor:
    """(B, 3) probabilities of no_sub, cdm, axion; with `tta`, averaged over the 8 symmetries
    of each image."""
    if not isinstance(model, Classifier | ResNet | Ensemble):
        raise TypeError("predict needs a classifier (a finetune_cls checkpoint)")
    x = _images(images, model)
    views = range(8) if tta else range(1)
    with _precision(model):
        probs = [model(symmetric_view(x, v)).float().softmax(1) for v in views]
    return torch.stack(probs).mean(0)


@torch.no_grad()
def upscale(model: SuperResolution, lr_images) -> torch.Tensor:
    """(B, 1, 2h, 2w) super-resolved images in [0, 1]."""
    if not isinstance(model, SuperResolution):
        raise TypeError("upscale needs a super-resolution model (a finetune_sr checkpoint)")
    with _precision(model):
        return model(_images(lr_images, model)).float().clamp(0, 1)


def reconstruct(model: MAE, images) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE loss, predicted patches and mask for `images` (a look at what pretraining learned)."""
    return model(_images(images, model))
