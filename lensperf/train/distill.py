"""Knowledge distillation for the classifier: a trained teacher's predictions on the training
images, learnt beside the labels (`FinetuneClsConfig.teacher`).

The teacher's targets are computed once, before training, on every training image averaged
over its 8 symmetries, and looked up by the batch's rows: a per-step teacher forward halved the
fine-tune's speed on the 2-core CPU (the ResNet's forward runs at about 600 images a second
there, the ViT's training step at 770), and the averaged teacher is the better one (the
ResNet's held-out errors fall from 2-19 to 0-4, docs/recipes.md, E26). The class of an image
does not change with its symmetry, so one target serves every augmented view of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lensperf.progress import progress


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
