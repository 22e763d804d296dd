"""Batch-norm statistics for evaluation ("precise BN")."""

from __future__ import annotations

import torch
from torch import nn

RECALIBRATION_BATCHES = 8  # recent training batches that refresh batch-norm statistics


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, batches, task) -> None:
    """Batch-norm running statistics recomputed with the current weights over recent training
    batches ("precise BN"): the running averages lag weights that move fast. A model without
    batch norm is left alone."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or not batches:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    model.train()
    for batch in batches:
        task.loss(model, batch)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
