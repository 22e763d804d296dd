"""Timing helpers: median images/s over timed windows after warm-up, FLOPs per image, and the
machine's measured matmul peak."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
) -> dict:
    """Median images/s of full training steps (forward, backward, AdamW)."""
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step_model = torch.compile(model) if compile_ else model

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(step_model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    start = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    warmup_s = time.perf_counter() - start
    rates = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(steps_per_window):
            loss = step()
        sync(device)
        rates.append(batch_size * steps_per_window / (time.perf_counter() - start))
    return {
        "images_per_s": statistics.median(rates),
        "windows": [round(r, 1) for r in rates],
        "warmup_s": round(warmup_s, 2),
        "final_loss": float(loss.detach()),
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
