"""`lensperf demo`: the whole pipeline on a small simulated set, sized for a 2-core CPU.

Simulate a Model II classification set and an SR set, pretrain the MAE on no_sub images,
fine-tune it for classification and for super-resolution, evaluate, and write every report
under --out. The recipes are configs/*/demo.yaml with their paths pointed into --out.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from lensperf.config import load_config
from lensperf.presets import preset
from lensperf.simulate.config import SimulationConfig, SRSimulationConfig
from lensperf.simulate.runner import default_workers, simulate_classification, simulate_sr
from lensperf.store.inspect import format_summary, sample_grid_png, summarize
from lensperf.train.run import evaluate, train

DEMO_N_PER_CLASS = 4000
DEMO_SR_PAIRS = 300


def run_demo(out: Path, *, workers: int | None = None, scale: float = 1.0) -> dict:
    """`scale` shrinks the data and epochs (tests run the demo at a fraction of its size)."""
    workers = workers or default_workers()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def timed(name, fn, *args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        timings[name] = round(time.perf_counter() - start, 2)
        print(f"[demo] {name}: {timings[name]:.1f} s")
        return result

    n_cls, n_sr = max(12, int(DEMO_N_PER_CLASS * scale)), max(8, int(DEMO_SR_PAIRS * scale))
    cls_config = load_config(SimulationConfig, preset("data", "model_ii"), [f"n_per_class={n_cls}"])
    cls_store = timed("simulate", simulate_classification, cls_config, out / "model_ii.zarr",
                      workers=workers, overwrite=True)  # fmt: skip
    sr_config = load_config(SRSimulationConfig, preset("data", "sr"), [f"n={n_sr}"])
    sr_store = timed(
        "simulate_sr", simulate_sr, sr_config, out / "sr.zarr", workers=workers, overwrite=True
    )
    for name, store in (("classification", cls_store), ("sr", sr_store)):
        print(format_summary(summarize(store)))
        sample_grid_png(store, out / f"{name}_samples.png")

    pretrained = out / "pretrain" / "checkpoint.pt"
    epochs = [] if scale >= 1 else ["epochs=1"]

    def stage(task: str, store: Path, *extra: str) -> dict:
        overrides = [f"out_dir={out / task}", f"data.store={store}", *extra, *epochs]
        return timed(task, train, task, preset(task, "demo"), overrides, overwrite=True)

    metrics = {
        "pretrain": stage("pretrain", cls_store),
        "finetune_cls": stage("finetune_cls", cls_store, f"pretrained={pretrained}"),
        "finetune_sr": stage("finetune_sr", sr_store, f"pretrained={pretrained}"),
    }
    metrics["evaluate_cls"] = timed(
        "evaluate",
        evaluate,
        out / "finetune_cls" / "checkpoint.pt",
        cls_store,
        out / "evaluate_cls",
    )
    result = {"timings_s": timings, "metrics": metrics}
    (out / "demo_summary.json").write_text(json.dumps(result, indent=2))
    _print_summary(metrics, out)
    return result


def _print_summary(metrics: dict, out: Path) -> None:
    cls, sr = metrics["finetune_cls"], metrics["finetune_sr"]
    nan = float("nan")
    print(
        f"[demo] MAE val loss {metrics['pretrain'].get('val_loss', nan):.4f} | "
        f"classification accuracy {cls.get('accuracy', nan):.3f}, "
        f"macro AUC {cls.get('auc_macro', nan):.3f} | "
        f"SR PSNR {sr.get('psnr', nan):.2f} dB (bicubic {sr.get('bicubic_psnr', nan):.2f}),"
        f" SSIM {sr.get('ssim', nan):.3f}"
    )
    print(f"[demo] reports in {out}/*/report, summary in {out / 'demo_summary.json'}")
