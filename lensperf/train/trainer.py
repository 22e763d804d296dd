"""One trainer for the three tasks: AdamW, warmup + cosine, gradient clipping, bf16 autocast,
torch.compile, DDP under torchrun, atomic checkpoints with exact resume, and a guard that stops
before an optimizer step on a non-finite loss or gradient.

A task (lensperf.train.tasks) supplies the model, the loss of a batch, evaluation and report.
Run directory: config.yaml, log.jsonl (one line per logged step and per evaluation) and
tensorboard/ (logs.py), checkpoint.pt (to resume), best.pt (the best evaluation's model, by
`runtime.select_metric`), ema.pt (the weight average, when one is kept), metrics.json, report/.

Evaluations run every `runtime.eval_every` epochs (fractions allowed) and at the end. Each
records the training clock `train_s`: wall time since the first step, less the time spent
evaluating, so frequent evaluation does not slow the route it measures.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections import deque
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from lensperf.atomic import atomic_folder, write_text_atomic
from lensperf.config import save_config, to_dict
from lensperf.data import make_loader
from lensperf.errors import LensperfError
from lensperf.models import ops
from lensperf.progress import progress
from lensperf.runtime import autocast_as, autocast_dtype, replays_cuda_graphs, resolve_device
from lensperf.store import open_store, preprocessing
from lensperf.train.batch_norm import (
    RECALIBRATION_BATCHES,
    has_batch_norm,
    recalibrate_batch_norm,
)
from lensperf.train.checkpoint import load_checkpoint, save_checkpoint
from lensperf.train.logs import RunLog, truncate_log
from lensperf.train.optim import WeightAverage, build_optimizer, lr_at, set_lr
from lensperf.train.run_dir import RunDirectory
from lensperf.train.selection import Selection


class TrainingError(LensperfError):
    pass


POSITION_KEYS = ("step", "epoch", "images", "train_s", "eval_s", "elapsed_s")
MAX_SKIPPED_STEPS = 20  # fp16: overflowed updates in a row before training stops


class Trainer:
    _cuda_graphs = False  # set by the runtime set-up: the step is replayed as CUDA graphs
    _prepare_seconds = 0.0  # the task's `prepare` (a teacher's targets), set in _run

    def __init__(
        self, config, task, *, resume: bool = False, overwrite: bool = False, stop_after: int = 0
    ):
        self.config = config
        self.task = task
        self.resume = resume
        self.overwrite = overwrite
        self.stop_after = stop_after  # steps, then checkpoint and return (tests, time boxes)
        self.run_dir = Path(config.out_dir)
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))

    # ------------------------------------------------------------ set-up
    def _setup_runtime(self) -> None:
        rt = self.config.runtime
        self.device = resolve_device(rt.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if rt.threads:
            torch.set_num_threads(rt.threads)
        torch.manual_seed(rt.seed + self.rank)
        if rt.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.amp_dtype = autocast_dtype(rt.precision, self.device)
        self._cuda_graphs = replays_cuda_graphs(rt.compile, rt.compile_mode, self.device)

    def _loaders(self) -> None:
        c, data = self.config, self.config.data
        common = dict(
            backend=data.backend, device=self.device, num_workers=data.num_workers,
            kind=self.task.store_kind, classes=data.classes,
        )  # fmt: skip
        train = functools.partial(
            make_loader, data.store, "train", batch_size=data.batch_size, shuffle=True,
            augment=data.augment, seed=c.runtime.seed, shard_id=self.rank,
            num_shards=self.world, per_class=self.task.train_per_class(),
            unlabelled=self.task.train_unlabelled(), **common,
        )  # fmt: skip
        # Full batches only: a last, smaller batch made torch.compile build a second graph for
        # its shape (25 s on the 2-core CPU) and gave a noisy step. A single process with fewer
        # samples than a batch trains on what there is.
        self.train_loader = train(drop_last=True)
        if len(self.train_loader) == 0 and self.world == 1:
            self.train_loader = train(drop_last=False)
        self.val_loader = make_loader(
            data.store, "val", batch_size=data.batch_size, shuffle=False, augment=False,
            unlabelled=not self.task.uses_labels, **common,
        )  # fmt: skip
        if len(self.train_loader) == 0:
            raise TrainingError(f"{data.store}: no training batch (fewer samples than ranks?)")
        if len(self.val_loader) == 0:
            raise TrainingError(f"{data.store}: the val split is empty; evaluation needs samples")
        # How the store's images were made, saved with every checkpoint for `lensperf predict`.
        self.preprocessing = preprocessing(open_store(data.store))

    def _optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(model, self.config.optim)

    # ------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def _state(self) -> dict:
        return {
            "task": self.task.name,
            "config": to_dict(self.config),
            "model": self.model.state_dict(),
            **self.task.checkpoint_extras(self.model),
            "optimizer": self.optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "loader": self.train_loader.state_dict(),
            "step": self.step,
            "images_seen": self.images_seen,
            "train_seconds": self._train_seconds(),
            "history": self.history,
            "preprocessing": self.preprocessing,
            "selection": self.selection.state_dict(),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
            **({"scaler": self.scaler.state_dict()} if self.scaler is not None else {}),
        }

    def _save(self) -> None:
        if self.rank == 0:
            save_checkpoint(self._state(), self.checkpoint_path)

    def _restore(self) -> None:
        state = load_checkpoint(self.checkpoint_path)
        if state.get("task") != self.task.name:
            raise TrainingError(f"{self.checkpoint_path} is a {state.get('task')} checkpoint")
        saved, now = state["config"], to_dict(self.config)
        # a section the checkpoint lacks was added since it was written, at today's default
        defaults = to_dict(type(self.config)())
        for section in self.task.fixed_sections:
            if saved.get(section, defaults.get(section)) != now.get(section):
                raise TrainingError(
                    f"cannot resume: config section '{section}' differs from the checkpoint's"
                )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.train_loader.load_state_dict(state["loader"])
        self.step = int(state["step"])
        if self.rank == 0:
            truncate_log(self.run_dir / "log.jsonl", self.step)
        self.images_seen = int(state.get("images_seen", 0))
        self._seconds_before = float(state.get("train_seconds", 0.0))
        self.history = state["history"]
        if "selection" in state:
            self.selection.load_state_dict(state["selection"])
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    # ------------------------------------------------------------ loop
    def run(self) -> dict:
        """Claim the run directory (rank 0), then train; the claim ends with the run, and a run
        that fails before writing anything takes its directory (or its lock file) away."""
        claim = None
        if self.rank == 0:
            claim = RunDirectory(self.run_dir, resume=self.resume, overwrite=self.overwrite)
            claim.claim()
        try:
            with ops.kernels_switched(self.config.runtime.kernels):
                return self._run()
        except BaseException:
            if claim is not None:
                claim.abandon()  # a run that wrote nothing leaves nothing
            raise
        finally:
            if claim is not None:
                claim.release()

    def _run(self) -> dict:
        self._setup_runtime()
        self._loaders()
        c = self.config
        self.model = self.task.build_model().to(self.device)
        prepared = time.perf_counter()
        with self._autocast():
            self.task.prepare(self.device)
        # Training's own work (a teacher's targets), so counted in the training time.
        self._prepare_seconds = time.perf_counter() - prepared
        self.optimizer = self._optimizer(self.model)
        self.ema = WeightAverage(self.model, c.optim.ema) if c.optim.ema else None
        fp16 = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type) if fp16 else None
        self._skipped = 0  # consecutive updates the scaler skipped
        rt = c.runtime
        self.selection = Selection(rt.select_metric or self.task.selection_metric,
                                   rt.early_stop_patience)  # fmt: skip
        self._stop_early = False
        self.step, self.images_seen, self.history = 0, 0, {"train": [], "eval": []}
        self._seconds_before, self._eval_seconds = 0.0, 0.0
        # Recent batches, kept only for a model with batch norm to recalibrate before evaluating.
        has_bn = has_batch_norm(self.model)
        self._recent: deque = deque(maxlen=RECALIBRATION_BATCHES if has_bn else 0)
        if self.resume:
            self._restore()
        elif self.rank == 0:
            (self.run_dir / "log.jsonl").write_text("")
        self.log = (
            RunLog(self.run_dir, c.runtime.tensorboard, self.step) if self.rank == 0 else None
        )
        if self.rank == 0:
            save_config(c, self.run_dir / "config.yaml")

        step_model = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            step_model = nn.parallel.DistributedDataParallel(step_model, device_ids=ids)
        if c.runtime.compile:
            step_model = torch.compile(step_model, mode=c.runtime.compile_mode)

        steps_per_epoch = len(self.train_loader)
        total = c.epochs * steps_per_epoch
        warmup = int(c.optim.warmup_epochs * steps_per_epoch)
        self._eval_steps = max(1, round(c.runtime.eval_every * steps_per_epoch))
        start = self._t0 = time.perf_counter()
        while self.step < total and not self._stop_early:
            epoch = self.step // steps_per_epoch
            stopped = self._train_epoch(step_model, epoch, total, warmup)
            if stopped:
                return {"stopped_at_step": self.step}
            self._save()
        metrics = self._finish(time.perf_counter() - start)
        if self.world > 1:
            dist.barrier()
            dist.destroy_process_group()
        return metrics

    def _train_epoch(self, step_model, epoch: int, total: int, warmup: int) -> bool:
        """One epoch (or its rest, after a resume); True when stop_after ended it early."""
        c = self.config
        bar = None
        if self.rank == 0:
            desc = f"{self.task.name} epoch {epoch + 1}/{c.epochs}"
            bar = progress(len(self.train_loader), desc, "batch", initial=self.train_loader.batch)
        self._window = (time.perf_counter(), 0)
        self.model.train()
        for batch in self.train_loader:
            lr = lr_at(self.step, total, warmup, c.optim.lr, c.optim.min_lr)
            set_lr(self.optimizer, lr)
            loss, grad_norm = self._step(step_model, batch)
            self._recent.append(batch)
            self.step += 1
            self.images_seen += len(batch["index"]) * self.world
            self._window = (self._window[0], self._window[1] + len(batch["index"]))
            end_of_epoch = self.train_loader.batch == len(self.train_loader)
            if self.rank == 0 and (self.step % c.runtime.log_every == 0 or end_of_epoch):
                self._log_step(loss, lr, grad_norm, bar)
            if bar is not None:
                bar.update(1)
            if self.step % self._eval_steps == 0 or self.step == total:
                self._evaluate()
                self._window = (time.perf_counter(), 0)  # a rate of training steps only
            if c.runtime.checkpoint_every and self.step % c.runtime.checkpoint_every == 0:
                self._save()
            if self.stop_after and self.step >= self.stop_after:
                self._save()
                return True
        if bar is not None:
            bar.close()
        return False

    def _step(self, step_model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, backward, clip and update; (loss, gradient norm). A non-finite loss, or a
        non-finite gradient without a loss scaler, stops training before the update. With fp16's
        scaler an overflowed gradient skips the update, as loss scaling intends, unless that
        happens MAX_SKIPPED_STEPS times in a row."""
        if self._cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with self._autocast():
            loss = self.task.loss(step_model, batch)
        self._guard(loss, "loss")
        self.optimizer.zero_grad(set_to_none=True)
        scaler = self.scaler
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(self.optimizer)
        clip = self.config.optim.grad_clip or float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if scaler is None:
            self._guard(grad_norm, "gradient norm")
            self.optimizer.step()
            updated = True
        else:
            updated = bool(torch.isfinite(grad_norm))
            self._skipped = 0 if updated else self._skipped + 1
            if self._skipped >= MAX_SKIPPED_STEPS:
                self._guard(grad_norm, f"gradient norm {self._skipped} steps in a row")
            scaler.step(self.optimizer)  # skips the update itself when gradients overflowed
            scaler.update()
        if self.ema is not None and updated:
            self.ema.update(self.model)
        return loss, grad_norm

    def _autocast(self):  # every step: the dtype resolved once, in __init__
        return autocast_as(self.amp_dtype, self.device)

    def _log_step(self, loss, lr: float, grad_norm, bar) -> None:
        started, images = self._window
        record = {
            **self._position(),
            "loss": loss.item(),
            "lr": lr,
            "grad_norm": grad_norm.item(),
            "images_per_s": images * self.world / (time.perf_counter() - started),
        }
        self.history["train"].append(record)
        self.log.train(record)
        if bar is not None:
            bar.set_postfix(loss=f"{record['loss']:.4g}", img_s=f"{record['images_per_s']:.0f}")
        self._window = (time.perf_counter(), 0)

    def _train_seconds(self) -> float:
        """Training wall time so far (this session's, its `prepare` included, and any before a
        resume), less evaluation."""
        now = time.perf_counter()
        return self._seconds_before + self._prepare_seconds + now - self._t0 - self._eval_seconds

    def _position(self) -> dict:
        """Where training stands, the same in train and eval records: steps done, epochs done
        (fractional), and images seen over all ranks."""
        epochs = self.step / len(self.train_loader)
        return {"step": self.step, "epoch": round(epochs, 4), "images": self.images_seen}

    def _guard(self, value: torch.Tensor, what: str) -> None:
        if not torch.isfinite(value).all():
            last = (
                f"; last good checkpoint: {self.checkpoint_path}"
                if self.checkpoint_path.exists()
                else ""
            )
            raise TrainingError(
                f"non-finite {what} at step {self.step + 1}: stopped before the optimizer step"
                f" (lower optim.lr or check the data){last}"
            )

    @property
    def eval_model(self) -> nn.Module:
        """The model evaluated, reported and exported: the weight average when there is one."""
        return self.ema.model if self.ema is not None else self.model

    @torch.no_grad()
    def _evaluate(self) -> None:
        """Evaluate (rank 0), log, keep best.pt and decide on early stopping; every rank then
        learns that decision. The time this takes is left off the training clock."""
        started, train_s = time.perf_counter(), self._train_seconds()
        if self.rank == 0:
            model = self.eval_model
            with self._autocast():
                recalibrate_batch_norm(model, self._recent, self.task)
                model.eval()
                metrics = self.task.evaluate(model, self.val_loader)
            self.model.train()
            eval_s = time.perf_counter() - started
            record = {**self._position(), "train_s": train_s, "eval_s": eval_s,
                      "elapsed_s": time.perf_counter() - self._t0, **metrics}  # fmt: skip
            self.history["eval"].append(record)
            self.log.eval(record)
            if self.selection.update(metrics, self.step):
                self._save_model("best.pt", record)
            self._stop_early = self.selection.should_stop
        if self.world > 1:  # also the barrier: the other ranks wait for rank 0 here
            decision = [self._stop_early]
            dist.broadcast_object_list(decision, src=0)
            self._stop_early = decision[0]
        self._eval_seconds += time.perf_counter() - started

    def _save_model(self, name: str, record: dict) -> None:
        """A standalone checkpoint of the evaluated model (no optimizer): loadable by evaluate,
        predict and the API like any checkpoint."""
        model = self.eval_model
        save_checkpoint({
            "task": self.task.name, "config": to_dict(self.config), "model": model.state_dict(),
            **self.task.checkpoint_extras(model), "preprocessing": self.preprocessing,
            "step": self.step, "metrics": record,
        }, self.run_dir / name)  # fmt: skip

    def _finish(self, seconds: float) -> dict:
        if self.rank != 0:
            return {}
        final = self.history["eval"][-1] if self.history["eval"] else {}
        rates = [r["images_per_s"] for r in self.history["train"][1:]] or [
            r["images_per_s"] for r in self.history["train"]
        ]
        metrics = {
            "task": self.task.name,
            "steps": self.step,
            "epochs": self.config.epochs,
            "train_seconds_this_session": seconds,
            "train_seconds": self._train_seconds(),  # every session's, less evaluation
            "images_seen": self.images_seen,
            "median_images_per_s": float(sorted(rates)[len(rates) // 2]) if rates else None,
            **{k: v for k, v in final.items() if k not in POSITION_KEYS},
            "best": {"metric": self.selection.metric, "value": self.selection.best,
                     "step": self.selection.best_step, "checkpoint": "best.pt"},
            **({"stopped_early_at_step": self.step} if self._stop_early else {}),
        }  # fmt: skip
        if self.ema is not None:
            self._save_model("ema.pt", final)
        model = self.eval_model.eval()
        with atomic_folder(self.run_dir / "report") as report_dir, self._autocast():
            metrics.update(self.task.report(model, self.val_loader, self.history, report_dir))
            (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        write_text_atomic(self.run_dir / "metrics.json", json.dumps(metrics, indent=2))
        self.log.figures(self.run_dir / "report", self.step)
        self.log.close()
        return metrics
