"""How close to the matmul peak can a training step get? The bench's fraction of peak counts a
step's model FLOPs (about 99% of them matmuls in the ViT steps) against square matmuls; this
module asks what part of the shortfall is the matmuls' own shapes and what part is everything
else. It records every `mm`, `addmm` and `bmm` of one compiled training step (shapes and counts,
from the profiler), replays them alone on fresh tensors, and times three things in interleaved
windows: the step, the replayed matmuls, and the square-matmul peak. The replay's fraction of
peak is the step's ceiling: what it would reach if LayerNorm, GELU, softmax, casts, copies and
the optimizer took no time.

    python -m lensperf.bench.matmul_bound --out bench/matmul_bound.json

About 6 minutes on 2 cores for the four default workloads. The replay uses contiguous operands
of the recorded shapes; the step's own may be transposed views (a linear's weight), which ran
within 6% of them on the linears' shapes, timed standalone on this project's CPU. SR's step is
mostly convolutions, which this leaves out."""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from lensperf.bench.measure import flops_per_image, interleaved_rates, training_step
from lensperf.bench.throughput import matmul_step, workloads
from lensperf.progress import progress
from lensperf.runtime import native_bf16

MATMULS = ("aten::mm", "aten::addmm", "aten::bmm")
# the bench's CPU batches; "_brightest" is each model at its cpu recipe's token_keep
DEFAULT_WORKLOADS = {"pretrain_brightest": 128, "finetune_cls_brightest": 64,
                     "pretrain": 128, "finetune_cls": 64}  # fmt: skip


def matmul_calls(step: Callable[[], object], steps: int = 2) -> list[tuple[str, tuple, int]]:
    """(op, input shapes, calls per step) of every matmul `step` runs, over `steps` profiled
    calls of it (run it once or more before, so that compiling is not profiled)."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    found = []
    for event in prof.key_averages(group_by_input_shape=True):
        if event.key in MATMULS and event.count >= steps:
            shapes = tuple(tuple(s) for s in event.input_shapes)
            found.append((event.key, shapes, event.count // steps))
    return found


def matmul_flops(op: str, shapes: tuple) -> int:
    """FLOPs of one call: 2 M K N (times the batch for bmm). addmm's inputs are (bias, a, b)."""
    if op == "aten::bmm":
        (batch, m, k), (_, _, n) = shapes[0], shapes[1]
        return 2 * batch * m * k * n
    (m, k), (_, n) = shapes[1:3] if op == "aten::addmm" else shapes[:2]
    return 2 * m * k * n


def replay(calls: list[tuple[str, tuple, int]], device: torch.device,
           dtype: torch.dtype) -> Callable[[], torch.Tensor]:  # fmt: skip
    """A callable that runs `calls` (matmul_calls' list) once each per call count, on random
    operands of their shapes."""
    prepared = []
    for op, shapes, count in calls:
        # the profiler also lists the scalars and, for the out= variants, the output
        inputs = shapes[:3] if op == "aten::addmm" else shapes[:2]
        args = [torch.randn(s, device=device, dtype=dtype) for s in inputs]
        fn = {"aten::mm": torch.mm, "aten::addmm": torch.addmm, "aten::bmm": torch.bmm}[op]
        prepared.append((fn, args, count))

    def run() -> torch.Tensor:  # one element of the last product: the timer's "loss"
        out = torch.zeros(1)
        for fn, args, count in prepared:
            for _ in range(count):
                out = fn(*args)
        return out.flatten()[0]

    return run


