"""Timing helpers: median images/s over timed windows after warm-up, FLOPs per image, and the
machine's measured matmul peak."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable

import torch
from torch.utils.flop_counter import FlopCounterMode

from lensperf.runtime import replays_cuda_graphs


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_step(
    model: torch.nn.Module, loss_fn: Callable, *, device: torch.device, amp: bool,
    compile_: bool, compile_mode: str = "default", fused_adamw: bool = False,
) -> Callable[[], torch.Tensor]:  # fmt: skip
    """One full training step (forward, backward, AdamW) of `model` as a callable. lensperf's
    trainer runs AdamW as one fused kernel (`fused_adamw`); code written the obvious way gets
    torch's default, a loop over the parameters on a CPU."""
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused_adamw or None)
    step_model = torch.compile(model, mode=compile_mode) if compile_ else model
    graphs = replays_cuda_graphs(compile_, compile_mode, device)

    def step():
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(step_model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return step


def train_step_rate(
    model: torch.nn.Module,
    loss_fn: Callable,
    batch_size: int,
    *,
    device: torch.device,
    amp: bool,
    compile_: bool,
    warmup: int,
    windows: int,
    steps_per_window: int,
    compile_mode: str = "default",
    fused_adamw: bool = False,
) -> dict:
    """Median images/s of full training steps (forward, backward, AdamW)."""
    step = training_step(model, loss_fn, device=device, amp=amp, compile_=compile_,
                         compile_mode=compile_mode, fused_adamw=fused_adamw)  # fmt: skip
    timing = dict(warmup=warmup, windows=windows, steps_per_window=steps_per_window)
    return interleaved_rates({"step": (step, batch_size)}, device=device, **timing)["step"]


def interleaved_rates(
    steps: dict[Hashable, tuple[Callable[[], torch.Tensor], int]],
    *,
    device: torch.device,
    warmup: int,
    windows: int,
    steps_per_window: int,
) -> dict[Hashable, dict]:
    """Median images/s of each of `steps` (name -> (step, batch size)), their windows
    interleaved: one window of each in turn, each round starting one further along. A shared
    host's speed drifts by tens of percent within a minute; timed one after another, two steps
    would meet different speeds, while interleaved they meet the same drift."""
    warmup_s = {}
    for name, (step, _) in steps.items():
        start = time.perf_counter()
        for _ in range(warmup):
            step()
        sync(device)
        warmup_s[name] = time.perf_counter() - start
    names = list(steps)
    rates: dict[Hashable, list[float]] = {name: [] for name in names}
    losses = {}
    for round_ in range(windows):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            step, batch_size = steps[name]
            start = time.perf_counter()
            for _ in range(steps_per_window):
                losses[name] = step()
            sync(device)
            rates[name].append(batch_size * steps_per_window / (time.perf_counter() - start))
    return {
        name: {
            "images_per_s": statistics.median(rates[name]),
            "windows": [round(r, 1) for r in rates[name]],
            "warmup_s": round(warmup_s[name], 2),
            "final_loss": float(losses[name].detach()),
        }
        for name in names
    }


def profile_step(step: Callable[[], torch.Tensor], device: torch.device, steps: int = 3) -> dict:
    """Where one training step's time goes: the profiler's top operators, the device's busy time
    per step against the step's wall time (a device busy a small part of the step is bound by
    the host: launches, Python, syncs), and kernel launches per step."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        step()
    sync(device)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(device)
    wall = (time.perf_counter() - start) / steps
    events = prof.key_averages()

    # self_cuda_time_total was renamed self_device_time_total in newer torch
    device_us = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else (
        "self_cuda_time_total")  # fmt: skip
    busy = sum(getattr(e, device_us) for e in events) / steps / 1e6 if cuda else None
    launches = sum(e.count for e in events if "LaunchKernel" in e.key) / steps
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    return {
        "step_s_profiled": wall,
        "device_busy_s": busy,
        "device_busy_fraction": busy / wall if busy is not None else None,
        "launches_per_step": launches,
        "top_ops": events.table(sort_by=sort, row_limit=15, max_name_column_width=60),
    }


def flops_per_image(model: torch.nn.Module, loss_fn: Callable, batch_size: int) -> float:
    """Forward + backward FLOPs of one training step, per image (matmuls and convolutions)."""
    counter = FlopCounterMode(display=False)
    with counter:
        loss_fn(model).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch_size


def matmul_peak(
    device: torch.device, dtype: torch.dtype, sizes: tuple[int, ...] = (1024, 2048, 4096),
    repeats: int = 5,
) -> float:  # fmt: skip
    """Measured FLOP/s of the fastest square matmul of `sizes`, each at its fastest of `repeats`:
    the machine's practical ceiling for `dtype`. A ceiling takes the best time, not the median:
    a busy moment of a shared machine can only lower it."""
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        sync(device)
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            sync(device)
            best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best
