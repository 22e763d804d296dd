"""Training throughput of each task, lensperf's model against a plain reference model of the
same size (reference.py), both through every switch a user has: eager fp32, compiled fp32,
compiled + bf16 (where bf16 is native), and on CUDA compiled + bf16 with lensperf's Triton
kernels or, for the reference, with `scaled_dot_product_attention`. The summary compares
lensperf's best mode with the reference's *best* mode, beside the fraction of the measured
matmul peak each reaches in model FLOPs. A task's models and modes are timed in interleaved
windows (measure.interleaved_rates): on a shared host whose speed drifts, models timed one after
the other were measured 0.66-0.88x apart that were at parity side by side.

lensperf's `cpu` recipes pass only the brightest patches of each image through the encoder
(`token_keep`: the arc, not the empty sky). The same models with that setting are measured as
`<task>_brightest`; their FLOPs are counted as executed, so their peak fraction says how well
the hardware is used and their ratio to the reference says what skipping the sky buys."""

from __future__ import annotations

import dataclasses
import functools
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lensperf.bench.measure import flops_per_image, interleaved_rates, matmul_peak, training_step
from lensperf.bench.reference import ReferenceClassifier, ReferenceMAE, ReferenceViT
from lensperf.config import load_config
from lensperf.models import MAEConfig, SuperResolution, ViTConfig, ops
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
REFERENCES: dict[str, Callable[[bool], torch.nn.Module]] = {
    "pretrain": lambda sdpa: ReferenceMAE(MAE_CONFIG, sdpa=sdpa),
    "finetune_cls": lambda sdpa: ReferenceClassifier(ENCODER, sdpa=sdpa),
    "finetune_sr": lambda sdpa: SuperResolution(ReferenceViT(ENCODER, sdpa=sdpa)),
}
REFERENCE = "_reference"  # suffix of a reference's entries in the results
BRIGHTEST = "_brightest"  # suffix of lensperf's models at the cpu recipe's token_keep


@dataclass(frozen=True)
class Mode:
    name: str
    amp: bool  # bf16 autocast
    compile: bool
    kernels: bool = False  # lensperf's Triton kernels
    sdpa: bool = False  # the reference's attention as scaled_dot_product_attention
    compile_mode: str = "default"  # "reduce-overhead": CUDA graphs


def modes(device: torch.device, *, reference: bool) -> list[Mode]:
    """The bf16 modes only where bf16 is native: emulated, they take tens of minutes and
    measure nothing useful."""
    found = [Mode("eager_fp32", False, False), Mode("compiled_fp32", False, True)]
    if native_bf16(device):
        found.append(Mode("compiled_bf16", True, True))
    if device.type == "cuda":  # and each with CUDA graphs, which remove launch overhead
        cuda = (
            [Mode("compiled_bf16_sdpa", True, True, sdpa=True)]
            if reference
            else [Mode("compiled_bf16_kernels", True, True, kernels=True)]
        )
        graphs = [dataclasses.replace(m, name=m.name + "_cudagraphs",
                                      compile_mode="reduce-overhead") for m in cuda]  # fmt: skip
        found += [*cuda, *graphs]
    return found


def recipe_token_keep(task: str) -> float:
    """The fraction of patches the `cpu` recipe of `task` passes through its encoder."""
    config = load_config(TASKS[task].config_type, preset(task, "cpu"))
    return config.model.token_keep if task == "pretrain" else config.token_keep


def _with_token_keep(config, keep: float):
    if isinstance(config, PretrainConfig):
        return dataclasses.replace(config, model=dataclasses.replace(config.model, token_keep=keep))
    return dataclasses.replace(config, token_keep=keep)


def workloads(batch: dict[str, int], device: torch.device) -> dict:
    """name -> (model factory taking `sdpa`, loss of a model on a fixed batch, batch size), for
    each task, its reference, and lensperf's model at the cpu recipe's token_keep where that is
    below 1: each task's own loss, on its own synthetic batch."""
    found = {}
    for name, config in BENCH_CONFIGS.items():
        task = TASKS[name](config)
        example = task.example_batch(batch[name], device)
        loss = functools.partial(_task_loss, task, example)
        found[name] = (lambda sdpa, task=task: task.build_model(), loss, batch[name])
        found[name + REFERENCE] = (REFERENCES[name], loss, batch[name])
        keep = recipe_token_keep(name)
        if keep < 1:
            sparse = TASKS[name](_with_token_keep(config, keep))
            found[name + BRIGHTEST] = (lambda sdpa, t=sparse: t.build_model(), loss, batch[name])
    return found


