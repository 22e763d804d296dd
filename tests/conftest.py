import os

# The Triton interpreter must be on before any @triton.jit decoration runs, i.e. before
# `kernels` is imported anywhere in this process: CPU tests then exercise the real kernels.
os.environ.setdefault("TRITON_INTERPRET", "1")

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lensperf.presets import CONFIG_DIR

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = CONFIG_DIR
REAL_SAMPLES = Path(__file__).resolve().parent / "data" / "deeplense-model-ii-samples"

os.environ.setdefault("LENSPERF_PROGRESS", "0")


def run_cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """`python -m lensperf ARGS` in a subprocess, capturing text output."""
    return subprocess.run(
        [sys.executable, "-m", "lensperf", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        **kwargs,
    )


@pytest.fixture
def real_samples() -> dict[str, np.ndarray]:
    return {c: np.load(REAL_SAMPLES / f"{c}.npy") for c in ("no_sub", "cdm", "axion")}


@pytest.fixture
def model_ii_config():
    from lensperf.config import load_config
    from lensperf.simulate.config import SimulationConfig

    def make(*overrides: str):
        return load_config(SimulationConfig, CONFIGS / "data" / "model_ii.yaml", overrides)

    return make


@pytest.fixture
def sr_config():
    from lensperf.config import load_config
    from lensperf.simulate.config import SRSimulationConfig

    def make(*overrides: str):
        return load_config(SRSimulationConfig, CONFIGS / "data" / "sr.yaml", overrides)

    return make
