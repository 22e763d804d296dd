"""`lensperf bench`: measure, on this machine, how fast each stage trains and where time goes.

Writes OUT/results.json, OUT/results.md (tables), OUT/throughput.png and OUT/profile.txt:
  * training throughput of MAE pretraining, classification and SR fine-tuning as eager fp32,
    compiled, compiled + bf16 and (on CUDA) compiled + bf16 + Triton kernels, with the plain
    reference MAE (public-code style) measured in the same run;
  * FLOPs per image and the fraction of the measured matmul peak reached;
  * the loader alone, next to what pretraining consumes;
  * time to accuracy (time_to_target.py), when asked for: lensperf's route, its ViT from
    scratch and a ResNet baseline trained on one store, their accuracy and AUC against training
    time and images seen, and an SR fine-tune against its quality targets; the headline;
  * machine, library versions, git commit and settings.
"""

from __future__ import annotations

import json
import platform
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lensperf.bench.throughput import flops, summarize, throughput, workloads
from lensperf.bench.time_to_target import run_time_to_target
from lensperf.presets import preset
from lensperf.runtime import native_bf16


@dataclass(frozen=True)
class Settings:
    quick: bool
    device: torch.device

    @property
    def batch(self) -> dict[str, int]:
        if self.device.type == "cuda":
            return {"pretrain": 256, "finetune_cls": 256, "finetune_sr": 64}
        return {"pretrain": 128, "finetune_cls": 64, "finetune_sr": 16}

    @property
    def timing(self) -> dict[str, int]:
        if self.quick:
            return {"warmup": 2, "windows": 3, "steps_per_window": 2}
        return {"warmup": 3, "windows": 5, "steps_per_window": 5}

    @property
    def duel_timing(self) -> dict[str, int]:
        """The head-to-head of each task's best modes: many short windows, so that neighbours
        meet the same speed of a drifting host."""
        if self.quick:
            return {"warmup": 1, "windows": 6, "steps_per_window": 1}
        return {"warmup": 1, "windows": 20, "steps_per_window": 2}


def _environment(device: torch.device) -> dict:
    import importlib.metadata as md

    versions = {}
    for name in (
        "torch",
        "triton",
        "numpy",
        "zarr",
        "nvidia-dali-cuda120",
        "lenstronomy",
        "torchmetrics",
    ):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    try:
        here = Path(__file__).parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=5).stdout.strip() or None  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit = None
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "versions": versions,
        "git_commit": commit,
    }


def loader_rate(settings: Settings, workdir: Path) -> dict:
    """Images/s of each loader backend on a freshly simulated Model II store."""
    from lensperf.config import load_config
    from lensperf.data import make_loader
    from lensperf.simulate.config import SimulationConfig
    from lensperf.simulate.runner import default_workers, simulate_classification

    n = 400 if settings.quick else 3000
    config = load_config(SimulationConfig, preset("data", "model_ii"), [f"n_per_class={n}"])
    store = simulate_classification(
        config, workdir / "bench.zarr", workers=default_workers(), overwrite=True
    )
    rates = {}
    for backend, workers in (("memory", 0), ("torch", 0), ("torch", 2), ("dali", 1)):
        loader = make_loader(store, "train", batch_size=256, backend=backend, num_workers=workers,
                             augment=True, device=settings.device)  # fmt: skip
        list(loader)  # warm-up epoch (workers, caches)
        start, count = time.perf_counter(), 0
        for batch in loader:
            count += len(batch["index"])
        rates[f"{backend}_{workers}w"] = count / (time.perf_counter() - start)
        loader.close()
    return rates


def profile_step(settings: Settings, out: Path) -> None:
    """Top operators of one MAE step (bf16 where native): where the time goes."""
    from torch.profiler import ProfilerActivity, profile

    make, loss_fn, _ = workloads(settings.batch, settings.device)["pretrain"]
    model = make(False).to(settings.device)
    activities = [ProfilerActivity.CPU] + (
        [ProfilerActivity.CUDA] if settings.device.type == "cuda" else []
    )
    amp = native_bf16(settings.device)
    with torch.autocast(settings.device.type, dtype=torch.bfloat16, enabled=amp):
        loss_fn(model).backward()  # warm-up outside the profile
        with profile(activities=activities) as prof:
            loss_fn(model).backward()
    key = "self_cuda_time_total" if settings.device.type == "cuda" else "self_cpu_time_total"
    out.write_text(prof.key_averages().table(sort_by=key, row_limit=25))


def measured_speed(settings: Settings, out: Path) -> dict:
    """Every workload's training images/s, FLOPs and peak fraction, the loaders' rates, their
    summary, and one MAE step's profile written to OUT/profile.txt."""
    found = throughput(settings.batch, settings.device, settings.timing, settings.duel_timing)
    found["flops"] = flops(settings.batch, settings.device, found["throughput"])
    with tempfile.TemporaryDirectory(prefix="lensperf-bench-") as tmp:
        found["loader_images_per_s"] = loader_rate(settings, Path(tmp))
    profile_step(settings, out / "profile.txt")
    found["summary"] = summarize(found)
    return found


def run_bench(
    out: Path,
    *,
    quick: bool,
    with_time_to_target: bool,
    store: Path | None = None,
    sr_store: Path | None = None,
    seeds: int = 1,
    holdout: Path | None = None,
    long_epochs: int | None = None,
    long_pretrain_epochs: int | None = None,
    measure_throughput: bool = True,
) -> dict:
    """`measure_throughput=False` leaves out everything but the time-to-target routes: the
    throughput timing, the loader and the profile take about 20 minutes on 2 cores."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    settings = Settings(quick=quick, device=device)
    out.mkdir(parents=True, exist_ok=True)
    results = {"environment": _environment(device), "quick": quick, "batch": settings.batch,
               "timing": settings.timing, "duel_timing": settings.duel_timing}  # fmt: skip
    if measure_throughput:
        results.update(measured_speed(settings, out))
    if with_time_to_target:
        with tempfile.TemporaryDirectory(prefix="lensperf-bench-") as tmp:
            results["time_to_target"] = run_time_to_target(
                Path(tmp),
                quick=quick,
                store=store,
                sr_store=sr_store,
                seeds=seeds,
                holdout=holdout,
                long_epochs=long_epochs,
                long_pretrain_epochs=long_pretrain_epochs,
            )
    (out / "results.json").write_text(json.dumps(results, indent=2))
    from lensperf.bench.tables import markdown, plot, plot_time_to_accuracy

    (out / "results.md").write_text(markdown(results))
    if "throughput" in results:
        plot(results, out / "throughput.png")
    if "time_to_target" in results:
        plot_time_to_accuracy(results["time_to_target"], out / "time_to_accuracy.png")
    return results
