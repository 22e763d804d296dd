"""The `lensperf` command line.

Every command explains itself with --help, shows a progress bar on long work (on a terminal),
and fails on bad input with one line on stderr and exit status 2, leaving nothing half-written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from lensperf import interrupts
from lensperf.errors import ConfigError, LensperfError
from lensperf.presets import preset_names, resolve_config


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)

ENSEMBLE_HELP = (
    "a checkpoint (checkpoint.pt, best.pt, ema.pt); give it more than once to use the mean of "
    "several classifiers' probabilities (e.g. an MAE fine-tune and a ResNet, whose errors fall "
    "on different images)"
)


# ---------------------------------------------------------------- data commands


def _simulate(args: argparse.Namespace, sr: bool) -> None:
    from lensperf.config import load_config
    from lensperf.simulate.config import SimulationConfig, SRSimulationConfig
    from lensperf.simulate.runner import default_workers, simulate_classification, simulate_sr

    # The flags are shorthands for config overrides, applied after the positional ones.
    count_key, count = ("n", args.n) if sr else ("n_per_class", args.n_per_class)
    overrides = list(args.overrides)
    if count is not None:
        overrides.append(f"{count_key}={count}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    config_type = SRSimulationConfig if sr else SimulationConfig
    config = load_config(config_type, resolve_config(args.config, "data"), overrides)
    simulate = simulate_sr if sr else simulate_classification
    workers = args.workers or default_workers()
    out = simulate(
        config, args.out, workers=workers, overwrite=args.overwrite, compress=args.compress
    )
    what = f"{config.n} LR/HR pairs" if sr else f"{3 * config.n_per_class} images"
    print(f"wrote {out}: {what} ({config.name}, seed {config.seed})")


def cmd_simulate(args: argparse.Namespace) -> None:
    _simulate(args, sr=False)


def cmd_simulate_sr(args: argparse.Namespace) -> None:
    _simulate(args, sr=True)


def cmd_import(args: argparse.Namespace) -> None:
    from lensperf.store.importer import import_tree

    report = import_tree(
        args.src,
        args.out,
        kind=args.kind,
        split=args.split,
        val_fraction=args.val_fraction,
        seed=args.seed,
        skip_bad=args.skip_bad,
        normalise=args.normalise,
        overwrite=args.overwrite,
        compress=args.compress,
    )
    counts = ", ".join(f"{k} {v}" for k, v in report.counts.items())
    print(f"wrote {report.out}: {report.kind} store ({counts})")
    if report.skipped:
        print(f"skipped {len(report.skipped)} bad file(s), first: {report.skipped[0]}")


def cmd_inspect(args: argparse.Namespace) -> None:
    from lensperf.store.inspect import format_summary, sample_grid_png, summarize

    summary = summarize(args.store)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    if args.png:
        print(f"wrote {sample_grid_png(args.store, args.png)}")


def _train_command(task: str, section: str):
    def run(args: argparse.Namespace) -> None:
        from lensperf.train.run import train

        metrics = train(
            task, resolve_config(args.config, section), args.overrides,
            resume=args.resume, overwrite=args.overwrite, stop_after=args.stop_after,
        )  # fmt: skip
        print(json.dumps(metrics, indent=2))

    return run


def cmd_evaluate(args: argparse.Namespace) -> None:
    from lensperf.train.run import evaluate

    metrics = evaluate(
        args.checkpoint, args.data, args.out, split=args.split, tta=args.tta, shift=args.shift
    )
    print(json.dumps(metrics, indent=2))


def cmd_predict(args: argparse.Namespace) -> None:
    from lensperf.predict import predict

    report = predict(
        args.checkpoint, args.inputs, args.out, batch_size=args.batch_size, tta=args.tta,
        skip_bad=args.skip_bad, overwrite=args.overwrite,
    )  # fmt: skip
    what = "rows" if report.task == "finetune_cls" else "upscaled images"
    print(f"wrote {report.out}: {report.count} {what}")
    if report.skipped:
        print(f"skipped {len(report.skipped)} bad file(s), first: {report.skipped[0]}")


def cmd_export(args: argparse.Namespace) -> None:
    from lensperf.train.encoder_io import export_encoder

    print(f"wrote {export_encoder(args.checkpoint, args.out, overwrite=args.overwrite)}")


def cmd_bench(args: argparse.Namespace) -> None:
    from lensperf.bench.run import run_bench
    from lensperf.store import CLASSIFICATION
    from lensperf.store.io import open_store

    if args.seeds > 1 and not args.time_to_target:
        raise ConfigError("--seeds", "repeats the time-to-target runs: add --time-to-target")
    if args.holdout:
        if not args.time_to_target:
            raise ConfigError("--holdout", "scores the time-to-target routes: add --time-to-target")
        open_store(args.holdout, CLASSIFICATION, splits=("val",))  # before the training, not after
    if args.long_finetune and not args.time_to_target:
        raise ConfigError("--long-finetune", "adds a time-to-target route: add --time-to-target")
    if args.long_pretrain and not args.long_finetune:
        raise ConfigError("--long-pretrain", "pretrains the --long-finetune route: add it")
    if args.no_throughput and not args.time_to_target:
        raise ConfigError("--no-throughput", "leaves only the time-to-target routes: add them")
    results = run_bench(
        args.out, quick=args.quick, with_time_to_target=args.time_to_target,
        store=args.store, sr_store=args.sr_store, seeds=args.seeds, holdout=args.holdout,
        long_epochs=args.long_finetune, long_pretrain_epochs=args.long_pretrain,
        measure_throughput=not args.no_throughput,
    )  # fmt: skip
    print((args.out / "results.md").read_text())
    print(f"wrote {args.out / 'results.json'}")
    del results


def cmd_demo(args: argparse.Namespace) -> None:
    from lensperf.demo import run_demo

    if not 0 < args.scale <= 1:
        raise LensperfError(f"--scale must be in (0, 1], got {args.scale}")
    run_demo(Path(args.out), workers=args.workers, scale=args.scale)


# ---------------------------------------------------------------- parser


def _add_common_sim_args(p: argparse.ArgumentParser, default_config: str) -> None:
    p.add_argument(
        "--config",
        default=default_config,
        help=f"YAML file, or a preset name in configs/data/ (default: {default_config})",
    )
    p.add_argument("--out", required=True, type=Path, help="output store, DIR.zarr")
    p.add_argument(
        "--workers", type=_positive_int, help="processes (default: all cores); output is identical"
    )
    p.add_argument("--seed", type=_non_negative_int, help="overrides the config's seed")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    _add_compress_arg(p)
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")


def _add_compress_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--compress",
        action="store_true",
        help="Blosc-LZ4 chunks: 14%% smaller on lens images, 2.5x slower to load (default: raw)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lensperf",
        description="Fast training stack for a strong-lensing foundation model "
        "(MAE on DeepLense-style data).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="simulate, import and inspect datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    p = data_commands.add_parser(
        "simulate",
        help="simulate a DeepLense-like classification set (no_sub / cdm / axion)",
        description="Simulate lens images with lenstronomy into a classification store: "
        "n-per-class images of each class, split 90/10 into train/val (seeded). Each image "
        "depends only on (seed, class, index), so --workers never changes the output.",
    )
    _add_common_sim_args(p, "model_ii")
    p.add_argument("--n-per-class", type=_positive_int, help="images per class")
    p.set_defaults(func=cmd_simulate)

    p = data_commands.add_parser(
        "simulate-sr",
        help="simulate super-resolution pairs (LR, HR) of no_sub lenses",
        description="Render each no_sub lens at the preset's HR grid and at half the pixels "
        "with twice the pixel scale (LR), into a super-resolution store.",
    )
    _add_common_sim_args(p, "sr")
    p.add_argument("--n", type=_positive_int, help="number of pairs")
    p.set_defaults(func=cmd_simulate_sr)

    p = data_commands.add_parser(
        "import",
        help="import DeepLense folders (.npy or FITS files) into a store",
        description="Import a DeepLense tree: one folder per class (no_sub|nosub|no, "
        "cdm|sphere, axion|vort), with an optional unlabelled/ folder of images of no known "
        "class (train split only: for pretraining and distill_unlabelled), or HR/ and LR/ "
        "folders of paired files, optionally inside "
        "train/, val/ (or validation/) and test/ folders, which keep their split (without val/, "
        "validation files are carved out of train). Reads .npy files (plain, (1, H, W), flat "
        "with or without an appended label, [image, mass] object arrays) and FITS (.fits, "
        ".fit, .fits.gz). Object arrays need pickle: import only files you trust.",
    )
    p.add_argument("src", type=Path, help="the DeepLense folder")
    p.add_argument("--out", required=True, type=Path, help="output store, DIR.zarr")
    p.add_argument("--kind", choices=["classification", "sr"], help="default: detected")
    p.add_argument(
        "--split", choices=["train", "val", "test"],
        help="import the whole tree as this one split (a held-out set to score with "
        "`lensperf evaluate --split test`); default: train/val as the tree says",
    )  # fmt: skip
    p.add_argument("--val-fraction", type=float, default=0.1, help="default: 0.1")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="split seed (default: 0)")
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip unreadable or ill-shaped files, and count them",
    )
    p.add_argument(
        "--normalise",
        action="store_true",
        help="min-max normalise each image to [0, 1] (classification and SR trees); models "
        "trained on the store then do the same to the files they predict on",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    _add_compress_arg(p)
    p.set_defaults(func=cmd_import)

    p = data_commands.add_parser(
        "inspect",
        help="counts, pixel statistics and a sample grid of a store",
        description="Print bytes on disk and chunk codecs, counts per split and class, pixel "
        "statistics and the axion-mass range of a store; optionally write a PNG grid of "
        "samples per class.",
    )
    p.add_argument("store", type=Path, help="a store, DIR.zarr")
    p.add_argument("--png", type=Path, help="write a grid of samples to this PNG")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_inspect)

    training = [
        ("pretrain", "pretrain", "pretrain", "MAE pretraining on no_sub images"),
        ("finetune-cls", "finetune_cls", "finetune_cls", "fine-tune for no_sub/cdm/axion"),
        ("finetune-sr", "finetune_sr", "finetune_sr", "fine-tune for 2x super-resolution"),
    ]
    for command, task, section, summary in training:
        p = commands.add_parser(
            command,
            help=summary,
            description=f"{summary}. Writes config.yaml, log.jsonl, checkpoint.pt, metrics.json "
            "and report/ to the config's out_dir. Under torchrun the same command trains with "
            "DDP (gloo on CPU, nccl on GPU).",
        )
        p.add_argument(
            "--config", required=True,
            help=f"YAML file, or a preset name in configs/{section}/ "
            f"({', '.join(preset_names(section))})",
        )  # fmt: skip
        run = p.add_mutually_exclusive_group()
        run.add_argument(
            "--resume", action="store_true", help="continue the run in out_dir from its checkpoint"
        )
        run.add_argument(
            "--overwrite", action="store_true",
            help="replace a run already in out_dir (without it, such a run is never touched)",
        )  # fmt: skip
        p.add_argument(
            "--stop-after", type=_non_negative_int, default=0, metavar="STEPS",
            help="checkpoint and stop after this many steps (a time box; resume later)",
        )  # fmt: skip
        p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
        p.set_defaults(func=_train_command(task, section))

    p = commands.add_parser(
        "evaluate",
        help="metrics and report of a checkpoint on a split of a store",
        description="Evaluate any lensperf checkpoint (or best.pt) on a split of a store "
        "(val by default; test for a held-out set): metrics.json and the task's figures in "
        "--out (default: beside the checkpoint).",
    )
    p.add_argument("--checkpoint", required=True, type=Path, action="append", help=ENSEMBLE_HELP)
    p.add_argument("--data", required=True, type=Path, help="a store, DIR.zarr")
    p.add_argument("--split", default="val", choices=["train", "val", "test"],
                   help="default: val")  # fmt: skip
    p.add_argument("--out", type=Path, help="report folder")
    p.add_argument(
        "--tta", action="store_true",
        help="a classifier: average over the 8 flips/rotations of each image",
    )  # fmt: skip
    p.add_argument(
        "--shift", type=int, nargs=2, default=(0, 0), metavar=("DY", "DX"),
        help="a classifier: move every image by DY rows and DX columns of pixels (wrapping "
        "round), to see how much the model depends on where the lens sits; default: 0 0",
    )  # fmt: skip
    p.set_defaults(func=cmd_evaluate)

    p = commands.add_parser(
        "predict",
        help="apply a trained model to new images (.npy, FITS, folders, stores)",
        description="Apply a finetune_cls or finetune_sr checkpoint (or best.pt) to images: "
        ".npy and FITS files, folders of them (recursively) and stores (STORE.zarr[:split], "
        "val by default). Each input is preprocessed as the model's training images were "
        "(per-image min-max scaling, image size). A classifier writes a CSV (path, p_no_sub, "
        "p_cdm, p_axion, predicted); an SR model a folder of upscaled images, one per input, "
        "same name and format.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders or stores")
    p.add_argument("--checkpoint", required=True, type=Path, action="append", help=ENSEMBLE_HELP)
    p.add_argument("--out", required=True, type=Path, help="CSV file (classifier) or folder (SR)")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="default: 64")
    p.add_argument("--tta", action="store_true", help="average over the 8 symmetries of each image")
    p.add_argument(
        "--skip-bad", action="store_true",
        help="skip unreadable or ill-sized files and count them (default: stop at the first)",
    )  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=cmd_predict)

    p = commands.add_parser(
        "export",
        help="export a checkpoint's encoder as safetensors + YAML",
        description="Write encoder.safetensors and encoder.yaml: loadable with "
        "pretrained=DIR by the fine-tune commands, and lensperf.api.load_encoder(DIR).",
    )
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.set_defaults(func=cmd_export)

    p = commands.add_parser(
        "bench",
        help="training throughput, FLOPs, loader speed and time-to-target on this machine",
        description="Measure MAE pretraining, classification and SR fine-tuning throughput "
        "(eager fp32, compiled, compiled + bf16, and compiled + bf16 + Triton kernels on CUDA), "
        "plain reference models of the same size timed in interleaved windows with them, FLOPs "
        "per image against the measured matmul peak, the loaders, and optionally "
        "time-to-target. Writes results.json, results.md, "
        "throughput.png and profile.txt to --out.",
    )
    p.add_argument("--out", type=Path, default=Path("bench"), help="default: bench/")
    p.add_argument("--quick", action="store_true", help="a few minutes on a CPU")
    p.add_argument(
        "--time-to-target", action="store_true",
        help="also train the three routes to a classifier (lensperf's MAE route, its ViT from "
        "scratch, a ResNet baseline) on one store and time them to accuracy 0.90/0.95/0.97/0.98; "
        "the cpu recipes take about 55 minutes on 2 cores (2 hours on the slowest), --quick "
        "the demo ones in minutes",
    )  # fmt: skip
    p.add_argument(
        "--store", type=Path,
        help="classification store for --time-to-target (default: simulate 12,000 a class)",
    )  # fmt: skip
    p.add_argument(
        "--sr-store", type=Path, help="SR store for --time-to-target (default: simulate one)"
    )
    p.add_argument(
        "--seeds", type=_positive_int, default=1, metavar="N",
        help="with --time-to-target, also train the fine-tune (from the route's encoder) and the "
        "ResNet with seeds 1..N-1 and report each seed and the medians: near 0.999 accuracy a "
        "few images decide a gap (about 25 more minutes per seed with the cpu recipes)",
    )  # fmt: skip
    p.add_argument(
        "--holdout", type=Path, metavar="STORE",
        help="with --time-to-target, also score each route's final weights on this "
        "classification store's val split, plain and D4-averaged, and compare the MAE route with "
        "the ResNet image by image (McNemar), and the two averaged; with --seeds, every seed's "
        "end point too: make it large, e.g. `lensperf data simulate --config model_ii "
        "--n-per-class 12000 seed=7 val_fraction=0.9 --out holdout.zarr`",
    )  # fmt: skip
    p.add_argument(
        "--long-finetune", type=_positive_int, metavar="EPOCHS",
        help="with --time-to-target, also fine-tune the MAE route's encoder for EPOCHS epochs "
        "(the recipe's: 30), timed with its pretraining: the route given more of the hour "
        "(90 epochs: about 32 more minutes with the cpu recipe)",
    )  # fmt: skip
    p.add_argument(
        "--long-pretrain", type=_positive_int, metavar="EPOCHS",
        help="with --long-finetune, give that route an encoder of its own pretrained for EPOCHS "
        "epochs (the recipe's: 10, at batch 64), its time counted; that encoder's fine-tune is "
        "also reported alone, its pretraining amortised. On a 2-core machine that "
        "pretrains at about 1,200 images/s at batch 64, 65 pretraining + 60 fine-tuning epochs "
        "took 54.5 minutes (README, 'Time to accuracy'); at the former batch 128 the hour held "
        "80 + 75 at about 1,800 images/s, 60 + 45 at about 1,100",
    )  # fmt: skip
    p.add_argument(
        "--no-throughput", action="store_true",
        help="with --time-to-target, run only its routes: leave out the throughput timing, the "
        "loader and the profile, which take about 20 minutes more on 2 cores",
    )  # fmt: skip
    p.set_defaults(func=cmd_bench)

    p = commands.add_parser(
        "demo",
        help="the pipeline on a small simulated set, CPU-sized (minutes)",
        description="The whole pipeline, CPU-sized: simulate a small Model II set and an SR set, "
        "pretrain the MAE on no_sub, fine-tune it for classification and super-resolution, "
        "evaluate, and write reports and demo_summary.json to --out (a few minutes on 2 cores).",
    )
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--workers", type=_positive_int, help="processes (default: all cores)")
    p.add_argument(
        "--scale", type=float, default=1.0,
        help="fraction of the demo's data, with one epoch per stage below 1 (default: 1)",
    )  # fmt: skip
    p.set_defaults(func=cmd_demo)
    return parser


def describe_os_error(error: OSError) -> str:
    """One line: the path, what the system said, and nothing of the traceback."""
    if error.filename is None:
        return str(error)
    return f"{error.filename}: {error.strerror or error}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM takes the same clean-up path as Ctrl-C: temporary outputs are removed.
    try:
        with interrupts.handled():
            args.func(args)
    except LensperfError as error:
        print(f"lensperf: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # Whoever read the output stopped (`| head -1`): nothing is wrong, and nothing more can
        # be printed. Point stdout at /dev/null so the interpreter's final flush is silent too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # what a shell reports for a process ended by SIGPIPE
    except OSError as error:  # permissions, a full disk, a vanished path: the user's system
        print(f"lensperf: error: {describe_os_error(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lensperf: interrupted; partial outputs were removed", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
