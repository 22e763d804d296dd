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
        *(time_to_target_section(results["time_to_target"]) if "time_to_target" in results else []),
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
    lines += ["", "Where the time goes in one MAE step: profile.txt.", ""]
    return "\n".join(lines)


def _minutes(point: dict | None) -> str:
    return "-" if point is None else f"{point['train_s'] / 60:.1f}"


def time_to_target_section(t: dict) -> list[str]:
    """The headline: minutes of training (evaluation left out) to each accuracy target."""
    targets = list(next(iter(t["routes"].values()))["time_to_accuracy"])
    auc = next(iter(next(iter(t["routes"].values()))["time_to_auc"]))
    lines = [
        f"## Time to accuracy ({t['recipe']} recipes, store {t['store']})",
        "",
        "Minutes of training wall time (evaluation excluded; a pretraining route's pretraining "
        "included) to the first validation evaluation at or above each accuracy; '-': not "
        "reached.",
        "",
        "| route | " + " | ".join(f"acc {x}" for x in targets)
        + f" | AUC {auc} | final accuracy | final macro AUC | minutes |",
        "|---" * (len(targets) + 5) + "|",
    ]  # fmt: skip
    for r in t["routes"].values():
        final = r["final"]
        cells = [_minutes(r["time_to_accuracy"][x]) for x in targets]
        lines.append(
            f"| {r['label']} | " + " | ".join(cells) + f" | {_minutes(r['time_to_auc'][auc])} | "
            f"{final['accuracy']:.4f} | {final['auc_macro']:.4f} | {final['train_s'] / 60:.1f} |"
        )
    sr = t.get("sr")
    if sr:
        lines += [
            "",
            f"Super-resolution from the MAE route's encoder: PSNR {sr['psnr']:.2f} dB (bicubic "
            f"{sr['bicubic_psnr']:.2f}, +{sr['psnr_gain_db']:.2f} dB), SSIM {sr['ssim']:.4f}, "
            f"in {sr['train_seconds'] / 60:.1f} min (targets: PSNR >= {sr['targets']['psnr']}, "
            f"SSIM >= {sr['targets']['ssim']}, >= +{sr['targets']['psnr_gain_db']} dB).",
        ]
    return lines + ["", "Curves: time_to_accuracy.png.", ""]


def plot_time_to_accuracy(t: dict, path: Path) -> None:
    """Accuracy and macro AUC of every route against minutes of training and images seen."""
    from lensperf.figures import figure, save_png

    fig, axes = figure(2, 2, figsize=(11, 7.5))
    for r in t["routes"].values():
        style = (
            "--" if r["offset_s"] == 0 and len(r["stages"]) == 1 and "only" in r["label"] else "-"
        )
        curve = r["curve"]
        for row, key in enumerate(("accuracy", "auc_macro")):
            minutes = [p["train_s"] / 60 for p in curve]
            images = [p["images"] for p in curve]
            values = [p[key] for p in curve]
            axes[row, 0].plot(minutes, values, style, marker=".", label=r["label"])
            axes[row, 1].plot(images, values, style, marker=".", label=r["label"])
    for row, key in enumerate(("validation accuracy", "validation macro AUC")):
        axes[row, 0].set_ylabel(key)
        axes[row, 0].set_xlabel("training minutes")
        axes[row, 1].set_xlabel("images seen")
        for ax in axes[row]:
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    save_png(fig, path)


def plot(results: dict, path: Path) -> None:
    from lensperf.figures import figure, save_png

    tasks = list(results["throughput"])
    fig, axes = figure(1, len(tasks), figsize=(3.6 * len(tasks), 3.2))
    for ax, task in zip(axes, tasks):
        modes = results["throughput"][task]
        ax.bar(range(len(modes)), [r["images_per_s"] for r in modes.values()])
        ax.set_xticks(range(len(modes)), list(modes), rotation=30, ha="right", fontsize=7)
        ax.set_title(task)
        ax.set_ylabel("images/s")
    save_png(fig, path)