def bound(
    step: Callable[[], object], batch_size: int, per_image_flops: float, *,
    device: torch.device, dtype: torch.dtype, windows: int = 8,
) -> dict:  # fmt: skip
    """The step's fraction of peak beside its matmuls' alone, both against the square-matmul
    peak timed in the same rounds (medians over rounds of per-round fractions)."""
    step()
    calls = matmul_calls(step)
    matmuls = replay(calls, device, dtype)
    per_step = sum(matmul_flops(op, s) * count for op, s, count in calls)
    peak_step, peak_flops = matmul_step(device)
    timed = {"step": (step, batch_size), "matmuls": (matmuls, batch_size),
             "peak": (peak_step, peak_flops)}  # fmt: skip
    rates = interleaved_rates(timed, device=device, warmup=1, windows=windows, steps_per_window=2)
    peak = rates["peak"]["windows"]

    def fraction(name: str, flops: float) -> float:
        return statistics.median(flops * r / p for r, p in zip(rates[name]["windows"], peak))

    step_s = statistics.median(batch_size / r for r in rates["step"]["windows"])
    matmul_s = statistics.median(batch_size / r for r in rates["matmuls"]["windows"])
    return {
        "batch": batch_size,
        "model_gflop_per_step": per_image_flops * batch_size / 1e9,
        "matmul_gflop_per_step": per_step / 1e9,
        "step_ms": 1e3 * step_s,
        "matmuls_alone_ms": 1e3 * matmul_s,
        "step_fraction_of_peak": fraction("step", per_image_flops),
        # the ceiling: the step's own model FLOPs over the time of its matmuls alone
        "ceiling_fraction_of_peak": fraction("matmuls", per_image_flops),
        "peak_tflops": statistics.median(peak) / 1e12,
        "matmul_calls": [{"op": op, "shapes": s, "per_step": c} for op, s, c in calls],
    }


def run(names: dict[str, int], windows: int = 8) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = native_bf16(device)
    dtype = torch.bfloat16 if amp else torch.float32
    out = {"device": str(device), "dtype": str(dtype).removeprefix("torch."), "workloads": {}}
    with progress(total=len(names), desc="matmul bound", unit="workload") as bar:
        for name, batch_size in names.items():
            torch._dynamo.reset()
            batches = dict.fromkeys(("pretrain", "finetune_cls", "finetune_sr"), batch_size)
            make, loss_fn, _ = workloads(batches, device)[name]
            torch.manual_seed(0)
            per_image = flops_per_image(make(False).to(device), loss_fn, batch_size)
            step = training_step(make(False), loss_fn, device=device, amp=amp, compile_=True,
                                 fused_adamw=True)  # fmt: skip
            out["workloads"][name] = bound(step, batch_size, per_image, device=device,
                                           dtype=dtype, windows=windows)  # fmt: skip
            bar.update(1)
    return out


def table(result: dict) -> str:
    rows = ["| workload | batch | step, ms | its matmuls alone, ms | step, of peak | ceiling "
            "(matmuls alone), of peak |", "|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in result["workloads"].items():
        rows.append(f"| {name} | {r['batch']} | {r['step_ms']:.1f} | {r['matmuls_alone_ms']:.1f} "
                    f"| {r['step_fraction_of_peak']:.1%} "
                    f"| {r['ceiling_fraction_of_peak']:.1%} |")  # fmt: skip
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lensperf.bench.matmul_bound",
        description="Time each bench workload's compiled training step beside its matmuls "
        "replayed alone and the square-matmul peak: the step's fraction of peak and its "
        "ceiling if everything but the matmuls took no time.",
    )
    parser.add_argument("--workloads", nargs="+", default=list(DEFAULT_WORKLOADS),
                        choices=sorted(DEFAULT_WORKLOADS), metavar="NAME",
                        help=f"any of {', '.join(DEFAULT_WORKLOADS)} (default: all)")  # fmt: skip
    parser.add_argument("--windows", type=int, default=8, help="timed rounds (default 8)")
    parser.add_argument("--out", type=Path, default=Path("bench/matmul_bound.json"))
    args = parser.parse_args(argv)
    if args.windows < 1:
        parser.error("--windows must be >= 1")
    result = run({name: DEFAULT_WORKLOADS[name] for name in args.workloads}, args.windows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
