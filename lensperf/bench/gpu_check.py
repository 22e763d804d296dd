"""Everything a GPU window must measure, in one short run (benchmarks/gpu_check.sh):

  1. gpu_tests   the compiled Triton kernels against their references (pytest -m gpu);
  2. kernels     the kernel micro-benchmarks: Triton vs SDPA-flash and vs argsort+gather;
  3. throughput  training images/s of the three tasks and their plain references, in the modes
                 a GPU user would pick, with the ratio to the reference's best mode;
  4. loader      the DALI GPU pipeline against what the compiled MAE consumes;
  5. accuracy    a short time-to-accuracy run of the three routes (demo recipes).

Each stage runs in its own process with a time limit, so one that hangs or runs long costs its
own budget only, and writes what it has measured as it goes. The whole run fits 6 minutes on
one H100-class GPU by these budgets (not yet timed on one: no GPU was lent while it was written).
`--dry-run` runs every stage on the CPU at tiny sizes, so the script cannot rot between GPU
windows; CI runs it.

    python -m lensperf.bench.gpu_check [--dry-run] [--out DIR]
    -> DIR/gpu_check.json, DIR/gpu_check.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
# Seconds per stage on a GPU (the total, 330 s, leaves room in a 6-minute window).
BUDGETS = {"gpu_tests": 60, "kernels": 80, "throughput": 110, "loader": 30, "accuracy": 50}
DRY_BUDGET = 240


def _stage_tests(out: Path, dry: bool) -> dict:
    result = _pytest(["-m", "gpu", "tests"], out / "gpu_tests.log")
    return {"exit": result}


def _stage_kernels(out: Path, dry: bool) -> dict:
    files = ["benchmarks/bench_masking.py", "benchmarks/bench_attention.py"]
    args = ["--benchmark-disable"] if dry else [
        "--benchmark-only", "--benchmark-max-time=0.05", "--benchmark-min-rounds=3",
        f"--benchmark-json={out / 'kernels.json'}",
    ]  # fmt: skip
    exit_code = _pytest([*files, *args], out / "kernels.log")
    table = ""
    if (out / "kernels.json").exists():
        sys.path.insert(0, str(ROOT))
        from benchmarks.summarize import load
        from benchmarks.summarize import table as summary_table

        table = summary_table(load([str(out / "kernels.json")]))
    return {"exit": exit_code, "table": table}


def _pytest(args: list[str], log: Path) -> int:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o",
               "addopts=", *args]  # fmt: skip
    with log.open("w") as f:
        return subprocess.run(
            command, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT
        ).returncode


def _stage_throughput(out: Path, dry: bool) -> dict:
    from lensperf.bench import throughput as T

    device = _device()
    batch = {"pretrain": 2, "finetune_cls": 2, "finetune_sr": 1} if dry else (
        {"pretrain": 1024, "finetune_cls": 512, "finetune_sr": 128})  # fmt: skip
    timing = {"warmup": 1, "windows": 1, "steps_per_window": 1} if dry else (
        {"warmup": 3, "windows": 3, "steps_per_window": 5})  # fmt: skip
    wanted = {"eager_fp32"} if dry else {"compiled_bf16", "compiled_bf16_kernels",
                                         "compiled_bf16_sdpa"}  # fmt: skip
    found = T.workloads(batch, device)
    results: dict = {}
    for name, (make, loss_fn, size) in found.items():  # MAE first: the headline
        for mode in T.modes(device, reference=name.endswith(T.REFERENCE)):
            if mode.name not in wanted:
                continue
            torch._dynamo.reset()
            with T.ops.kernels_switched("on" if mode.kernels else "off"):
                r = T.train_step_rate(make(mode.sdpa), loss_fn, size, device=device,
                                      amp=mode.amp, compile_=mode.compile, **timing)  # fmt: skip
            results.setdefault(name, {})[mode.name] = {"batch": size, **r}
            _write_partial(out, "throughput", results)
    ratios = {
        name: T.best_mode(results[name])[1] / T.best_mode(results[task + T.REFERENCE])[1]
        for task in T.BENCH_CONFIGS
        for name in (task, task + T.BRIGHTEST)
        if name in results and task + T.REFERENCE in results
    }
    return {"throughput": results, "vs_reference_best": ratios}


def _stage_loader(out: Path, dry: bool) -> dict:
    from lensperf.bench.time_to_target import _simulate
    from lensperf.data import make_loader

    store = _simulate(out / "work" / "loader.zarr", "demo", sr=False)
    device = _device()
    loader = make_loader(store, "train", batch_size=64 if dry else 1024, backend="dali",
                         num_workers=2, augment=True, device=device)  # fmt: skip
    list(loader)  # warm-up epoch
    start, count = time.perf_counter(), 0
    for _ in range(1 if dry else 3):
        for batch in loader:
            count += len(batch["index"])
    rate = count / (time.perf_counter() - start)
    loader.close()
    consumed = _partial(out, "throughput")
    mae = max((r["images_per_s"] for r in consumed.get("pretrain", {}).values()), default=None)
    return {"dali_images_per_s": rate, "mae_consumes_images_per_s": mae,
            "ratio": rate / mae if mae else None}  # fmt: skip


def _stage_accuracy(out: Path, dry: bool) -> dict:
    from lensperf.bench.time_to_target import run_time_to_target

    tiny = {
        "pretrain": ["epochs=1", "model.encoder.dim=32", "model.encoder.heads=2",
                     "model.encoder.depth=1", "model.decoder_dim=32", "model.decoder_depth=1"],
        "finetune_cls": ["epochs=1", "resnet.widths=[4,8]", "resnet.blocks=[1,1]"],
        "finetune_sr": ["epochs=1", "features=8"],
    } if dry else {}  # fmt: skip
    return run_time_to_target(
        out / "work", quick=True, overrides=tiny, store_size=24 if dry else None
    )


STAGES = {
    "gpu_tests": _stage_tests, "kernels": _stage_kernels, "throughput": _stage_throughput,
    "loader": _stage_loader, "accuracy": _stage_accuracy,
}  # fmt: skip


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _write_partial(out: Path, stage: str, value: dict) -> None:
    (out / f"{stage}.partial.json").write_text(json.dumps(value, indent=2))


def _partial(out: Path, stage: str) -> dict:
    path = out / f"{stage}.partial.json"
    if path.exists():
        return json.loads(path.read_text())
    path = out / f"{stage}.json"
    return json.loads(path.read_text()).get("throughput", {}) if path.exists() else {}


def run_stage(stage: str, out: Path, dry: bool) -> None:
    result = STAGES[stage](out, dry)
    (out / f"{stage}.json").write_text(json.dumps(result, indent=2, default=str))


def run_all(out: Path, dry: bool) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    report = {"dry_run": dry, "device": str(_device()),
              "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
              "versions": {"torch": torch.__version__}, "stages": {}}  # fmt: skip
    for stage, budget in BUDGETS.items():
        started = time.perf_counter()
        command = [sys.executable, "-m", "lensperf.bench.gpu_check", "--stage", stage,
                   "--out", str(out)] + (["--dry-run"] if dry else [])  # fmt: skip
        try:
            code = subprocess.run(command, cwd=ROOT, timeout=DRY_BUDGET if dry else budget,
                                  stdout=(out / f"{stage}.log").open("a"),
                                  stderr=subprocess.STDOUT).returncode  # fmt: skip
            status = "ok" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            status = "timed out"
        entry = {"status": status, "seconds": round(time.perf_counter() - started, 1)}
        path = out / f"{stage}.json"
        entry["result"] = json.loads(path.read_text()) if path.exists() else _partial(out, stage)
        report["stages"][stage] = entry
        print(f"{stage}: {status} in {entry['seconds']} s", flush=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "gpu_check.md").write_text(markdown(report))
    return report


def markdown(report: dict) -> str:
    where = f"dry run on {report['device']}" if report["dry_run"] else report["gpu"]
    lines = [f"# GPU check ({where})", "", "| stage | status | seconds |", "|---|---|---|"]
    for stage, entry in report["stages"].items():
        lines.append(f"| {stage} | {entry['status']} | {entry['seconds']} |")
    stages = report["stages"]
    kernels = stages.get("kernels", {}).get("result", {}).get("table")
    if kernels:
        lines += ["", "## Kernels (Triton first)", "", kernels]
    tp = stages.get("throughput", {}).get("result", {})
    if tp.get("throughput"):
        lines += ["", "## Training images/s", "", "| workload | mode | batch | images/s |",
                  "|---|---|---|---|"]  # fmt: skip
        for name, modes in tp["throughput"].items():
            for mode, r in modes.items():
                lines.append(f"| {name} | {mode} | {r['batch']} | {r['images_per_s']:.0f} |")
        for task, ratio in tp.get("vs_reference_best", {}).items():
            lines.append(f"\n{task}: {ratio:.2f}x the reference's best mode")
    loader = stages.get("loader", {}).get("result", {})
    if loader.get("dali_images_per_s"):
        ratio = loader.get("ratio")
        versus = f", {ratio:.1f}x what the compiled MAE consumes" if ratio else ""
        lines += ["", f"DALI loader: {loader['dali_images_per_s']:.0f} images/s{versus}"]
    accuracy = stages.get("accuracy", {}).get("result", {})
    if accuracy.get("routes"):
        from lensperf.bench.tables import time_to_target_section

        lines += ["", *time_to_target_section(accuracy)]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/gpu_check"))
    parser.add_argument("--dry-run", action="store_true", help="every stage, CPU, tiny sizes")
    parser.add_argument("--stage", choices=list(STAGES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("LENSPERF_PROGRESS", "0")
    if args.stage:
        run_stage(args.stage, args.out, args.dry_run)
        return 0
    report = run_all(args.out, args.dry_run)
    return 0 if all(e["status"] == "ok" for e in report["stages"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
