"""Time to accuracy: each route to a classifier trained on one store, one after another, its
validation accuracy and macro AUC recorded against training wall time and images seen.

A route is a list of training stages; every stage's training clock counts (the trainer's
`train_s`, evaluation left out), so lensperf's route pays for its pretraining. The routes:
  * `mae`: lensperf's route, MAE pretraining then fine-tuning (its fine-tuning alone, with the
    pretraining amortised over every fine-tune, is reported too, as `mae_finetune`);
  * `vit_scratch`: lensperf's ViT classifier trained from scratch (what pretraining buys);
  * `cnn`: the supervised ResNet baseline with its own recipe;
  * `mae_long` (asked for): the MAE route's encoder fine-tuned longer, the route given more of
    the hour the comparison allows; with an encoder of its own pretrained longer, that
    encoder's fine-tuning alone is reported too, as `mae_long_finetune`.
With `seeds` > 1 the two routes whose end points decide the comparison, the amortised fine-tune
(from the same encoder) and the ResNet, run again with `runtime.seed` 1, 2, ...: at 0.999
accuracy a few images decide a gap, so their medians are the comparison. With a `holdout` store
the routes' end points are also scored on it, image by image (holdout.py), and with `seeds`
too every seed's.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from lensperf.bench.holdout import final_weights, holdout_comparison, seed_holdout
from lensperf.bench.say import say
from lensperf.presets import preset
from lensperf.store import CLASSIFICATION
from lensperf.store.io import open_store

ACCURACY_TARGETS = (0.90, 0.95, 0.97, 0.98)
AUC_TARGET = 0.995
SR_TARGETS = {"psnr": 40.0, "ssim": 0.97, "psnr_gain_db": 2.0}
# Stores simulated when none is given: the issue-sized set (12,000 a class, 90/10) or a small
# one for --quick. Evaluations every quarter epoch find a crossing within a few percent.
STORE_SIZE = {"cpu": 12000, "gpu": 12000, "demo": 400}
SR_PAIRS = {"cpu": 4000, "gpu": 4000, "demo": 200}
EVAL_EVERY = {"cpu": 0.25, "gpu": 0.25, "demo": 0.5}
CNN_PRESET = {"cpu": "cnn", "gpu": "cnn", "demo": "cnn_demo"}
SEEDED_ROUTES = ("mae_finetune", "cnn")  # the routes `seeds` repeats


@dataclass(frozen=True)
class Stage:
    task: str  # "pretrain" or "finetune_cls"
    preset: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Route:
    name: str
    label: str
    stages: tuple[Stage, ...]  # the last stage is the classifier scored


def routes(recipe: str, extra: tuple[str, ...] = ()) -> list[Route]:
    """The three routes at one recipe scale ("cpu", "gpu", or "demo" for a quick run). `extra`
    overrides go to every classification stage (the evaluation cadence, a store)."""
    return [
        Route("mae", "lensperf: MAE pretraining + fine-tuning", (
            Stage("pretrain", recipe),
            Stage("finetune_cls", recipe, extra),
        )),
        # layer-wise lr decay is for a pretrained encoder: a new one learns at one rate
        Route("vit_scratch", "lensperf ViT from scratch",
              (Stage("finetune_cls", recipe, ("pretrained=", "optim.layer_decay=1", *extra)),)),
        Route("cnn", "ResNet baseline from scratch",
              (Stage("finetune_cls", CNN_PRESET[recipe], extra),)),
    ]  # fmt: skip


def run_route(route: Route, store: Path, workdir: Path, overrides: dict | None = None) -> dict:
    """Train the route's stages in order; its curve is the last stage's evaluations, shifted by
    the training time and images of the stages before it. `overrides` (task -> list) go to every
    stage of that task."""
    from lensperf.train.run import train

    offset_s, offset_images, checkpoint = 0.0, 0, None
    stages = []
    for stage in route.stages:
        out = workdir / route.name / stage.task
        given = [f"out_dir={out}", f"data.store={store}", *stage.overrides,
                 *(overrides or {}).get(stage.task, [])]  # fmt: skip
        if checkpoint is not None:
            given.append(f"pretrained={checkpoint}")
        say(f"{route.name}: {stage.task} ({stage.preset}) started")
        # the bench's work folder is its own: a second bench run replaces the first's runs
        metrics = train(stage.task, preset(stage.task, stage.preset), given, overwrite=True)
        say(f"{route.name}: {stage.task} done, {metrics['train_seconds'] / 60:.1f} min of "
            f"training, {metrics['images_seen']:,} images")  # fmt: skip
        stages.append({
            "task": stage.task, "preset": stage.preset, "overrides": given,
            "train_s": metrics["train_seconds"], "images": metrics["images_seen"],
        })  # fmt: skip
        last = stage is route.stages[-1]
        if not last:
            offset_s += metrics["train_seconds"]
            offset_images += metrics["images_seen"]
            checkpoint = out / "checkpoint.pt"
    curve = [
        {
            "train_s": e["train_s"] + offset_s,
            "images": e["images"] + offset_images,
            "accuracy": e["accuracy"],
            "auc_macro": e["auc_macro"],
        }
        for e in eval_records(out)
    ]
    return {"label": route.label, "stages": stages, "offset_s": offset_s, "curve": curve,
            **crossings(curve), "final_tta": final_with_tta(out, store)}  # fmt: skip


def final_with_tta(run_dir: Path, store: Path) -> dict:
    """The final weights (the weight average where the run keeps one: the curve's last point)
    scored on the mean over the 8 symmetries of each image, at the run's precision. Evaluation
    only: it adds no training time, and once at the end the 8x inference is cheap."""
    from lensperf.train.run import score

    metrics = score(final_weights(run_dir), store, tta=True)
    return {"accuracy": metrics["accuracy"], "auc_macro": metrics["auc_macro"]}


def eval_records(run_dir: Path) -> list[dict]:
    lines = (Path(run_dir) / "log.jsonl").read_text().splitlines()
    return [json.loads(line)["eval"] for line in lines if line.startswith('{"eval"')]


def crossings(curve: list[dict]) -> dict:
    """The first point of `curve` at or above each target (seconds and images; None if never),
    and the final and best numbers."""

    def first(key: str, target: float) -> dict | None:
        hit = next((p for p in curve if p[key] >= target), None)
        return None if hit is None else {"train_s": hit["train_s"], "images": hit["images"]}

    final = curve[-1] if curve else {}
    return {
        "time_to_accuracy": {f"{t:.2f}": first("accuracy", t) for t in ACCURACY_TARGETS},
        "time_to_auc": {f"{AUC_TARGET}": first("auc_macro", AUC_TARGET)},
        "final": {k: final.get(k) for k in ("train_s", "images", "accuracy", "auc_macro")},
        "best_accuracy": max((p["accuracy"] for p in curve), default=None),
    }


def record(routes_run: dict, name: str, outcome: dict, *, pretrained_here: bool) -> None:
    """Put a route's outcome in `routes_run`; a route that pretrained an encoder of its own also
    gets its fine-tuning alone, as `<name>_finetune` (amortised)."""
    routes_run[name] = outcome
    if pretrained_here:
        routes_run[f"{name}_finetune"] = amortised(outcome)


def amortised(result: dict) -> dict:
    """A pretraining route seen from the start of its fine-tuning (one encoder serves every
    fine-tune): the same curve without the pretraining's time and images."""
    offset_images = sum(s["images"] for s in result["stages"][:-1])
    curve = [
        {**p, "train_s": p["train_s"] - result["offset_s"], "images": p["images"] - offset_images}
        for p in result["curve"]
    ]
    label = result["label"].replace("pretraining +", "pretrained,") + " (fine-tuning only)"
    return {"label": label, "stages": result["stages"][-1:], "offset_s": 0.0, "curve": curve,
            "amortised": True, **crossings(curve),
            "final_tta": result.get("final_tta")}  # fmt: skip


def long_route(main: dict, recipe: str, store: Path, workdir: Path, extra: tuple,
               overrides: dict | None, epochs: int,
               pretrain_epochs: int | None = None) -> dict:  # fmt: skip
    """The MAE route given more of the hour the comparison allows: fine-tuned for `epochs`
    instead of the recipe's, from the route's encoder, or with `pretrain_epochs` from an encoder
    of its own pretrained that long (the lever that moved the end point most: docs/recipes.md,
    "E: the pretraining"). Its clock starts with the pretraining either way."""
    # evaluated each epoch: a long run's evaluations would otherwise cost minutes
    given = (*extra, "runtime.eval_every=1", f"epochs={epochs}")
    if pretrain_epochs:
        label = f"lensperf: {pretrain_epochs}-epoch MAE pretraining + {epochs}-epoch fine-tuning"
        stages = (Stage("pretrain", recipe, (f"epochs={pretrain_epochs}",)),
                  Stage("finetune_cls", recipe, given))  # fmt: skip
        return run_route(Route("mae_long", label, stages), store, workdir, overrides)
    encoder = workdir / "mae" / "pretrain" / "checkpoint.pt"
    label = f"lensperf: MAE pretraining + {epochs}-epoch fine-tuning"
    stage = Stage("finetune_cls", recipe, (*given, f"pretrained={encoder}"))
    tuned = run_route(Route("mae_long", label, (stage,)), store, workdir, overrides)
    return after_pretraining(tuned, main["mae"]["stages"][0])


def after_pretraining(result: dict, pretraining: dict) -> dict:
    """A fine-tune's result with the pretraining that made its encoder put in front of it:
    `amortised` undone."""
    curve = [
        {**p, "train_s": p["train_s"] + pretraining["train_s"],
         "images": p["images"] + pretraining["images"]}
        for p in result["curve"]
    ]  # fmt: skip
    return {**result, "stages": [pretraining, *result["stages"]],
            "offset_s": pretraining["train_s"], "curve": curve, **crossings(curve)}  # fmt: skip


def seed_repeats(routes_run: dict, recipe: str, store: Path, workdir: Path, extra: tuple,
                 overrides: dict | None, seeds: int) -> dict:  # fmt: skip
    """The SEEDED_ROUTES among `routes_run` (the main run's, seed 0) trained again with
    `runtime.seed` 1 .. seeds - 1, one after another: per route each seed's crossings and end
    point, and their medians."""
    encoder = workdir / "mae" / "pretrain" / "checkpoint.pt"
    stage_of = {
        "mae_finetune": Stage("finetune_cls", recipe, (*extra, f"pretrained={encoder}")),
        "cnn": Stage("finetune_cls", CNN_PRESET[recipe], extra),
    }
    repeats = {}
    for name in (n for n in SEEDED_ROUTES if n in routes_run):
        runs = [{"seed": 0, **routes_run[name]}]
        stage = stage_of[name]
        for seed in range(1, seeds):
            seeded = Stage(stage.task, stage.preset, (*stage.overrides, f"runtime.seed={seed}"))
            route = Route(f"{name}_seed{seed}", routes_run[name]["label"], (seeded,))
            runs.append({"seed": seed, **run_route(route, store, workdir, overrides)})
        by_seed = [
            {k: r[k] for k in ("seed", "time_to_accuracy", "final", "final_tta")} for r in runs
        ]
        repeats[name] = {"label": routes_run[name]["label"], "seeds": by_seed,
                         "median": seed_medians(by_seed)}  # fmt: skip
    return repeats


def seed_medians(runs: list[dict]) -> dict:
    """Medians over seeds: training seconds to each accuracy target (over the seeds that reached
    it, with how many did), and the final and D4-averaged accuracy and macro AUC."""

    def median(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    targets = runs[0]["time_to_accuracy"]
    crossing = [[r["time_to_accuracy"][t] for r in runs] for t in targets]
    return {
        "time_to_accuracy": {t: {
            "train_s": median(point and point["train_s"] for point in points),
            "reached": sum(point is not None for point in points),
        } for t, points in zip(targets, crossing)},
        "final": {k: median(r["final"][k] for r in runs) for k in ("accuracy", "auc_macro")},
        "final_tta": {k: median(r["final_tta"][k] for r in runs if r.get("final_tta"))
                      for k in ("accuracy", "auc_macro")},
    }  # fmt: skip


def run_time_to_target(
    workdir: Path, *, quick: bool, store: Path | None = None, sr_store: Path | None = None,
    overrides: dict | None = None, store_size: int | None = None, seeds: int = 1,
    holdout: Path | None = None, long_epochs: int | None = None,
    long_pretrain_epochs: int | None = None,
) -> dict:  # fmt: skip
    """Every route on one classification store (simulated into `workdir` if not given), then an
    SR fine-tune from the MAE route's encoder. `quick` runs the demo recipes on small stores;
    `overrides` (task -> list) and `store_size` shrink a run further (the GPU check's dry run);
    `seeds` > 1 repeats the fine-tune and the ResNet with more seeds (seed_repeats); `holdout`,
    a classification store, scores the routes' end points on its validation split;
    `long_epochs` adds the MAE route fine-tuned that long, from its encoder or, with
    `long_pretrain_epochs`, from one pretrained that long (long_route)."""
    recipe = "demo" if quick else "cpu"
    if holdout:  # checked before the hour of training, not after
        open_store(holdout, CLASSIFICATION, splits=("val",))
    if not store:
        store = _simulate(workdir / "model_ii.zarr", recipe, sr=False, size=store_size)
    extra = (f"runtime.eval_every={EVAL_EVERY[recipe]}",)
    results = {"recipe": recipe, "store": str(store), "routes": {}}
    for route in routes(recipe, extra):
        outcome = run_route(route, store, workdir, overrides)
        record(results["routes"], route.name, outcome, pretrained_here=len(route.stages) > 1)
    if long_epochs:
        long = long_route(results["routes"], recipe, store, workdir, extra, overrides,
                          long_epochs, long_pretrain_epochs)  # fmt: skip
        # from the recipe's encoder it pretrains nothing: mae_finetune already amortises that one
        record(results["routes"], "mae_long", long, pretrained_here=bool(long_pretrain_epochs))
    if holdout:
        results["holdout"] = holdout_comparison(results["routes"], workdir, Path(holdout))
    if seeds > 1:
        results["seeds"] = seed_repeats(results["routes"], recipe, store, workdir, extra,
                                        overrides, seeds)  # fmt: skip
        if holdout:
            seed_holdout(results["seeds"], workdir, Path(holdout), results["holdout"])
    if not sr_store:
        sr_store = _simulate(workdir / "sr.zarr", recipe, sr=True, size=store_size)
    results["sr"] = _super_resolution(recipe, Path(sr_store), workdir, overrides)
    return results


def _super_resolution(recipe: str, sr_store: Path, workdir: Path, overrides=None) -> dict:
    """SR fine-tuning from the MAE route's pretrained encoder, against the SR targets."""
    from lensperf.train.run import train

    out = workdir / "sr"
    pretrained = workdir / "mae" / "pretrain" / "checkpoint.pt"
    say(f"sr: finetune_sr ({recipe}) started")
    metrics = train("finetune_sr", preset("finetune_sr", recipe), [
        f"out_dir={out}", f"data.store={sr_store}", f"pretrained={pretrained}",
        *(overrides or {}).get("finetune_sr", []),
    ], overwrite=True)  # fmt: skip
    say(
        f"sr: done, {metrics['train_seconds'] / 60:.1f} min of training, PSNR "
        f"{metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f}"
    )
    keys = ("psnr", "ssim", "mse", "bicubic_psnr", "bicubic_ssim", "psnr_gain_db", "train_seconds")
    return {"store": str(sr_store), **{k: metrics[k] for k in keys}, "targets": SR_TARGETS}


def _simulate(out: Path, recipe: str, *, sr: bool, size: int | None = None) -> Path:
    from lensperf.config import load_config
    from lensperf.simulate.config import SimulationConfig, SRSimulationConfig
    from lensperf.simulate.runner import default_workers, simulate_classification, simulate_sr

    if sr:
        n = size or SR_PAIRS[recipe]
        config = load_config(SRSimulationConfig, preset("data", "sr"), [f"n={n}"])
        return simulate_sr(config, out, workers=default_workers(), overwrite=True)
    n = size or STORE_SIZE[recipe]
    config = load_config(SimulationConfig, preset("data", "model_ii"), [f"n_per_class={n}"])
    return simulate_classification(config, out, workers=default_workers(), overwrite=True)
