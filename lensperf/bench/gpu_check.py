"""Everything a GPU window must measure, in one short run (benchmarks/gpu_check.sh):

  1. gpu_tests   the compiled Triton kernels against their references (pytest -m gpu);
  2. kernels     the kernel micro-benchmarks: Triton vs SDPA-flash and vs argsort+gather;
  3. throughput  training images/s of the three tasks (lensperf with its kernels) and their
                 plain references (with SDPA), the ratio to the reference, and the fraction of
                 the measured bf16 matmul peak;
  4. loader      the DALI pipeline (the in-process loader where DALI is not installed) against
                 what the compiled MAE consumes;
  5. accuracy    on a GPU, the `gpu` recipe's route (pretraining + fine-tuning) and the ResNet on
                 a simulated 12,000-a-class store; on a CPU, the demo recipes' quick run.

Each stage runs in its own process with a time limit, so one that hangs or runs long costs its
own budget only, and writes what it has measured as it goes. The budgets add up to under 6
minutes, so that a 15-minute GPU window (the machine's start included) holds a rerun.
`--dry-run` runs every stage on the CPU at tiny sizes, so the script cannot rot between GPU
windows; CI runs it.

    python -m lensperf.bench.gpu_check [--dry-run] [--out DIR]
    -> DIR/gpu_check.json, DIR/gpu_check.md
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
# Seconds per stage on a GPU: 340 in all, under the 6 minutes that leave a 15-minute window room
# for a rerun. Sized from the first window (H200, cold caches; not yet run at these budgets): a
# compile costs 37 s in the bench and up to 131 s in the trainer, so the throughput stage times
# one mode a model and the accuracy stage trains uncompiled (SHORT_ROUTE).
BUDGETS = {"gpu_tests": 40, "kernels": 35, "throughput": 150, "loader": 10, "accuracy": 105}
# The accuracy stage's short run: the `gpu` recipe's route and the ResNet, 10 epochs a stage,
# eager. At about 630 steps a stage a compile (40-130 s on a fresh machine) would cost more than
# it saves; the full recipe, compiled, is `lensperf bench --time-to-target` on a GPU.
SHORT_ROUTE = ["epochs=10", "runtime.compile=false"]
DRY_BUDGET = 240


def _stage_tests(out: Path, dry: bool) -> dict:
    # Triton compiles each kernel variant on first use: across 8 processes where xdist is there
    import importlib.util

    spread = (
        ["-n", "8", "-p", "no:benchmark"] if not dry and importlib.util.find_spec("xdist") else []
    )
    # -v: a line per test as it ends, so a run cut off by its budget still names its failures
    args = ["-m", "gpu", "-v", "-rf", "--tb=short", *spread, "tests/kernels"]
    # correctness only: one block config per launch instead of autotuning every test's shape
    result = _pytest(args, out / "gpu_tests.pytest.log", {"LENSPERF_AUTOTUNE": "0"})
    return {"exit": result}


def _stage_kernels(out: Path, dry: bool) -> dict:
    files = ["benchmarks/bench_masking.py", "benchmarks/bench_attention.py"]
    # forward + backward together only: what training runs, and what the targets compare
    args = ["--benchmark-disable"] if dry else [
        "-k", "both and not 401",  # the shapes the targets name; the 2026-11-30 set ran 65 s
        "--benchmark-only", "--benchmark-max-time=0.05", "--benchmark-min-rounds=3",
        f"--benchmark-json={out / 'kernels.json'}",
    ]  # fmt: skip
    exit_code = _pytest([*files, *args], out / "kernels.pytest.log")
    table = ""
    if (out / "kernels.json").exists():
        sys.path.insert(0, str(ROOT))
        from benchmarks.summarize import load
        from benchmarks.summarize import table as summary_table

        table = summary_table(load([str(out / "kernels.json")]))
    return {"exit": exit_code, "table": table}


def _pytest(args: list[str], log: Path, env_extra: dict | None = None) -> int:
    # "0", not unset: tests/conftest.py turns the interpreter on wherever it is unset
    env = {**os.environ, "TRITON_INTERPRET": "0", **(env_extra or {})}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o",
               "addopts=", *args]  # fmt: skip
    with log.open("w") as f:
        return subprocess.run(
            command, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT
        ).returncode


def _stage_throughput(out: Path, dry: bool) -> dict:
    from lensperf.bench import throughput as T
    from lensperf.bench.measure import flops_per_image, matmul_peak, train_step_rate

    device = _device()
    batch = {"pretrain": 2, "finetune_cls": 2, "finetune_sr": 1} if dry else (
        {"pretrain": 1024, "finetune_cls": 512, "finetune_sr": 128})  # fmt: skip
    timing = {"warmup": 1, "windows": 1, "steps_per_window": 1} if dry else (
        {"warmup": 3, "windows": 3, "steps_per_window": 5})  # fmt: skip
    # On a GPU each compile costs 30-40 s of a short window (H200, cold cache), so one mode a
    # model: lensperf with its kernels against the reference with SDPA, both with CUDA graphs,
    # because the first window found the step launch-bound (18 ms for 0.6 ms of matmuls). A mode
    # that fails falls back along FALLBACK: without CUDA graphs, then without the kernels.
    wanted = ["eager_fp32"] if dry else [
        "compiled_bf16_kernels_cudagraphs", "compiled_bf16_sdpa_cudagraphs"]  # fmt: skip
    sizes = (64, 128) if dry else (4096, 8192)
    peak = matmul_peak(device, torch.bfloat16 if T.native_bf16(device) else torch.float32, sizes)
    results: dict = {"peak_flops": peak}
    found = T.workloads(batch, device)
    # The MAE and its reference first (the headline), then the fine-tunes, then a profile of
    # lensperf's MAE step (one more compile): a budget cut keeps what matters most
    first = ["pretrain", "pretrain" + T.REFERENCE]
    order = first + [n for n in found if n not in first] + ["profile"]
    for name in order:
        if name == "profile":
            results["profile"] = _profile_mae(found["pretrain"], device, dry)
            _write_partial(out, "throughput", results)
            continue
        make, loss_fn, size = found[name]
        with T.ops.kernels_switched("off"):  # the counter sees aten matmuls, not Triton's
            flops = flops_per_image(make(False).to(device), loss_fn, size)
        available = {m.name: m for m in T.modes(device, reference=name.endswith(T.REFERENCE))}
        queue = [available[m] for m in wanted if m in available]
        while queue:
            mode = queue.pop(0)
            torch._dynamo.reset()
            try:  # one mode that fails (a kernel that does not compile) costs only its row
                with T.ops.kernels_switched("on" if mode.kernels else "off"):
                    r = train_step_rate(
                        make(mode.sdpa), loss_fn, size, device=device, amp=mode.amp,
                        compile_=mode.compile, compile_mode=mode.compile_mode,
                        fused_adamw=not name.endswith(T.REFERENCE), **timing,
                    )  # fmt: skip
                r["peak_fraction"] = r["images_per_s"] * flops / peak
            except Exception as error:  # noqa: BLE001 - recorded in the report, not swallowed
                r = {"error": f"{type(error).__name__}: {error}"[:500]}
                if FALLBACK.get(mode.name) in available:
                    queue.append(available[FALLBACK[mode.name]])
            results.setdefault("throughput", {}).setdefault(name, {})[mode.name] = {
                "batch": size, "flops_per_image": flops, **r}  # fmt: skip
            results["vs_reference_best"] = reference_ratios(results["throughput"])
            _write_partial(out, "throughput", results)
    return results


FALLBACK = {
    "compiled_bf16_kernels_cudagraphs": "compiled_bf16_kernels",
    "compiled_bf16_kernels": "compiled_bf16",
    "compiled_bf16_sdpa_cudagraphs": "compiled_bf16_sdpa",
}


def _profile_mae(workload, device: torch.device, dry: bool) -> dict:
    """One profiled MAE step of lensperf (compiled bf16 with its kernels on CUDA; eager on the
    dry run): is the step bound by the device or by the host that feeds it?"""
    from lensperf.bench import throughput as T
    from lensperf.bench.measure import profile_step, training_step

    make, loss_fn, size = workload
    cuda = device.type == "cuda"
    torch._dynamo.reset()
    try:
        with T.ops.kernels_switched("on" if cuda else "off"):
            step = training_step(make(False), loss_fn, device=device, amp=cuda, compile_=not dry,
                                 fused_adamw=True)  # fmt: skip
            return {"batch": size, **profile_step(step, device, steps=1 if dry else 3)}
    except Exception as error:  # noqa: BLE001 - recorded in the report, not swallowed
        return {"error": f"{type(error).__name__}: {error}"[:500]}


def reference_ratios(throughput: dict) -> dict:
    """lensperf's best mode over its reference's best mode, for every task measured so far."""
    from lensperf.bench import throughput as T

    ratios = {}
    for task in T.BENCH_CONFIGS:
        theirs = T.best_mode(throughput.get(task + T.REFERENCE, {}))[1]
        for name in (task, task + T.BRIGHTEST):
            ours = T.best_mode(throughput.get(name, {}))[1]
            if ours and theirs:
                ratios[name] = ours / theirs
    return ratios


def _stage_loader(out: Path, dry: bool) -> dict:
    """The DALI loader's rate against what the compiled MAE consumes; where DALI is not
    installed (its 420 MB wheel cannot always travel), the in-process loader's instead."""
    from lensperf.bench import throughput as T
    from lensperf.bench.time_to_target import _simulate
    from lensperf.data import make_loader

    try:
        import nvidia.dali  # noqa: F401

        backend = "dali"
    except ImportError:
        backend = "torch"
    store = _simulate(out / "work" / "loader.zarr", "demo", sr=False)
    device = _device()
    loader = make_loader(store, "train", batch_size=64 if dry else 1024, backend=backend,
                         num_workers=2 if backend == "dali" else 4, augment=True,
                         device=device)  # fmt: skip
    list(loader)  # warm-up epoch
    start, count = time.perf_counter(), 0
    for _ in range(1 if dry else 3):
        for batch in loader:
            count += len(batch["index"])
    if device.type == "cuda":
        torch.cuda.synchronize()
    rate = count / (time.perf_counter() - start)
    loader.close()
    consumed = _partial(out, "throughput").get("throughput", {})
    mae = T.best_mode(consumed.get("pretrain", {}))[1]
    return {"backend": backend, "loader_images_per_s": rate, "mae_consumes_images_per_s": mae,
            "ratio": rate / mae if mae else None}  # fmt: skip


