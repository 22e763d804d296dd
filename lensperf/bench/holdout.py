"""The time-to-target routes' end points scored on a held-out store.

Near 0.999 accuracy the bench's 3,600 validation images hold a handful of errors, and two routes
a few images apart cannot be told apart. A second store (simulated with another seed, most of
it in its validation split) holds ten times more: each route's final weights are scored on it,
plain and averaged over the 8 D4 symmetries, and the MAE route's fine-tune is compared with the
ResNet image by image (an exact McNemar test on the images only one of them gets right); the
mean of the two models' probabilities is scored too.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from lensperf.bench.say import say

# each route's own weights (mae_finetune shares mae's)
ROUTES = ("mae", "mae_long", "vit_scratch", "cnn")
# the comparisons the 60-minute end point is about: lensperf's routes against the ResNet
PAIRS = (("mae", "cnn"), ("mae_long", "cnn"))


def final_weights(run_dir: Path) -> Path:
    """The weights of a run's last evaluation: its weight average where it keeps one."""
    ema = Path(run_dir) / "ema.pt"
    return ema if ema.exists() else Path(run_dir) / "checkpoint.pt"


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value: the chance of a split at least this uneven of the
    `only_a + only_b` images that one model gets right and the other wrong, were both equally
    good (a fair coin per image)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2**n)


def _scores(probs_NC: np.ndarray, labels_N: np.ndarray) -> tuple[dict, np.ndarray]:
    # scikit-learn's AUC, not the trainer's (metrics.classification_metrics, torchmetrics in
    # float32): here routes differ in the seventh digit, which wants float64 sums.
    right_N = probs_NC.argmax(1) == labels_N
    return {
        "images": int(len(labels_N)),
        "errors": int((~right_N).sum()),
        "accuracy": float(right_N.mean()),
        "auc_macro": float(roc_auc_score(labels_N, probs_NC, multi_class="ovr")),
    }, right_N


def holdout_comparison(routes_run: dict, workdir: Path, holdout: Path) -> dict:
    """Per route in `routes_run`, its final weights scored on `holdout`'s validation split,
    plain and D4-averaged; and for each of PAIRS run, per way of scoring, the images only one
    gets right and the McNemar p-value."""
    from lensperf.train.run import classifier_predictions

    scored, right, probs = {}, {}, {}
    for name in (n for n in ROUTES if n in routes_run):
        weights = final_weights(workdir / name / "finetune_cls")
        scored[name] = {"label": routes_run[name]["label"], "weights": str(weights)}
        for way, tta in (("plain", False), ("d4", True)):
            p, labels = classifier_predictions(weights, holdout, tta=tta)
            probs[name, way], labels = p.numpy(), labels.numpy()
            scored[name][way], right[name, way] = _scores(probs[name, way], labels)
        say(f"holdout: {name} scored, {scored[name]['plain']['errors']} errors, "
            f"{scored[name]['d4']['errors']} D4-averaged")  # fmt: skip
    pairs = []
    for a, b in (pair for pair in PAIRS if set(pair) <= set(scored)):
        # the two models' mean probability too (`--checkpoint A --checkpoint B`): their errors
        # fall on different images, and the two training clocks add up
        pairs.append({"a": a, "b": b, "mean": {"train_s": sum(
            routes_run[n]["final"]["train_s"] for n in (a, b))}})  # fmt: skip
        for way in ("plain", "d4"):
            only_a = int((right[a, way] & ~right[b, way]).sum())
            only_b = int((right[b, way] & ~right[a, way]).sum())
            pairs[-1][way] = {"only_a_right": only_a, "only_b_right": only_b,
                              "mcnemar_p": mcnemar_p(only_a, only_b)}  # fmt: skip
            mean = (probs[a, way] + probs[b, way]) / 2
            pairs[-1]["mean"][way] = _scores(mean, labels)[0]
    return {"store": str(holdout), "routes": scored, "pairs": pairs}


# the route whose weights a seeded route's seed 0 shares (time_to_target.SEEDED_ROUTES)
SEED_ZERO = {"mae_finetune": "mae", "cnn": "cnn"}


def seed_holdout(repeats: dict, workdir: Path, holdout: Path, scored: dict | None = None) -> None:
    """Each seeded run's held-out errors, plain and D4-averaged, and their median per route,
    added to `repeats` (time_to_target.seed_repeats). One seed's count is not the route's: the
    ResNet's three seeds made 11, 4 and 19 errors on the same 32,400 images (docs/recipes.md,
    E25). Seed 0 reuses the main comparison's scores (`scored`, holdout_comparison's routes)."""
    from lensperf.train.run import classifier_predictions

    for name, repeat in repeats.items():
        for run in repeat["seeds"]:
            zero = SEED_ZERO[name]
            if run["seed"] == 0 and scored and zero in scored["routes"]:
                done = scored["routes"][zero]
                run["holdout_errors"] = {way: done[way]["errors"] for way in ("plain", "d4")}
                continue
            folder = zero if run["seed"] == 0 else f"{name}_seed{run['seed']}"
            weights = final_weights(workdir / folder / "finetune_cls")
            run["holdout_errors"] = {}
            for way, tta in (("plain", False), ("d4", True)):
                probs, labels = classifier_predictions(weights, holdout, tta=tta)
                run["holdout_errors"][way] = _scores(probs.numpy(), labels.numpy())[0]["errors"]
        repeat["median"]["holdout_errors"] = {
            way: statistics.median(run["holdout_errors"][way] for run in repeat["seeds"])
            for way in ("plain", "d4")
        }
