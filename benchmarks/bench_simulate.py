"""Simulation throughput: images per second per worker, per class (Model II) and for SR pairs.

Full-size times follow as N / (rate * workers); benchmarks/full_size_data.py measures them.
"""

import numpy as np
import pytest

from lensperf.config import load_config
from lensperf.presets import preset
from lensperf.simulate.config import SimulationConfig, SRSimulationConfig
from lensperf.simulate.runner import (
    RenderJob,
    _init_classification,
    _init_sr,
    _render_classification,
    _render_sr,
)
from lensperf.store import CLASSES

CHUNK = 64
# Not tests.conftest: importing it would switch the Triton interpreter on for this process.


@pytest.mark.parametrize("class_name", CLASSES)
def test_simulate_model_ii(benchmark, class_name):
    _init_classification(load_config(SimulationConfig, preset("data", "model_ii")))
    c = CLASSES.index(class_name)
    job = RenderJob("train", 0, np.full(CHUNK, c), np.arange(CHUNK))
    benchmark(_render_classification, job)
    benchmark.extra_info["images_per_s"] = CHUNK / benchmark.stats["median"]


def test_simulate_sr_pairs(benchmark):
    _init_sr(load_config(SRSimulationConfig, preset("data", "sr")))
    n = 8
    job = RenderJob("train", 0, np.zeros(n, int), np.arange(n))
    benchmark(_render_sr, job)
    benchmark.extra_info["pairs_per_s"] = n / benchmark.stats["median"]
