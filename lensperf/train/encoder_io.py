"""Move a pretrained encoder between runs: load it from a checkpoint or an exported directory
(encoder.safetensors + encoder.yaml), and export it; and start a classifier's head from another
run's (a linear probe's, for fine-tuning after probing)."""

from __future__ import annotations

from pathlib import Path

import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from lensperf.atomic import atomic_folder
from lensperf.config import from_dict, to_dict
from lensperf.errors import DataError
from lensperf.models.vit import ViTConfig, ViTEncoder
from lensperf.train.checkpoint import load_checkpoint

WEIGHTS, CONFIG, PREPROCESSING = "encoder.safetensors", "encoder.yaml", "preprocessing.yaml"


def encoder_from_checkpoint(state: dict) -> ViTEncoder:
    if state.get("encoder_config") is None:
        raise DataError(f"a {state.get('task')} checkpoint of a model with no ViT encoder")
    config = from_dict(ViTConfig, state["encoder_config"], prefix="encoder")
    encoder = ViTEncoder(config)
    encoder.load_state_dict(_weights_under(state, "encoder."))
    return encoder


def load_encoder(path: str | Path) -> ViTEncoder:
    """A ViT encoder from a lensperf checkpoint (any task) or an exported directory."""
    path = Path(path)
    if path.is_dir():
        if not (path / WEIGHTS).exists() or not (path / CONFIG).exists():
            raise DataError(f"{path} holds no exported encoder ({WEIGHTS} + {CONFIG})")
        config = from_dict(ViTConfig, yaml.safe_load((path / CONFIG).read_text()), prefix="encoder")
        encoder = ViTEncoder(config)
        try:
            encoder.load_state_dict(load_file(str(path / WEIGHTS)))
        except Exception as error:
            raise DataError(
                f"{path / WEIGHTS} does not fit {CONFIG} ({type(error).__name__})"
            ) from None
        return encoder
    return encoder_from_checkpoint(load_checkpoint(path))


def load_head(model: nn.Module, path: str | Path) -> None:
    """Copy the head of the classifier checkpoint at `path` into `model.head`, which must have
    the same shape (the same pool and local_width, the same number of classes)."""
    state = load_checkpoint(path)
    weights = _weights_under(state, "head.")
    if state.get("task") != "finetune_cls" or not weights or state.get("encoder_config") is None:
        raise DataError(f"{path} is not a ViT classifier's checkpoint (head_init needs one)")
    theirs, own = _shapes(weights), _shapes(model.head.state_dict())
    if theirs != own:
        raise DataError(
            f"{path}'s head (classes x features {theirs.get('1.weight', '?')}) does not fit "
            f"this model's {own['1.weight']}: pool and local_width must match"
        )
    model.head.load_state_dict(weights)


def _weights_under(state: dict, prefix: str) -> dict:
    """The checkpoint's weights of one submodule (`prefix`, e.g. "encoder."), named as in it."""
    return {k[len(prefix) :]: v for k, v in state["model"].items() if k.startswith(prefix)}


def _shapes(weights: dict) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in weights.items()}


def export_encoder(checkpoint: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write the checkpoint's encoder to the folder `out` (encoder.safetensors, encoder.yaml and
    preprocessing.yaml),
    whole or not at all. An existing file at `out`, or a folder with anything in it, is refused
    unless `overwrite` (a folder then is replaced)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file; export writes a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DataError(f"{out} is not empty (pass --overwrite to replace it)")
    state = load_checkpoint(checkpoint)
    encoder = encoder_from_checkpoint(state)
    weights = {k: v.contiguous() for k, v in encoder.state_dict().items()}
    with atomic_folder(out) as folder:
        save_file(weights, str(folder / WEIGHTS))
        (folder / CONFIG).write_text(yaml.safe_dump(to_dict(encoder.config), sort_keys=False))
        # how the training images were made from files (the input standardisation itself is in
        # encoder.yaml): for whoever applies the encoder to new files
        (folder / PREPROCESSING).write_text(yaml.safe_dump(state.get("preprocessing", {})))
    return out
