"""Model selection: which evaluation is the best so far by one validation metric, and whether
training should stop early because the metric has not improved for `patience` evaluations."""

from __future__ import annotations

import math

# Metrics where lower is better; every other metric (accuracy, AUC, PSNR, SSIM) is higher.
LOWER_IS_BETTER = ("val_loss", "mse", "loss")


class Selection:
    def __init__(self, metric: str, patience: int = 0):
        self.metric = metric
        self.patience = patience  # evaluations without improvement before stopping; 0: never
        self.lower = metric in LOWER_IS_BETTER
        self.best: float | None = None
        self.best_step: int | None = None
        self.since_best = 0

    def update(self, metrics: dict, step: int) -> bool:
        """Record an evaluation; True when it is the best so far."""
        if self.metric not in metrics:
            known = ", ".join(sorted(k for k, v in metrics.items() if isinstance(v, float)))
            raise KeyError(f"no metric {self.metric!r} to select by (known: {known})")
        value = float(metrics[self.metric])
        better = not math.isnan(value) and (
            self.best is None or (value < self.best if self.lower else value > self.best)
        )
        if better:
            self.best, self.best_step, self.since_best = value, step, 0
        else:
            self.since_best += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.since_best >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "since_best": self.since_best}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step = state["best"], state["best_step"]
        self.since_best = int(state["since_best"])