def _stage_accuracy(out: Path, dry: bool) -> dict:
    if dry or _device().type != "cuda":
        return _quick_accuracy(out, dry)
    return _gpu_recipe_accuracy(out)


def _quick_accuracy(out: Path, dry: bool) -> dict:
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


def _gpu_recipe_accuracy(out: Path) -> dict:
    """The `gpu` recipe's route (pretraining + fine-tuning) and then the ResNet, short
    (SHORT_ROUTE), on a simulated 12,000-a-class store; each route is written as soon as it
    ends, so a budget cut keeps it. If the kernel tests failed, the route runs with the kernels
    off and says so; a route that fails with them runs again without."""
    from lensperf.bench import time_to_target as ttt

    kernels_ok = _stage_result(out, "gpu_tests").get("exit") == 0
    tasks = ("pretrain", "finetune_cls")
    overrides = {t: [*SHORT_ROUTE, *([] if kernels_ok else ["runtime.kernels=off"])] for t in tasks}
    store = ttt._simulate(out / "work" / "model_ii.zarr", "gpu", sr=False)
    results = {"recipe": "gpu, 10 epochs a stage, eager",
               "store": f"{ttt.STORE_SIZE['gpu']} a class, simulated",
               "kernels": "auto" if kernels_ok else "off", "routes": {}}  # fmt: skip
    # every half epoch: each evaluation of the `gpu` fine-tune averages 8 symmetries
    for route in ttt.routes("gpu", ("runtime.eval_every=0.5",)):
        if route.name == "vit_scratch":
            continue  # the CPU bench answers what pretraining buys; GPU minutes are scarce
        try:
            outcome = ttt.run_route(route, store, out / "work", overrides)
        except Exception as error:  # noqa: BLE001 - e.g. a kernel that fails at this shape
            results.setdefault("errors", {})[route.name] = f"{type(error).__name__}: {error}"[:500]
            plain = {t: [*o, "runtime.kernels=off"] for t, o in overrides.items()}
            outcome = ttt.run_route(route, store, out / "work", plain)
        ttt.record(results["routes"], route.name, outcome, pretrained_here=len(route.stages) > 1)
        _write_partial(out, "accuracy", results)
    return results


