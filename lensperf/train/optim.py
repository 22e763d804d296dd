"""What the trainer optimises with: AdamW parameter groups (weight decay, layer-wise learning-rate
decay), the warmup + cosine schedule, and an exponential moving average of the weights."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from lensperf.errors import ConfigError


def parameter_groups(model: nn.Module, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups: biases, norms and the parameters a model declares (`no_weight_decay`, its
    tokens) are not decayed; with layer_decay < 1, a model that numbers its layers
    (`layer_of`, `num_layers`) gets lr scale layer_decay ** (num_layers - layer) per layer, so
    the head learns at the full rate and the patch embedding slowest (BEiT, MAE fine-tuning)."""
    exempt = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    if layer_decay < 1 and not hasattr(model, "layer_of"):
        raise ConfigError("optim.layer_decay", f"{type(model).__name__} has no layers to decay")
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decayed = not (p.ndim < 2 or name in exempt)
        layer = model.layer_of(name) if layer_decay < 1 else 0
        scale = layer_decay ** (model.num_layers - layer) if layer_decay < 1 else 1.0
        group = groups.setdefault(
            (layer, decayed),
            {"params": [], "weight_decay": weight_decay if decayed else 0.0, "lr_scale": scale},
        )
        group["params"].append(p)
    return [groups[key] for key in sorted(groups, key=lambda k: (not k[1], k[0]))]


def build_optimizer(model: nn.Module, optim) -> torch.optim.Optimizer:
    groups = parameter_groups(model, optim.weight_decay, optim.layer_decay)
    # One fused kernel for the whole update, on CUDA and on the CPU (torch >= 2.4).
    return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, fused=True)


def lr_at(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress_ = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(1.0, progress_)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


class WeightAverage:
    """An exponential moving average of a model's weights, copied buffers (batch-norm
    statistics) included. Its decay warms up as min(decay, (1 + n) / (10 + n)) after n updates,
    so early weights, far from the final ones, are forgotten quickly."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        weight = 1 - min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema = list(self.model.parameters())
        torch._foreach_lerp_(ema, [p.detach() for p in model.parameters()], weight)
        for mine, theirs in zip(self.model.buffers(), model.buffers()):
            mine.copy_(theirs)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])
