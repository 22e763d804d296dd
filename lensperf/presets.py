"""The one place that finds configs: preset names such as `cpu` or `model_ii` in a section of
the configs folder (data, pretrain, finetune_cls, finetune_sr), or a YAML path given as is."""

from __future__ import annotations

from pathlib import Path

from lensperf.errors import ConfigError

# Installed from a wheel the presets are package data beside this file; in the repository
# (an editable install, or running from the tree) they are its top-level configs/ folder.
_PACKAGED = Path(__file__).resolve().parent / "configs"
CONFIG_DIR = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parent.parent / "configs"
SECTIONS = ("data", "pretrain", "finetune_cls", "finetune_sr")


def preset_names(section: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / section).glob("*.yaml"))


def preset(section: str, name: str) -> Path:
    """The YAML file of preset `name` in `section`; an error naming the presets there if none."""
    if section not in SECTIONS:
        raise ValueError(f"unknown config section {section!r}")
    path = CONFIG_DIR / section / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(preset_names(section))
        raise ConfigError("", f"no config file or preset {name!r} (presets: {known})")
    return path


def resolve_config(value: str | Path, section: str) -> Path:
    """A config path (anything ending in .yaml/.yml, or an existing file) or a preset name."""
    path = Path(value)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return preset(section, str(value))
