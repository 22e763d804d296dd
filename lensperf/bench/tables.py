"""The readable side of `lensperf bench`: a Markdown report and a throughput chart."""

from __future__ import annotations

from pathlib import Path

# The throughput targets on a CPU: best mode over the reference's best mode, and the
# fraction of the measured bf16 matmul peak reached in model FLOPs.
TARGETS = {"pretrain": (1.5, 0.75), "finetune_cls": (1.3, 0.65), "finetune_sr": (1.3, 0.65)}


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = [
        "# lensperf bench",
        "",
        f"- device: {env['device']} ({env['gpu'] or env['cpu']}), {env['threads']} threads",
        f"- git commit: {env['git_commit']}; quick: {results['quick']}",
        f"- timing: {results['timing']}; head to head: {results.get('duel_timing', '-')}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
        "",
        *(time_to_target_section(results["time_to_target"]) if "time_to_target" in results else []),
    ]
    if "throughput" in results:  # absent from a `--no-throughput` run
        lines += measured_speed_section(results)
    return "\n".join(lines)


def measured_speed_section(results: dict) -> list[str]:
    s = results["summary"]
    return [
        *throughput_section(results),
        "## Loader (images/s, batches of 256)",
        "",
        *(f"- {k}: {v:.0f}" for k, v in results["loader_images_per_s"].items()),
        "",
        f"Best loader: {s['loader_vs_pretrain_consumption']:.1f}x what MAE pretraining consumes "
        "(target 3x).",
        "",
        "Where the time goes in one MAE step: profile.txt.",
        "",
    ]


