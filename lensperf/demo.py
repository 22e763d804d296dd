"""`lensperf demo`: the pipeline end to end on a small simulated set, sized for a 2-core CPU.

For now the data stages: simulate a classification and an SR set, inspect both, write sample
grids and a summary. Pretraining, fine-tuning and the report join when the training issue lands.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from lensperf.config import load_config
from lensperf.inspect_store import format_summary, sample_grid_png, summarize
from lensperf.simulate.config import SimulationConfig, SRSimulationConfig
from lensperf.simulate.runner import default_workers, simulate_classification, simulate_sr

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "data"
DEMO_N_PER_CLASS = 200
DEMO_SR_PAIRS = 100


def run_demo(out: Path, *, workers: int | None = None) -> dict:
    workers = workers or default_workers()
    out.mkdir(parents=True, exist_ok=True)
    timings = {}

    start = time.perf_counter()
    cls_config = load_config(
        SimulationConfig, CONFIG_DIR / "model_ii.yaml", [f"n_per_class={DEMO_N_PER_CLASS}"]
    )
    cls_store = simulate_classification(
        cls_config, out / "model_ii.zarr", workers=workers, overwrite=True
    )
    timings["simulate_classification_s"] = time.perf_counter() - start

    start = time.perf_counter()
    sr_config = load_config(SRSimulationConfig, CONFIG_DIR / "sr.yaml", [f"n={DEMO_SR_PAIRS}"])
    sr_store = simulate_sr(sr_config, out / "sr.zarr", workers=workers, overwrite=True)
    timings["simulate_sr_s"] = time.perf_counter() - start

    summaries = {}
    for name, store in (("classification", cls_store), ("sr", sr_store)):
        summaries[name] = summarize(store)
        print(format_summary(summaries[name]))
        print(f"wrote {sample_grid_png(store, out / f'{name}_samples.png')}")
    result = {"timings": timings, "stores": summaries}
    (out / "demo_summary.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / 'demo_summary.json'}")
    return result
