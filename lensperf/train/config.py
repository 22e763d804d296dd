"""Configs of the three training commands (frozen dataclasses, loaded from configs/*/NAME.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lensperf.config import require
from lensperf.models.mae import MAEConfig
from lensperf.models.resnet import ResNetConfig
from lensperf.models.vit import ViTConfig


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    store: str = "data/model_ii.zarr"
    batch_size: int = 256
    backend: Literal["dali", "torch", "memory"] = "memory"
    num_workers: int = 0
    augment: bool = True
    # Pretrain on these classes only (the MAE learns no_sub images); empty = all.
    classes: tuple[str, ...] = ()
    # Train on this many labelled images of each class only, drawn once with a fixed seed (how
    # far a few labels go; validation keeps every image); 0: all.
    labels_per_class: int = 0

    def __post_init__(self):
        require(self.batch_size >= 1, "batch_size", "must be at least 1")
        require(self.labels_per_class >= 0, "labels_per_class", "must be non-negative (0: all)")
        require(self.num_workers >= 0, "num_workers", "must be non-negative")


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_epochs: float = 1.0
    grad_clip: float = 1.0  # 0 disables clipping (the non-finite guard still runs)
    # Layer-wise lr decay: layer l of L learns at lr * layer_decay ** (L - l); 1 disables it.
    layer_decay: float = 1.0
    # Exponential moving average of the weights, evaluated and saved beside them; 0 disables.
    ema: float = 0.0

    def __post_init__(self):
        require(self.lr > 0, "lr", "must be positive")
        require(0 <= self.min_lr <= self.lr, "min_lr", "must be in [0, lr]")
        require(self.weight_decay >= 0, "weight_decay", "must be non-negative")
        require(all(0 <= b < 1 for b in self.betas), "betas", "must be in [0, 1)")
        require(self.warmup_epochs >= 0, "warmup_epochs", "must be non-negative")
        require(self.grad_clip >= 0, "grad_clip", "must be non-negative")
        require(0 < self.layer_decay <= 1, "layer_decay", "must be in (0, 1]")
        require(0 <= self.ema < 1, "ema", "must be in [0, 1)")


@dataclass(frozen=True, kw_only=True)
class RuntimeConfig:
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bf16 where the hardware has it, fp16 (with loss scaling) on older CUDA GPUs, else fp32
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    compile: bool = True
    # reduce-overhead: CUDA graphs, for GPU steps bound by kernel launches (on an H200 lensperf's
    # MAE step took 18-19 ms at batch 128 and at 1024 alike, for 0.6 ms of matmuls at 1024);
    # on the CPU the same as default
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    kernels: Literal["auto", "on", "off"] = "auto"  # auto: Triton kernels on CUDA only
    seed: int = 0
    deterministic: bool = False
    checkpoint_every: int = 0  # steps between checkpoints; 0: at the end of each epoch only
    log_every: int = 10
    eval_every: float = 1.0  # epochs between evaluations (fractions allowed), and at the end
    threads: int = 0  # torch intra-op threads; 0: torch's default
    # best.pt keeps the model of the best evaluation by this validation metric; empty: the
    # task's own (val_loss for pretraining, accuracy for classification, ssim for SR).
    select_metric: str = ""
    early_stop_patience: int = 0  # stop after this many evaluations without improvement; 0: off
    tensorboard: Literal["auto", "on", "off"] = "auto"  # auto: when tensorboard is installed

    def __post_init__(self):
        require(self.checkpoint_every >= 0, "checkpoint_every", "must be non-negative")
        require(self.log_every >= 1, "log_every", "must be at least 1")
        require(self.eval_every > 0, "eval_every", "must be positive")
        require(self.threads >= 0, "threads", "must be non-negative")
        require(self.early_stop_patience >= 0, "early_stop_patience", "must be non-negative")


def _check_schedule(config) -> None:
    require(config.epochs >= 1, "epochs", "must be at least 1")
    require(
        config.optim.warmup_epochs <= config.epochs,
        "optim.warmup_epochs",
        f"must not exceed epochs={config.epochs}",
    )


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    name: str = "pretrain"
    out_dir: str = "runs/pretrain"
    epochs: int = 10
    model: MAEConfig = field(default_factory=MAEConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(classes=("no_sub",)))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1.5e-3))
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self):
        _check_schedule(self)


@dataclass(frozen=True, kw_only=True)
class FinetuneClsConfig:
    name: str = "finetune_cls"
    out_dir: str = "runs/finetune_cls"
    epochs: int = 10
    # "vit": lensperf's encoder (pretrained or from scratch) with a head; "resnet": the
    # supervised CNN baseline, from scratch.
    arch: Literal["vit", "resnet"] = "vit"
    # A pretraining checkpoint or an exported encoder directory; empty trains from scratch.
    pretrained: str = ""
    encoder: ViTConfig = field(default_factory=ViTConfig)  # used when training from scratch
    resnet: ResNetConfig = field(default_factory=ResNetConfig)  # used when arch=resnet
    linear_probe: bool = False
    # A classifier checkpoint (arch=vit; a linear probe's, say) whose head starts this run's
    # head instead of a fresh one: probe first, then fine-tune (LP-FT), which helps with few
    # labels (docs/recipes.md, FL17). Its head must fit this model's (pool, local_width).
    head_init: str = ""
    label_smoothing: float = 0.0
    # A trained classifier checkpoint (any arch: the ResNet's, say) whose predictions the model
    # also learns (knowledge distillation; train/distill.py): the loss is (1 - distill_weight) x
    # cross-entropy with the labels + distill_weight x T^2 x KL(teacher || model) at T =
    # distill_temperature, the teacher's probabilities averaged over each training image's 8
    # symmetries, computed once before training and cached beside the teacher's checkpoint (in
    # teacher_targets/, for the next fine-tune from it). The teacher is not saved with the
    # model. On its own training images a teacher teaches little (docs/recipes.md, KD1); see
    # distill_unlabelled.
    teacher: str = ""
    distill_weight: float = 0.5
    distill_temperature: float = 1.0
    # Train on every training image, the store's unlabelled ones (label -1: imported from an
    # unlabelled/ folder) included, the teacher's targets on all of them and the labels where
    # there are (with data.labels_per_class, the drawn ones only): a teacher trained on the
    # labelled images labels the rest, which a fine-tune on the labels alone never sees.
    distill_unlabelled: bool = False
    # The encoder sees this fraction of each image's patches, the brightest (the arc; the rest
    # is empty sky), in training and evaluation. 1 keeps every patch. arch=vit only.
    token_keep: float = 1.0
    # What the head sees of the patch tokens: their mean, or their mean and per-feature maximum
    # side by side (no measurable cost; fewer held-out errors after 10 and 45 epochs, more after
    # the recipe's 30: docs/recipes.md, E19). arch=vit only.
    pool: Literal["mean", "mean_max"] = "mean"
    # Channels of a small CNN on the whole image beside the encoder, its features joined to the
    # pooled tokens in the head (models/heads.py, LocalBranch; docs/recipes.md, E24). 0: none.
    # arch=vit only.
    local_width: int = 0
    tta: bool = False  # evaluate on the mean of the 8 symmetries of each image
    # Training images are moved by a random whole number of pixels in [-shift, shift] on each
    # axis (wrapping round; DeepLense images' edges are empty sky), so that the model does not
    # key on where the simulator puts the lens. 0 disables it.
    shift: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self):
        _check_schedule(self)
        require(0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
        require(self.shift >= 0, "shift", "must be non-negative")
        require(0 <= self.distill_weight <= 1, "distill_weight", "must be in [0, 1]")
        require(self.distill_temperature > 0, "distill_temperature", "must be positive")
        if self.distill_unlabelled:
            require(bool(self.teacher), "distill_unlabelled", "needs a teacher")
        require(0 < self.token_keep <= 1, "token_keep", "must be in (0, 1]")
        require(self.local_width >= 0, "local_width", "must be non-negative")
        require(
            not (self.local_width and self.linear_probe), "local_width", "needs linear_probe=false"
        )
        if self.arch == "resnet":
            require(not self.pretrained, "pretrained", "must be empty for arch=resnet")
            require(not self.linear_probe, "linear_probe", "needs arch=vit")
            require(not self.head_init, "head_init", "needs arch=vit")
            require(self.pool == "mean", "pool", "needs arch=vit")
            require(self.local_width == 0, "local_width", "needs arch=vit")


@dataclass(frozen=True, kw_only=True)
class FinetuneSRConfig:
    name: str = "finetune_sr"
    out_dir: str = "runs/finetune_sr"
    epochs: int = 10
    pretrained: str = ""
    encoder: ViTConfig = field(default_factory=ViTConfig)
    features: int = 48
    # The encoder sees this fraction of the LR image's patches, the brightest (the arc); the
    # convolutional path still sees every pixel. 1 keeps every patch.
    token_keep: float = 1.0
    data: DataConfig = field(
        default_factory=lambda: DataConfig(store="data/sr.zarr", batch_size=32)
    )
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-4))
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self):
        _check_schedule(self)
        require(self.features >= 4, "features", "must be at least 4")
        require(0 < self.token_keep <= 1, "token_keep", "must be in (0, 1]")