def throughput_section(results: dict) -> list[str]:
    s, flops = results["summary"], results["flops"]["tasks"]
    lines = [
        "## Training throughput (images/s, median of timed windows after warm-up)",
        "",
        "lensperf's models against plain reference models of the same size (public-code style) "
        "through the same switches. The best mode of each is timed again head to head, in "
        "short windows taken in turn; each ratio is the median of neighbouring windows' ratios, "
        "against the reference's *best* mode, and images/s are those windows' medians. The "
        "fraction of the peak is against square matmuls timed among those windows (the median "
        "of each round's), because a shared host's peak drifts too. "
        "\"Brightest patches only\": lensperf's model at its `cpu` recipe's `token_keep`, "
        "which passes only the patches holding the lensed arc through the encoder; its FLOPs "
        "are counted as executed.",
        "",
        "| task | best mode | images/s | reference best | images/s | ratio (target) "
        "| of bf16 peak (target) | reference of peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    t = results["throughput"]
    for task, entry in s["tasks"].items():
        ratio_target, peak_target = TARGETS[task]
        ours, ref = entry["images_per_s"], entry["reference_images_per_s"]
        lines.append(
            f"| {task} | {entry['best_mode']} | {ours:.0f} | {entry['reference_best_mode']} | "
            f"{ref:.0f} | **{entry['vs_reference_best']:.2f}x** ({ratio_target}x) | "
            f"{entry['fraction_of_peak']:.1%} ({peak_target:.0%}) | "
            f"{entry['reference_fraction_of_peak']:.1%} |"
        )
        if "brightest_vs_reference_best" in entry:
            sparse = entry["brightest_images_per_s"]
            lines.append(
                f"| {task}, brightest patches only | {entry['brightest_best_mode']} | "
                f"{sparse:.0f} | {entry['reference_best_mode']} | {ref:.0f} | "
                f"**{entry['brightest_vs_reference_best']:.2f}x** ({ratio_target}x) | "
                f"{entry['brightest_fraction_of_peak']:.1%} ({peak_target:.0%}) | "
                f"{entry['reference_fraction_of_peak']:.1%} |"
            )
    lines += [
        "",
        "Every mode of every workload, each task's timed together in interleaved windows:",
        "",
        "| workload | batch | mode | images/s | vs its eager fp32 | GFLOP/image | of matmul peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, modes in t.items():
        base = modes["eager_fp32"]["images_per_s"]
        for mode, r in modes.items():
            gflops = flops[name]["gflops_per_image"]
            frac = flops[name]["fraction_of_peak"][mode]
            lines.append(
                f"| {name} | {r['batch']} | {mode} | {r['images_per_s']:.1f} | "
                f"{r['images_per_s'] / base:.2f}x | {gflops:.2f} | {frac:.1%} |"
            )
    peak = results["flops"]["matmul_peak_tflops"]
    lines += [
        "",
        "Measured matmul peak: "
        + ", ".join(f"{k} {v:.2f} TFLOP/s" for k, v in peak.items())
        + ("" if "bf16" in peak else " (no native bf16 here: the bf16 modes were skipped)."),
        "",
    ]
    return lines


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
        "reached. The last column scores the final weights on the mean over the 8 D4 "
        "symmetries of each image (test-time averaging; evaluation only).",
        "",
        "| route | " + " | ".join(f"acc {x}" for x in targets)
        + f" | AUC {auc} | final accuracy | final macro AUC | minutes | final, D4-averaged |",
        "|---" * (len(targets) + 6) + "|",
    ]  # fmt: skip
    for r in t["routes"].values():
        final, tta = r["final"], r.get("final_tta")
        cells = [_minutes(r["time_to_accuracy"][x]) for x in targets]
        tta_cell = "-" if not tta else f"{tta['accuracy']:.4f} / {tta['auc_macro']:.5f}"
        lines.append(
            f"| {r['label']} | " + " | ".join(cells) + f" | {_minutes(r['time_to_auc'][auc])} | "
            f"{final['accuracy']:.4f} | {final['auc_macro']:.5f} | {final['train_s'] / 60:.1f} | "
            f"{tta_cell} |"
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
    if t.get("holdout"):
        lines += ["", *holdout_section(t["holdout"])]
    if t.get("seeds"):
        lines += ["", *seeds_section(t["seeds"])]
    return lines + ["", "Curves: time_to_accuracy.png.", ""]


def holdout_section(h: dict) -> list[str]:
    """The routes' final weights on the held-out store, and the pair's McNemar test."""
    routes = h["routes"]
    n = next(iter(routes.values()))["plain"]["images"]
    lines = [
        "### End points on held-out images",
        "",
        f"Each route's final weights scored on the {n:,} validation images of {h['store']}.",
        "",
        "| route | errors | accuracy | macro AUC | errors, D4-averaged | D4-averaged accuracy "
        "/ macro AUC |",
        "|---|---|---|---|---|---|",
    ]
    for r in routes.values():
        p, d = r["plain"], r["d4"]
        lines.append(
            f"| {r['label']} | {p['errors']} | {p['accuracy']:.5f} | {p['auc_macro']:.7f} | "
            f"{d['errors']} | {d['accuracy']:.5f} / {d['auc_macro']:.7f} |"
        )
    for pair in h["pairs"]:
        a, b = (routes[pair[k]]["label"] for k in ("a", "b"))
        counts = [
            f"{name}, {pair[way]['only_a_right']} against {pair[way]['only_b_right']} "
            f"(p = {pair[way]['mcnemar_p']:.3g})"
            for way, name in (("plain", "plain"), ("d4", "D4-averaged"))
        ]
        lines += ["", f"Images right only for {a} against only for {b}, exact McNemar p: "
                  + "; ".join(counts) + "."]  # fmt: skip
        if "mean" in pair:
            mean = pair["mean"]
            lines.append(
                f"The mean of the two models' probabilities (`--checkpoint` twice; "
                f"{mean['train_s'] / 60:.1f} minutes of training for both): "
                f"{mean['plain']['errors']} errors, macro AUC {mean['plain']['auc_macro']:.7f}; "
                f"D4-averaged {mean['d4']['errors']}, {mean['d4']['auc_macro']:.7f}."
            )
    return lines


def seeds_section(repeats: dict) -> list[str]:
    """The fine-tune and the ResNet over several seeds, each seed's row and the medians."""
    first = next(iter(repeats.values()))
    targets, n = list(first["median"]["time_to_accuracy"]), len(first["seeds"])
    lines = [
        f"### Over {n} seeds",
        "",
        f"The fine-tune (from the route's encoder) and the ResNet with `runtime.seed` 0 to "
        f"{n - 1}, one after another; seed 0 is the run above. A median crossing is over the "
        "seeds that reached it (how many, in brackets).",
        "",
        "| route | seed | " + " | ".join(f"acc {x}" for x in targets)
        + " | final accuracy / macro AUC | final, D4-averaged |",
        "|---" * (len(targets) + 4) + "|",
    ]  # fmt: skip
    held_out = "holdout_errors" in first["median"]
    if held_out:  # a column more: each seed's errors on the held-out store
        lines[-2] += " held-out errors, plain / D4-averaged |"
        lines[-1] += "---|"

    def row(label, seed, cells, final, tta, errors):
        ends = [f"{e['accuracy']:.4f} / {e['auc_macro']:.6f}" if e else "-" for e in (final, tta)]
        if held_out:
            ends.append(f"{errors['plain']:g} / {errors['d4']:g}")
        return f"| {label} | {seed} | " + " | ".join([*cells, *ends]) + " |"

    for r in repeats.values():
        for run in r["seeds"]:
            cells = [_minutes(run["time_to_accuracy"][x]) for x in targets]
            lines.append(row(r["label"], run["seed"], cells, run["final"], run["final_tta"],
                             run.get("holdout_errors")))  # fmt: skip
        m = r["median"]
        crossings = (m["time_to_accuracy"][x] for x in targets)
        cells = [f"{_minutes(c if c['reached'] else None)} ({c['reached']})" for c in crossings]
        lines.append(row(r["label"], "**median**", cells, m["final"], m["final_tta"],
                         m.get("holdout_errors")))  # fmt: skip
    return lines


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
    """One panel a task: images/s per mode, lensperf's bars (all patches, and the brightest
    only where measured) beside the reference's."""
    from lensperf.figures import figure, save_png

    t = results["throughput"]
    tasks = [name for name in t if not name.endswith(("_reference", "_brightest"))]
    fig, axes = figure(1, len(tasks), figsize=(4.2 * len(tasks), 3.4))
    for ax, task in zip(axes, tasks):
        series = [
            ("lensperf", t[task]),
            ("lensperf, brightest patches", t.get(task + "_brightest")),
        ]
        series = [(label, modes) for label, modes in series if modes]
        series.append(("reference", t[task + "_reference"]))
        names = list(dict.fromkeys(m for _, modes in series for m in modes))
        width = 0.8 / len(series)
        for k, (label, modes) in enumerate(series):
            offset = (k - (len(series) - 1) / 2) * width
            x = [i + offset for i, m in enumerate(names) if m in modes]
            ax.bar(x, [modes[m]["images_per_s"] for m in names if m in modes], width, label=label)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        ax.set_title(task)
        ax.set_ylabel("images/s")
    axes[0].legend(fontsize=7)
    save_png(fig, path)