STAGES = {
    "gpu_tests": _stage_tests, "kernels": _stage_kernels, "throughput": _stage_throughput,
    "loader": _stage_loader, "accuracy": _stage_accuracy,
}  # fmt: skip


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _write_partial(out: Path, stage: str, value: dict) -> None:
    (out / f"{stage}.partial.json").write_text(json.dumps(value, indent=2))


def _partial(out: Path, stage: str) -> dict:
    """What a stage has measured: its result if it ended, else what it wrote as it went."""
    for path in (out / f"{stage}.json", out / f"{stage}.partial.json"):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):  # absent, or cut off by the stage's time limit
            continue
    return {}


def _stage_result(out: Path, stage: str) -> dict:
    path = out / f"{stage}.json"
    return json.loads(path.read_text()) if path.exists() else {}


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
        # its own process group, so a stage cut off takes its pytest workers and compilers with
        # it instead of leaving them on the GPU under the next stage's timings
        with (out / f"{stage}.log").open("a") as log:
            process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)  # fmt: skip
            try:
                code = process.wait(timeout=DRY_BUDGET if dry else budget)
                status = "ok" if code == 0 else f"failed (exit {code})"
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                status = "timed out"
        entry = {"status": status, "seconds": round(time.perf_counter() - started, 1)}
        entry["result"] = _partial(out, stage)
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
        lines += ["", f"## Training images/s (bf16 matmul peak {tp['peak_flops'] / 1e12:.1f} "
                  "TFLOP/s)", "", "| workload | mode | batch | images/s | peak fraction |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for name, modes in tp["throughput"].items():
            for mode, r in modes.items():
                if "error" in r:
                    lines.append(f"| {name} | {mode} | {r['batch']} | {r['error']} | - |")
                    continue
                lines.append(f"| {name} | {mode} | {r['batch']} | {r['images_per_s']:.0f} | "
                             f"{r['peak_fraction']:.1%} |")  # fmt: skip
        for task, ratio in tp.get("vs_reference_best", {}).items():
            lines.append(f"\n{task}: {ratio:.2f}x the reference's best mode")
    profile = tp.get("profile", {})
    if profile.get("top_ops"):
        busy = profile["device_busy_fraction"]
        lines += ["", f"## One MAE step profiled (batch {profile['batch']})", "",
                  f"{profile['step_s_profiled'] * 1e3:.1f} ms a step, "
                  f"{profile['launches_per_step']:.0f} kernel launches"
                  + (f", device busy {busy:.0%} of it" if busy is not None else ""),
                  "", "```", profile["top_ops"], "```"]  # fmt: skip
    loader = stages.get("loader", {}).get("result", {})
    if loader.get("loader_images_per_s"):
        ratio = loader.get("ratio")
        versus = f", {ratio:.1f}x what the compiled MAE consumes" if ratio else ""
        lines += ["", f"Loader ({loader['backend']}): {loader['loader_images_per_s']:.0f} "
                  f"images/s{versus}"]  # fmt: skip
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
