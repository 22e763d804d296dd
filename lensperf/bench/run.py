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

import functools
import json
import platform
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lensperf.bench.measure import flops_per_image, matmul_peak, train_step_rate
from lensperf.bench.reference_mae import ReferenceMAE
from lensperf.bench.time_to_target import run_time_to_target
from lensperf.models import MAEConfig, ViTConfig, ops
from lensperf.presets import preset
from lensperf.progress import progress
from lensperf.runtime import native_bf16
from lensperf.train.config import FinetuneClsConfig, FinetuneSRConfig, PretrainConfig
from lensperf.train.tasks import TASKS

# The bench's reference size: ViT 192-d, 6 blocks, 64x64 images, patch 8, mask 0.75.
ENCODER = ViTConfig(image_size=64, patch_size=8, dim=192, depth=6, heads=3)
MAE_CONFIG = MAEConfig(encoder=ENCODER, decoder_dim=128, decoder_depth=2, decoder_heads=4)
BENCH_CONFIGS = {
    "pretrain": PretrainConfig(model=MAE_CONFIG),
    "finetune_cls": FinetuneClsConfig(encoder=ENCODER),
    "finetune_sr": FinetuneSRConfig(encoder=ENCODER),
}


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


def _workloads(settings: Settings) -> dict:
    """task -> (model factory, loss of a model on a fixed batch, batch size): each task's own
    model and loss on its own synthetic batch; the reference MAE on pretraining's."""
    workloads = {}
    for name, config in BENCH_CONFIGS.items():
        task, batch_size = TASKS[name](config), settings.batch[name]
        batch = task.example_batch(batch_size, settings.device)
        loss = functools.partial(_task_loss, task, batch)
        workloads[name] = (task.build_model, loss, batch_size)
    _, pretrain_loss, pretrain_batch = workloads["pretrain"]
    workloads["reference_mae"] = (lambda: ReferenceMAE(MAE_CONFIG), pretrain_loss, pretrain_batch)
    return workloads


def _task_loss(task, batch: dict, model) -> torch.Tensor:
    return task.loss(model, batch)


def _modes(device: torch.device) -> list[tuple[str, bool, bool, bool]]:
    """(name, bf16 autocast, compile, Triton kernels). The bf16 modes only where bf16 is native:
    emulated, they take tens of minutes and measure nothing useful."""
    modes = [("eager_fp32", False, False, False), ("compiled_fp32", False, True, False)]
    if native_bf16(device):
        modes.append(("compiled_bf16", True, True, False))
    if device.type == "cuda":
        modes.append(("compiled_bf16_kernels", True, True, True))
    return modes


def throughput(settings: Settings) -> dict:
    results: dict = {}
    workloads = _workloads(settings)
    plan = [
        (task, mode)
        for task in ("pretrain", "finetune_cls", "finetune_sr")
        for mode in _modes(settings.device)
    ]
    plan.append(("reference_mae", ("eager_fp32", False, False, False)))
    with progress(total=len(plan), desc="bench throughput", unit="run") as bar:
        for task, (mode, amp, compile_, use_kernels) in plan:
            make, loss_fn, batch = workloads[task]
            torch.manual_seed(0)
            torch._dynamo.reset()
            with ops.kernels_switched("on" if use_kernels else "off"):
                r = train_step_rate(make(), loss_fn, batch, device=settings.device, amp=amp,
                                    compile_=compile_, **settings.timing)  # fmt: skip
            results.setdefault(task, {})[mode] = {"batch": batch, **r}
            bar.update(1)
    return results


def flops(settings: Settings, rates: dict) -> dict:
    workloads = _workloads(settings)
    peaks = {"fp32": matmul_peak(settings.device, torch.float32)}
    if native_bf16(settings.device):
        peaks["bf16"] = matmul_peak(settings.device, torch.bfloat16)
    out = {"matmul_peak_tflops": {k: v / 1e12 for k, v in peaks.items()}, "tasks": {}}
    for task in ("pretrain", "finetune_cls", "finetune_sr"):
        make, loss_fn, batch = workloads[task]
        per_image = flops_per_image(make().to(settings.device), loss_fn, batch)
        entry = {"gflops_per_image": per_image / 1e9, "fraction_of_peak": {}}
        for mode, r in rates[task].items():
            peak = peaks["bf16" if "bf16" in mode else "fp32"]
            entry["fraction_of_peak"][mode] = per_image * r["images_per_s"] / peak
        out["tasks"][task] = entry
    return out


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

    make, loss_fn, _ = _workloads(settings)["pretrain"]
    model = make().to(settings.device)
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


def run_bench(
    out: Path,
    *,
    quick: bool,
    with_time_to_target: bool,
    store: Path | None = None,
    sr_store: Path | None = None,
) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    settings = Settings(quick=quick, device=device)
    out.mkdir(parents=True, exist_ok=True)
    results = {"environment": _environment(device), "quick": quick, "batch": settings.batch,
               "timing": settings.timing}  # fmt: skip
    results["throughput"] = throughput(settings)
    results["flops"] = flops(settings, results["throughput"])
    with tempfile.TemporaryDirectory(prefix="lensperf-bench-") as tmp:
        results["loader_images_per_s"] = loader_rate(settings, Path(tmp))
        if with_time_to_target:
            results["time_to_target"] = run_time_to_target(
                Path(tmp), quick=quick, store=store, sr_store=sr_store
            )
    profile_step(settings, out / "profile.txt")
    results["summary"] = summarize(results)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    from lensperf.bench.tables import markdown, plot, plot_time_to_accuracy

    (out / "results.md").write_text(markdown(results))
    plot(results, out / "throughput.png")
    if "time_to_target" in results:
        plot_time_to_accuracy(results["time_to_target"], out / "time_to_accuracy.png")
    return results


def summarize(results: dict) -> dict:
    t = results["throughput"]
    best = {task: max(modes.values(), key=lambda r: r["images_per_s"])["images_per_s"]
            for task, modes in t.items()}  # fmt: skip
    reference = t["reference_mae"]["eager_fp32"]["images_per_s"]
    loader_best = max(results["loader_images_per_s"].values())
    return {
        "pretrain_speedup_vs_reference_mae": best["pretrain"] / reference,
        "speedup_vs_eager_fp32": {
            task: best[task] / t[task]["eager_fp32"]["images_per_s"]
            for task in ("pretrain", "finetune_cls", "finetune_sr")
        },
        "loader_vs_pretrain_consumption": loader_best / best["pretrain"],
        "best_mode": {
            task: max(modes, key=lambda m: modes[m]["images_per_s"]) for task, modes in t.items()
        },
    }
