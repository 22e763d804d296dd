"""Python API for notebooks.

    from lensperf import api
    model = api.load_model("runs/cpu/finetune_cls/checkpoint.pt")   # any task's checkpoint
    probs = api.predict(model, images)          # (B, 3) class probabilities, images (B, 1, H, W)
    emb = api.embed(model, images)              # (B, D) encoder embeddings
    hr = api.upscale(api.load_model("runs/cpu/finetune_sr/checkpoint.pt"), lr_images)
    encoder = api.load_encoder("exported_dir_or_checkpoint")
    mae = api.build_model("pretrain", "configs/pretrain/cpu.yaml")  # untrained, from a config
Images are float tensors in [0, 1]; numpy arrays are accepted too.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lensperf.config import load_config
from lensperf.models import MAE, Classifier, SuperResolution
from lensperf.train.checkpoint import load_checkpoint
from lensperf.train.encoder_io import load_encoder
from lensperf.train.tasks import TASKS, model_from_checkpoint

__all__ = ["build_model", "load_model", "load_encoder", "embed", "predict", "upscale"]


def build_model(task: str, config_path, overrides=()) -> nn.Module:
    """An untrained model of `task` ("pretrain", "finetune_cls", "finetune_sr") from a config."""
    config = load_config(TASKS[task].config_type, config_path, overrides)
    return TASKS[task](config).build_model()


def load_model(checkpoint) -> nn.Module:
    """The model of any lensperf checkpoint, in eval mode on the CPU."""
    return model_from_checkpoint(load_checkpoint(checkpoint))[1].eval()


def _images(x) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).float()
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[:, None]
    return x


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def embed(model: nn.Module, images) -> torch.Tensor:
    """(B, D) embeddings: the mean patch token of the model's encoder."""
    encoder = model.encoder if hasattr(model, "encoder") else model
    return encoder(_images(images).to(_device(model)))[:, 1:].mean(dim=1)


@torch.no_grad()
def predict(model: Classifier, images) -> torch.Tensor:
    """(B, 3) probabilities of no_sub, cdm, axion."""
    if not isinstance(model, Classifier):
        raise TypeError("predict needs a classifier (a finetune_cls checkpoint)")
    return model(_images(images).to(_device(model))).softmax(dim=1)


@torch.no_grad()
def upscale(model: SuperResolution, lr_images) -> torch.Tensor:
    """(B, 1, 2h, 2w) super-resolved images in [0, 1]."""
    if not isinstance(model, SuperResolution):
        raise TypeError("upscale needs a super-resolution model (a finetune_sr checkpoint)")
    return model(_images(lr_images).to(_device(model))).clamp(0, 1)


def reconstruct(model: MAE, images) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE loss, predicted patches and mask for `images` (a look at what pretraining learned)."""
    return model(_images(images).to(_device(model)))
