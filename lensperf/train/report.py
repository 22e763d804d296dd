"""Report figures (matplotlib, PNG): curves over epochs, MAE reconstructions, ROC curves,
confusion matrix, classification report, PCA / t-SNE of embeddings, SR triptychs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lensperf.figures import axes_grid, figure, save_png
from lensperf.store import CLASSES
from lensperf.train.metrics import bicubic

MAX_TSNE_POINTS = 1500  # t-SNE is O(n^2) in memory; enough points to see the clusters
MIN_PROJECTION_POINTS = 5  # t-SNE needs its perplexity (at least 2) below the point count


def _save(fig, path: Path) -> None:
    save_png(fig, path)


def curves(history: dict, train_keys, eval_keys, path: Path, title: str) -> None:
    if not history["train"]:
        return
    fig, axes = figure(1, 1 + len(eval_keys), figsize=(4 * (1 + len(eval_keys)), 3.2))
    axes = np.atleast_1d(axes)
    train = history["train"]
    for key in train_keys:
        axes[0].plot([r["epoch"] for r in train], [r[key] for r in train], label=f"train {key}")
    for ax, key in zip(axes[1:], eval_keys):
        points = [(r["epoch"], r[key]) for r in history["eval"] if key in r]
        if points:
            ax.plot(*zip(*points), marker="o")
        ax.set_title(key)
        ax.set_xlabel("epoch")
    axes[0].set_xlabel("epoch")
    axes[0].set_title(f"{title}: training loss")
    axes[0].set_yscale("log")
    _save(fig, path)


@torch.no_grad()
def reconstructions(model, loader, path: Path, n: int = 6) -> None:
    from lensperf.models.mae import unpatchify

    batch = next(iter(loader))
    images = batch["image"][:n]
    torch.manual_seed(0)
    _, pred, mask = model(images)
    p = model.config.encoder.patch_size
    grid = (images.shape[-2] // p, images.shape[-1] // p)
    recon = unpatchify(pred.float(), p, grid, images.shape[1]).clamp(0, 1)
    mask_img = unpatchify(mask.unsqueeze(-1).expand(-1, -1, p * p).float(), p, grid, 1)
    masked = images * (1 - mask_img)
    # The loss covers removed patches only, so predictions on visible ones mean nothing: paste
    # the visible input back, as MAE's own figures do.
    recon = masked + recon * mask_img
    fig, axes = axes_grid(3, len(images), figsize=(1.8 * len(images), 5.6))
    for j in range(len(images)):
        for i, (name, img) in enumerate(
            (("input", images), ("visible", masked), ("reconstruction", recon))
        ):
            axes[i, j].imshow(img[j, 0].cpu(), cmap="inferno", vmin=0, vmax=1)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if j == 0:
                axes[i, j].set_ylabel(name)
    _save(fig, path)


def classification_figures(pred: dict, out: Path) -> None:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from sklearn.metrics import classification_report, confusion_matrix, roc_curve

    probs = pred["logits"].softmax(1).numpy()
    labels = pred["labels"].numpy()
    fig, ax = figure(figsize=(4.5, 4))
    for k, name in enumerate(CLASSES):
        if (labels == k).any() and (labels != k).any():
            fpr, tpr, _ = roc_curve(labels == k, probs[:, k])
            ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend()
    _save(fig, out / "roc.png")

    matrix = confusion_matrix(labels, probs.argmax(1), labels=range(len(CLASSES)))
    fig, ax = figure(figsize=(4, 3.6))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center")
    ax.set_xticks(range(len(CLASSES)), CLASSES)
    ax.set_yticks(range(len(CLASSES)), CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    _save(fig, out / "confusion_matrix.png")

    text = classification_report(
        labels,
        probs.argmax(1),
        labels=range(len(CLASSES)),
        target_names=CLASSES,
        digits=4,
        zero_division=0,
    )
    (out / "classification_report.txt").write_text(text)

    emb = pred["embeddings"].numpy()
    if len(emb) < MIN_PROJECTION_POINTS:
        return  # too few points to project
    keep = np.random.default_rng(0).permutation(len(emb))[:MAX_TSNE_POINTS]
    emb, lab = emb[keep], labels[keep]
    fig, axes = figure(1, 2, figsize=(9, 4))
    for ax, (name, points) in zip(axes, _projections(emb, PCA, TSNE)):
        for k, cls in enumerate(CLASSES):
            ax.scatter(*points[lab == k].T, s=4, label=cls)
        ax.set_title(name)
        ax.legend(markerscale=3)
    _save(fig, out / "embeddings.png")


def _projections(emb, pca_cls, tsne_cls):
    yield "PCA", pca_cls(n_components=2).fit_transform(emb)
    perplexity = max(2.0, min(30.0, (len(emb) - 1) / 3))
    yield (
        "t-SNE",
        tsne_cls(n_components=2, perplexity=perplexity, init="pca", random_state=0).fit_transform(
            emb
        ),
    )


@torch.no_grad()
def sr_triptychs(model, loader, path: Path, n: int = 4) -> None:
    batch = next(iter(loader))
    lr, hr = batch["lr"][:n], batch["hr"][:n]
    pred = model(lr).float().clamp(0, 1)
    up = bicubic(lr.float())
    columns = (("LR", lr), ("bicubic", up), ("prediction", pred), ("HR", hr))
    fig, axes = axes_grid(len(lr), 4, figsize=(8, 2.1 * len(lr)))
    for i in range(len(lr)):
        for j, (name, img) in enumerate(columns):
            axes[i, j].imshow(img[i, 0].float().cpu(), cmap="inferno", vmin=0, vmax=1)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if i == 0:
                axes[i, j].set_title(name)
    _save(fig, path)
