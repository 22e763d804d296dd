"""The readable side of `lensperf bench`: a Markdown report and a throughput chart."""

from __future__ import annotations

from pathlib import Path


def markdown(results: dict) -> str:
    env, s = results["environment"], results["summary"]
    lines = [
        "# lensperf bench",
        "",
        f"- device: {env['device']} ({env['gpu'] or env['cpu']}), {env['threads']} threads",
        f"- git commit: {env['git_commit']}; quick: {results['quick']}",
        f"- timing: {results['timing']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
        "",
        "## Training throughput (images/s, median of timed windows after warm-up)",
        "",
        "| task | batch | mode | images/s | vs eager fp32 | GFLOP/image | of matmul peak |",
        "|---|---|---|---|---|---|---|",
    ]
    flops = results["flops"]["tasks"]
    for task, modes in results["throughput"].items():
        base = modes.get("eager_fp32", {}).get("images_per_s")
        for mode, r in modes.items():
            gflops = flops.get(task, {}).get("gflops_per_image")
            frac = flops.get(task, {}).get("fraction_of_peak", {}).get(mode)
            gflops_text = "" if gflops is None else f"{gflops:.2f}"
            frac_text = "" if frac is None else f"{frac:.1%}"
            lines.append(
                f"| {task} | {r['batch']} | {mode} | {r['images_per_s']:.1f} | "
                f"{r['images_per_s'] / base:.2f}x | {gflops_text} | {frac_text} |"
            )
    peak = results["flops"]["matmul_peak_tflops"]
    lines += [
        "",
        "Measured matmul peak: "
        + ", ".join(f"{k} {v:.2f} TFLOP/s" for k, v in peak.items())
        + ("" if "bf16" in peak else " (no native bf16 here: the bf16 modes were skipped)."),
        "",
        "## Summary",
        "",
        f"- MAE pretraining vs the plain reference MAE (eager fp32, argsort+gather): "
        f"**{s['pretrain_speedup_vs_reference_mae']:.2f}x** (target 2x)",
    ]
    for task, ratio in s["speedup_vs_eager_fp32"].items():
        target = "2x vs reference" if task == "pretrain" else "1.5x"
        lines.append(
            f"- {task}: best mode {s['best_mode'][task]}, {ratio:.2f}x its eager fp32"
            f" (target {target})"
        )
    lines.append(
        f"- loader: {max(results['loader_images_per_s'].values()):.0f} images/s best, "
        f"{s['loader_vs_pretrain_consumption']:.1f}x what pretraining consumes (target 3x)"
    )
    lines += ["", "## Loader (images/s, batches of 256)", ""]
    lines += [f"- {k}: {v:.0f}" for k, v in results["loader_images_per_s"].items()]
    if "time_to_target" in results:
        lines += ["", "## Time to target (demo recipes, from scratch)", ""]
        for task, r in results["time_to_target"].items():
            reached = (
                f"{r['reached_after_s']:.0f} s"
                if r["reached_after_s"] is not None
                else "not reached"
            )
            lines.append(
                f"- {task}: {r['metric']} >= {r['target']}: {reached} "
                f"(best {r['best']:.4f} in {r['epochs_run']} epochs, {r['wall_s']:.0f} s)"
            )
    lines += ["", "Where the time goes in one MAE step: profile.txt.", ""]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results["throughput"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.2))
    for ax, task in zip(axes, tasks):
        modes = results["throughput"][task]
        ax.bar(range(len(modes)), [r["images_per_s"] for r in modes.values()])
        ax.set_xticks(range(len(modes)), list(modes), rotation=30, ha="right", fontsize=7)
        ax.set_title(task)
        ax.set_ylabel("images/s")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