def _task_loss(task, batch: dict, model) -> torch.Tensor:
    return task.loss(model, batch)


def throughput(
    batch: dict[str, int], device: torch.device, timing: dict, duel_timing: dict
) -> dict:
    """Two timings per task, in one process:
    - "throughput": images/s of every workload in every mode it gets, results[name][mode], each
      task's workloads (lensperf's model, its reference, its brightest-patch model) and modes
      timed together in interleaved windows;
    - "head_to_head": the best mode of each of those workloads again, in short windows taken in
      turn (`duel_timing`), and lensperf's ratios to the reference as the median of the ratios
      of neighbouring windows. A shared host's speed drifts by tens of percent within a minute,
      so rates taken apart in time differ by more than the models do; neighbours meet alike."""
    found = workloads(batch, device)
    results: dict = {"throughput": {}, "head_to_head": {}}
    with progress(total=len(BENCH_CONFIGS), desc="bench throughput", unit="task") as bar:
        for task in BENCH_CONFIGS:
            torch._dynamo.reset()
            steps = _task_steps(task, found, device)
            # one model class compiled in several modes and token_keeps: more graphs than
            # dynamo's default limit of 8 a function, past which it would silently run eager
            with torch._dynamo.config.patch(recompile_limit=64):
                rates = interleaved_rates(steps, device=device, **timing)
                sweep: dict = {}
                for (name, mode), r in rates.items():
                    sweep.setdefault(name, {})[mode] = {"batch": steps[name, mode][1], **r}
                best = {name: best_mode(modes_)[0] for name, modes_ in sweep.items()}
                contenders = {name: steps[name, mode] for name, mode in best.items()}
                duel = interleaved_rates({**contenders, PEAK: matmul_step(device)},
                                         device=device, **duel_timing)  # fmt: skip
            results["throughput"].update(sweep)
            peak = duel.pop(PEAK)
            results["head_to_head"][task] = {
                "modes": best, "rates": duel, "vs_reference": paired_ratios(duel, task),
                "matmul_peak": {"dtype": "bf16" if native_bf16(device) else "fp32",
                                "flops_per_s": peak["images_per_s"], "windows": peak["windows"]},
            }  # fmt: skip
            bar.update(1)
    return results


PEAK = "matmul_peak"  # the head to head's square matmuls: the peak available at that moment


def matmul_step(device: torch.device) -> tuple[Callable[[], torch.Tensor], float]:
    """Square matmuls in bf16 (fp32 where bf16 is not native) as a step, and their FLOPs as its
    "batch", so that its rate is FLOP/s. Timed among the head-to-head windows it measures the
    peak available beside each of them: on a shared host with AMX, the bf16 peak measured
    0.8-1.9 TFLOP/s within a minute (fp32 0.30-0.33)."""
    n, repeats = (8192 if device.type == "cuda" else 2048), 4
    dtype = torch.bfloat16 if native_bf16(device) else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))

    def step() -> torch.Tensor:
        for _ in range(repeats):
            out = a @ b
        return out[0, 0]

    return step, float(repeats * 2 * n**3)


def paired_ratios(duel: dict, task: str) -> dict[str, float]:
    """Each of lensperf's workloads of `task` over the reference: the median, over rounds, of
    its window's images/s over the reference's window of the same round."""
    reference = duel[task + REFERENCE]["windows"]
    return {
        name: statistics.median(ours / theirs for ours, theirs in zip(r["windows"], reference))
        for name, r in duel.items()
        if name != task + REFERENCE
    }


def _task_steps(task: str, found: dict, device: torch.device) -> dict:
    """(workload, mode) -> (training step, batch size) for every workload of `task`."""
    steps = {}
    for name in (task, task + REFERENCE, task + BRIGHTEST):
        if name not in found:
            continue
        make, loss_fn, batch_size = found[name]
        reference = name.endswith(REFERENCE)
        for mode in modes(device, reference=reference):
            torch.manual_seed(0)
            # lensperf's steps with its trainer's fused AdamW, the references with the default
            step = training_step(make(mode.sdpa), loss_fn, device=device, amp=mode.amp,
                                 compile_=mode.compile, compile_mode=mode.compile_mode,
                                 fused_adamw=not reference)  # fmt: skip
            steps[name, mode.name] = (_kernels_switched(step, mode.kernels), batch_size)
    return steps


