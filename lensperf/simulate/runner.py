"""Simulate whole datasets in parallel and write them as stores.

Work is cut into jobs of one store chunk each; workers render jobs and the main process
writes them, so chunk writes never overlap. Image i of class c is drawn from the generator
(seed, c, i) alone, so the store is byte-identical whatever the number of workers.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lensperf.config import to_dict
from lensperf.processes import die_with_parent, spawning_without_main
from lensperf.progress import progress
from lensperf.simulate.config import SimulationConfig, SRSimulationConfig
from lensperf.simulate.render import Renderer, SceneSampler, image_rng
from lensperf.store import CLASSES, CLASSIFICATION, SR, StoreWriter, chunk_length
from lensperf.store.splits import stratified_split

SR_STREAM = 7  # generator stream of SR scenes, apart from the class streams 0, 1, 2


@dataclass(frozen=True)
class RenderJob:
    split: str
    start: int  # first row in the split's arrays
    classes: np.ndarray  # (n,) class index of each image
    indices: np.ndarray  # (n,) index of each image within its class


def _jobs(split: str, classes: np.ndarray, indices: np.ndarray, chunk: int) -> list[RenderJob]:
    return [
        RenderJob(split, start, classes[start : start + chunk], indices[start : start + chunk])
        for start in range(0, len(classes), chunk)
    ]


# ---------------------------------------------------------------- workers (one set per process)
_worker: dict = {}


def _init_classification(config: SimulationConfig) -> None:
    _worker["sampler"] = SceneSampler(
        config.lens, config.source, config.instrument, config.cdm, config.axion
    )
    _worker["renderer"] = Renderer(config.lens, config.source, config.instrument)
    _worker["seed"] = config.seed


def _render_classification(job: RenderJob) -> tuple[RenderJob, dict[str, np.ndarray]]:
    sampler, renderer = _worker["sampler"], _worker["renderer"]
    images, masses = [], []
    for c, i in zip(job.classes, job.indices):
        rng = image_rng(_worker["seed"], int(c), int(i))
        scene = sampler.draw(CLASSES[c], rng)
        images.append(renderer.observe(scene, rng))
        masses.append(scene.axion_mass)
    return job, {"images": np.stack(images)[:, None], "axion_mass": np.asarray(masses, np.float32)}


def _init_sr(config: SRSimulationConfig) -> None:
    hr = dataclasses.replace(config.instrument, noise=config.noise == "both")
    lr = dataclasses.replace(
        hr,
        noise=config.noise != "none",
        num_pix=hr.num_pix // config.factor,
        pixel_scale=hr.pixel_scale * config.factor,
        # The same sub-pixel size at both scales: LR is then HR's light binned, not re-sampled.
        supersampling=hr.supersampling * config.factor,
    )
    _worker["sampler"] = SceneSampler(config.lens, config.source, hr)
    _worker["hr"] = Renderer(config.lens, config.source, hr)
    _worker["lr"] = Renderer(config.lens, config.source, lr)
    _worker["seed"] = config.seed


def _render_sr(job: RenderJob) -> tuple[RenderJob, dict[str, np.ndarray]]:
    lrs, hrs = [], []
    for i in job.indices:
        rng = image_rng(_worker["seed"], SR_STREAM, int(i))
        scene = _worker["sampler"].draw("no_sub", rng)
        hrs.append(_worker["hr"].observe(scene, rng))
        lrs.append(_worker["lr"].observe(scene, rng))
    return job, {"lr": np.stack(lrs)[:, None], "hr": np.stack(hrs)[:, None]}


def _run(
    init: Callable, render: Callable, config, jobs: list[RenderJob], workers: int
) -> Iterator[tuple]:
    """Yield render(job) for every job, in order, from `workers` processes."""
    if workers <= 1:
        init(config)
        yield from map(render, jobs)
        return
    # spawn, not fork: the parent may hold torch or zarr threads that fork would copy broken.
    context = multiprocessing.get_context("spawn")
    with spawning_without_main():
        pool = context.Pool(workers, initializer=_init_worker, initargs=(init, config, os.getpid()))
    with pool:
        yield from pool.imap(render, jobs)


def _init_worker(init: Callable, config, parent_pid: int) -> None:
    die_with_parent(parent_pid)
    init(config)


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


# ---------------------------------------------------------------- datasets


def simulate_classification(
    config: SimulationConfig,
    out: str | Path,
    *,
    workers: int = 1,
    overwrite: bool = False,
    compress: bool = False,
) -> Path:
    """Simulate n_per_class images of each class into the classification store `out`."""
    n = config.n_per_class
    classes = np.repeat(np.arange(len(CLASSES)), n)
    indices = np.tile(np.arange(n), len(CLASSES))
    size = config.instrument.num_pix
    chunk = chunk_length((1, size, size))
    splits = dict(
        zip(("train", "val"), stratified_split(classes, config.val_fraction, config.seed))
    )
    with StoreWriter(out, kind=CLASSIFICATION, overwrite=overwrite, compress=compress) as writer:
        writer.set_attrs(
            classes=list(CLASSES),
            image_size=size,
            source=f"simulated: {config.name}",
            config=to_dict(config),
            preprocessing={"minmax": True},  # the renderer min-max scales every image
            seed=config.seed,
        )
        arrays, jobs = {}, []
        for split, order in splits.items():
            m = len(order)
            arrays[split] = {
                "images": writer.create(split, "images", (m, 1, size, size), "float32", chunk),
                "axion_mass": writer.create(split, "axion_mass", (m,), "float32", chunk),
            }
            writer.create(split, "labels", (m,), "int64", chunk)[:] = classes[order]
            jobs += _jobs(split, classes[order], indices[order], chunk)
        results = _run(_init_classification, _render_classification, config, jobs, workers)
        _write_all(results, arrays, total=len(classes), desc=f"simulate {config.name}")
    return Path(out)


def simulate_sr(
    config: SRSimulationConfig,
    out: str | Path,
    *,
    workers: int = 1,
    overwrite: bool = False,
    compress: bool = False,
) -> Path:
    """Simulate n (LR, HR) pairs of no_sub lenses into the super-resolution store `out`."""
    hr_size = config.instrument.num_pix
    lr_size = hr_size // config.factor
    chunk = chunk_length((1, hr_size, hr_size))
    zeros = np.zeros(config.n, dtype=np.int64)
    splits = dict(zip(("train", "val"), stratified_split(zeros, config.val_fraction, config.seed)))
    with StoreWriter(out, kind=SR, overwrite=overwrite, compress=compress) as writer:
        writer.set_attrs(
            lr_size=lr_size,
            hr_size=hr_size,
            factor=config.factor,
            source=f"simulated: {config.name}",
            config=to_dict(config),
            preprocessing={"minmax": True},
            seed=config.seed,
        )
        arrays, jobs = {}, []
        for split, order in splits.items():
            m = len(order)
            arrays[split] = {
                "lr": writer.create(split, "lr", (m, 1, lr_size, lr_size), "float32", chunk),
                "hr": writer.create(split, "hr", (m, 1, hr_size, hr_size), "float32", chunk),
            }
            jobs += _jobs(split, zeros[order], order, chunk)
        results = _run(_init_sr, _render_sr, config, jobs, workers)
        _write_all(results, arrays, total=config.n, desc=f"simulate {config.name}")
    return Path(out)


def _write_all(results: Iterable[tuple], arrays: dict, *, total: int, desc: str) -> None:
    """Write each job's named outputs into rows [start, start + n) of arrays[split][name]."""
    with progress(total=total, desc=desc, unit="img") as bar:
        for job, outputs in results:
            n = len(job.indices)
            for name, values in outputs.items():
                arrays[job.split][name][job.start : job.start + n] = values
            bar.update(n)
