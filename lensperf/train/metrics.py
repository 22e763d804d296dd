"""Final numbers: classification (accuracy, ROC AUC, F1) and super-resolution (MSE, PSNR, SSIM on
[0, 1] images, always next to bicubic upsampling)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_f1_score,
)
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from lensperf.store import CLASSES


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy, F1 and one-vs-rest ROC AUC per class; a class absent from `labels` (or the
    only one present) has no AUC (NaN), and the macro AUC averages the classes that have one."""
    k = logits.shape[1]
    probs = logits.softmax(dim=1)
    per_class = multiclass_auroc(probs, labels, num_classes=k, average=None)
    counts = torch.bincount(labels, minlength=k)
    per_class = torch.where((counts > 0) & (counts < len(labels)), per_class, torch.nan)
    defined = per_class[~per_class.isnan()]
    out = {
        "accuracy": multiclass_accuracy(probs, labels, num_classes=k, average="micro").item(),
        "auc_macro": defined.mean().item() if len(defined) else float("nan"),
        "f1_macro": multiclass_f1_score(probs, labels, num_classes=k, average="macro").item(),
    }
    out.update({f"auc_{name}": v.item() for name, v in zip(CLASSES, per_class)})
    return out


def bicubic(lr: torch.Tensor, factor: int = 2) -> torch.Tensor:
    up = F.interpolate(lr, scale_factor=factor, mode="bicubic", align_corners=False)
    return up.clamp(0, 1)


def sr_metrics(pred: torch.Tensor, bicubic_up: torch.Tensor, target: torch.Tensor) -> dict:
    def scores(x):
        return {
            "mse": F.mse_loss(x, target).item(),
            "psnr": peak_signal_noise_ratio(x, target, data_range=1.0).item(),
            "ssim": structural_similarity_index_measure(x, target, data_range=1.0).item(),
        }

    ours, base = scores(pred), scores(bicubic_up)
    return {
        **ours,
        **{f"bicubic_{k}": v for k, v in base.items()},
        "psnr_gain_db": ours["psnr"] - base["psnr"],
    }