def _kernels_switched(step: Callable[[], torch.Tensor], kernels: bool) -> Callable:
    """`step` with lensperf's Triton kernels switched on or off while it runs (and compiles)."""

    def run() -> torch.Tensor:
        with ops.kernels_switched("on" if kernels else "off"):
            return step()

    return run


def flops(batch: dict[str, int], device: torch.device, rates: dict) -> dict:
    """FLOPs per image trained, as each workload executes them, and the fraction of the
    measured matmul peak each workload and mode reaches."""
    found = workloads(batch, device)
    peaks = {"fp32": matmul_peak(device, torch.float32)}
    if native_bf16(device):
        peaks["bf16"] = matmul_peak(device, torch.bfloat16)
    out = {"matmul_peak_tflops": {k: v / 1e12 for k, v in peaks.items()}, "tasks": {}}
    for name in rates:
        make, loss_fn, batch_size = found[name]
        per_image = flops_per_image(make(False).to(device), loss_fn, batch_size)
        entry = {"gflops_per_image": per_image / 1e9, "fraction_of_peak": {}}
        for mode, r in rates[name].items():
            peak = peaks["bf16" if "bf16" in mode else "fp32"]
            entry["fraction_of_peak"][mode] = per_image * r["images_per_s"] / peak
        out["tasks"][name] = entry
    return out


def best_mode(modes_: dict) -> tuple[str | None, float | None]:
    """The fastest mode measured and its images/s; a mode that failed (the GPU check records an
    error instead of a rate) is skipped, and (None, None) means none was measured."""
    timed = {m: r["images_per_s"] for m, r in modes_.items() if "images_per_s" in r}
    if not timed:
        return None, None
    name = max(timed, key=timed.get)
    return name, timed[name]


def summarize(results: dict) -> dict:
    """Per task: lensperf's best mode over the reference's best mode (from the head-to-head
    timing where there is one), each best mode's images/s and fraction of the matmul peak, and
    lensperf's speedup over its own eager fp32."""
    t = results["throughput"]
    duels = results.get("head_to_head", {})
    summary: dict = {"tasks": {}}
    for task in BENCH_CONFIGS:
        names = [n for n in (task, task + REFERENCE, task + BRIGHTEST) if n in t]
        duel = duels.get(task)
        if duel:  # the best modes timed in neighbouring windows
            best = {n: (duel["modes"][n], duel["rates"][n]["images_per_s"]) for n in names}
            ratio = duel["vs_reference"]
        else:  # an older result: the rates of the mode sweep
            best = {n: best_mode(t[n]) for n in names}
            ratio = {n: best[n][1] / best[task + REFERENCE][1] for n in names}
        summary["tasks"][task] = {
            **_best_entry(results, duel, task, *best[task]),
            **_best_entry(results, duel, task + REFERENCE, *best[task + REFERENCE], "reference_"),
            "vs_reference_best": ratio[task],
            "vs_own_eager_fp32": best[task][1] / t[task]["eager_fp32"]["images_per_s"],
        }
        if task + BRIGHTEST in t:
            summary["tasks"][task].update(
                **_best_entry(
                    results, duel, task + BRIGHTEST, *best[task + BRIGHTEST], "brightest_"
                ),  # fmt: skip
                brightest_vs_reference_best=ratio[task + BRIGHTEST],
            )
    if "loader_images_per_s" in results:
        loader_best = max(results["loader_images_per_s"].values())
        summary["loader_vs_pretrain_consumption"] = loader_best / best_mode(t["pretrain"])[1]
    return summary


def _best_entry(
    results: dict, duel: dict | None, name: str, mode: str, rate: float, prefix: str = ""
) -> dict:
    """A workload's best mode, its images/s and the fraction of the matmul peak that reaches:
    against the peak timed beside it in the head to head where its dtype was timed there (the
    median over rounds), else against the run's measured peak."""
    per_image = results["flops"]["tasks"][name]["gflops_per_image"] * 1e9
    dtype = "bf16" if "bf16" in mode else "fp32"
    beside = (duel or {}).get(PEAK)
    if beside and beside["dtype"] == dtype:
        windows = duel["rates"][name]["windows"]
        fraction = statistics.median(
            per_image * r / peak for r, peak in zip(windows, beside["windows"])
        )
    else:
        fraction = per_image * rate / (results["flops"]["matmul_peak_tflops"][dtype] * 1e12)
    return {
        f"{prefix}best_mode": mode,
        f"{prefix}images_per_s": rate,
        f"{prefix}fraction_of_peak": fraction,
    }
