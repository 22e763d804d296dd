"""Full-size data benchmark: the loaders' and the importer's speed at DeepLense size, measured
end to end on this machine.

1. simulate a Model II-size classification set (89,106 images = 3 x 29,702);
2. simulate 10,000 SR pairs;
3. export the classification store as a DeepLense tree (one .npy per image, axion files as
   [image, mass] object arrays) and import it back, recording the importer's peak memory;
4. compare each store's size on disk with its raw float32 size.
Writes bench/full_size_data.json and prints a table. About 15-20 minutes on 2 cores.

    python benchmarks/full_size_data.py [--workdir /tmp/lensperf-bench] [--n-per-class 29702]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


# Runs the CLI and prints its own peak RSS last, so each command's memory is measured alone.
_MEASURED = (
    "import resource, sys; from lensperf.cli import main; code = main(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(code)"
)


def run(*args: str) -> tuple[float, float]:
    """(seconds, peak RSS of the main process in MiB) of `lensperf ARGS`."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _MEASURED, *args],
        check=True,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    seconds = time.perf_counter() - start
    return seconds, int(done.stderr.strip().splitlines()[-1]) / 1024


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def export_tree(store: Path, tree: Path) -> int:
    """Write the train split as DeepLense files; returns the number of files."""
    from lensperf.store import open_store

    group = open_store(store)
    classes = group.attrs["classes"]
    images, labels = group["train/images"], group["train/labels"][:]
    masses = group["train/axion_mass"][:]
    for name in classes:
        (tree / name).mkdir(parents=True, exist_ok=True)
    chunk = images.chunks[0]
    for start in range(0, images.shape[0], chunk):
        block = images[start : start + chunk][:, 0].astype(np.float64)
        for j, image in enumerate(block):
            i = start + j
            name = classes[labels[i]]
            path = tree / name / f"{name}_sim_{i}.npy"
            if name == "axion":
                item = np.empty(2, dtype=object)
                item[0], item[1] = image, float(masses[i])
                np.save(path, item, allow_pickle=True)
            else:
                np.save(path, image)
    return int(images.shape[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/lensperf-bench"))
    parser.add_argument("--n-per-class", type=int, default=29702)
    parser.add_argument("--sr-pairs", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    w = str(args.workers)
    results: dict = {"workers": args.workers, "cpus": os.cpu_count()}

    cls = work / "model_ii.zarr"
    t, _ = run(
        "data",
        "simulate",
        "--out",
        str(cls),
        "--n-per-class",
        str(args.n_per_class),
        "--workers",
        w,
    )
    n_images = 3 * args.n_per_class
    results["simulate_classification"] = {
        "images": n_images,
        "seconds": t,
        "images_per_s": n_images / t,
    }

    sr = work / "sr.zarr"
    t, _ = run("data", "simulate-sr", "--out", str(sr), "--n", str(args.sr_pairs), "--workers", w)
    results["simulate_sr"] = {
        "pairs": args.sr_pairs,
        "seconds": t,
        "pairs_per_s": args.sr_pairs / t,
    }

    raw_cls = n_images * 64 * 64 * 4
    raw_sr = args.sr_pairs * (75 * 75 + 150 * 150) * 4
    results["store_size"] = {
        "classification_bytes": dir_bytes(cls),
        "classification_raw_float32_bytes": raw_cls,
        "sr_bytes": dir_bytes(sr),
        "sr_raw_float32_bytes": raw_sr,
    }

    tree = work / "tree"
    start = time.perf_counter()
    n_files = export_tree(cls, tree)
    results["export_tree_s"] = time.perf_counter() - start
    subprocess.run(["sync"], check=False)
    t, peak_mib = run("data", "import", str(tree), "--out", str(work / "imported.zarr"))
    results["import"] = {
        "files": n_files,
        "tree_bytes": dir_bytes(tree),
        "seconds": t,
        "files_per_s": n_files / t,
        "peak_rss_mib": peak_mib,
    }
    out = ROOT / "bench" / "full_size_data.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
