"""Does lensperf's speed cost accuracy? Its MAE and the plain reference MAE (reference.py) at
the bench's size, each trained the way the bench times it (compiled, bf16 where native; lensperf
with its trainer's fused AdamW, the reference with torch's default), on the same store, the same
batches in the same order and the same schedule, over a few seeds. It records the training loss
at every step and each model's validation loss at the end (eager fp32, the same masks for both),
and says whether each lensperf arm's mean is within the seeds' spread of the reference's.

Two lensperf arms: "lensperf_same_init" starts from the reference's initial weights, so that
only the speed work (its attention, masking, fused AdamW, compiled graphs) differs;
"lensperf" starts from its own initialisation (xavier-uniform linears, as the MAE paper's).

    python -m lensperf.bench.loss_parity --store data/model_ii.zarr --out bench/loss_parity.json

About 15 minutes on 2 cores with the defaults (500 steps of 128 images, 2 seeds)."""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import torch

from lensperf.bench.reference import ReferenceMAE
from lensperf.bench.throughput import MAE_CONFIG
from lensperf.data import make_loader
from lensperf.models import MAE, MAEConfig, ops
from lensperf.progress import progress
from lensperf.runtime import native_bf16


def _reference(config: MAEConfig) -> torch.nn.Module:
    return ReferenceMAE(config)


def _lensperf_same_init(config: MAEConfig) -> torch.nn.Module:
    """lensperf's MAE holding the weights the reference starts from (drawn from the same
    seed): its encoder's parameters are the reference's top-level ones."""
    start = ReferenceMAE(config).state_dict()
    model = MAE(config)
    model.load_state_dict({name: start[name.removeprefix("encoder.")]
                           for name in model.state_dict()})  # fmt: skip
    return model


# name -> (model from a config, fused AdamW); the reference first: the others are against it
MODELS = {"reference": (_reference, False), "lensperf_same_init": (_lensperf_same_init, True),
          "lensperf": (MAE, True)}  # fmt: skip
LR, WARMUP = 1.5e-3, 0.1  # the cpu recipe's peak rate (batch 128); warm-up fraction of steps


def train_losses(
    model: torch.nn.Module, loader, steps: int, device: torch.device, *, fused: bool,
    compile_: bool = True,
) -> list[float]:  # fmt: skip
    """The training loss at each of `steps` steps: AdamW, linear warm-up then cosine to zero."""
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.05,
                                  fused=fused or None)  # fmt: skip
    warmup = max(1, int(WARMUP * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warmup, 0.5 * (
        1 + math.cos(math.pi * max(0, s - warmup) / max(1, steps - warmup)))))  # fmt: skip
    step_model = torch.compile(model) if compile_ else model
    amp = native_bf16(device)
    losses: list[float] = []
    while len(losses) < steps:
        for batch in loader:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = step_model(batch["image"].to(device))[0]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at step {len(losses)}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            if len(losses) == steps:
                break
    return losses


@torch.no_grad()
def validation_loss(model: torch.nn.Module, loader, device: torch.device) -> float:
    """Eager fp32 with masks drawn from seed 0: both models see the same masks."""
    model.eval()
    torch.manual_seed(0)
    total, count = 0.0, 0
    for batch in loader:
        images = batch["image"].to(device)
        total += model(images)[0].item() * len(images)
        count += len(images)
    return total / count


def run(
    store: Path, *, steps: int, seeds: int, batch_size: int = 128, config: MAEConfig = MAE_CONFIG,
    compile_: bool = True,
) -> dict:  # fmt: skip
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    val = make_loader(store, "val", batch_size=256, backend="memory", shuffle=False)
    runs: dict = {name: [] for name in MODELS}
    tail = max(1, steps // 10)
    with progress(total=seeds * len(MODELS), desc="loss parity", unit="run") as bar:
        for seed in range(seeds):
            for name, (build, fused) in MODELS.items():
                torch.manual_seed(seed)
                model = build(config)
                train = make_loader(store, "train", batch_size=batch_size, backend="memory",
                                    augment=True, seed=seed, drop_last=True)  # fmt: skip
                # lensperf's ops as its training runs them: its kernels where they are on
                with ops.kernels_switched("auto"):
                    losses = train_losses(model, train, steps, device, fused=fused,
                                          compile_=compile_)  # fmt: skip
                    val_loss = validation_loss(model, val, device)
                runs[name].append({"seed": seed, "train_loss": losses,
                                   "final_train_loss": statistics.mean(losses[-tail:]),
                                   "val_loss": val_loss})  # fmt: skip
                bar.update(1)
    return {"store": str(store), "steps": steps, "batch_size": batch_size, "runs": runs,
            "summary": summarize(runs)}  # fmt: skip


def summarize(runs: dict) -> dict:
    """Per lensperf arm and measure: each side's mean over seeds, the difference, and the seeds'
    spread (the largest gap between two seeds of one side); within noise when the difference is
    no larger."""
    out: dict = {}
    for arm in (name for name in runs if name != "reference"):
        for measure in ("final_train_loss", "val_loss"):
            values = {name: [r[measure] for r in runs[name]] for name in (arm, "reference")}
            spread = max(max(v) - min(v) for v in values.values())
            means = {name: statistics.mean(v) for name, v in values.items()}
            difference = means[arm] - means["reference"]
            out.setdefault(arm, {})[measure] = {
                "lensperf": means[arm], "reference": means["reference"], "difference": difference,
                "seed_spread": spread, "within_noise": abs(difference) <= spread,
            }  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lensperf.bench.loss_parity",
        description="Train lensperf's MAE and the plain reference MAE the way the bench times "
        "them, on the same batches, and compare their losses at equal steps.",
    )
    parser.add_argument("--store", type=Path, required=True, help="a classification store")
    parser.add_argument("--steps", type=int, default=500, help="training steps (default 500)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per model (default 2)")
    parser.add_argument("--out", type=Path, default=Path("bench/loss_parity.json"))
    args = parser.parse_args(argv)
    if not args.store.exists():
        parser.error(f"no dataset store at {args.store}")
    if args.steps < 1 or args.seeds < 2:
        parser.error("--steps must be >= 1 and --seeds >= 2 (the noise is the seeds' spread)")
    result = run(args.store, steps=args.steps, seeds=args.seeds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for arm, measures in result["summary"].items():
        for measure, s in measures.items():
            print(f"{arm}, {measure}: {s['lensperf']:.5f} against the reference's "
                  f"{s['reference']:.5f}, difference {s['difference']:+.5f}, seeds' spread "
                  f"{s['seed_spread']:.5f}: {'within' if s['within_noise'] else 'outside'} "
                  "noise")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
