"""`lensperf data inspect`: what a store holds, its pixel statistics and a PNG of samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from lensperf.store import (
    CLASSIFICATION,
    LAYOUTS,
    UNLABELLED,
    UNLABELLED_NAME,
    open_store,
    read_rows,
    split_length,
    store_splits,
)

STATS_SAMPLE = 4096  # images per split for pixel statistics: enough for 3 digits, fast on 89k


def summarize(path: str | Path) -> dict:
    """Counts per split (and class), pixel statistics and the axion-mass range of a store."""
    group = open_store(path)
    attrs = group.attrs.asdict()
    summary = {
        "path": str(path),
        "kind": attrs["kind"],
        "source": attrs.get("source"),
        "seed": attrs.get("seed"),
        "storage": _storage(Path(path), group, attrs["kind"]),
        "splits": {},
    }
    for split in store_splits(group):
        n = split_length(group, split)
        entry: dict = {"count": n}
        if attrs["kind"] == CLASSIFICATION:
            labels = read_rows(group[f"{split}/labels"], slice(None))
            entry["per_class"] = {
                name: int((labels == i).sum()) for i, name in enumerate(attrs["classes"])
            }
            unlabelled = int((labels == UNLABELLED).sum())
            if unlabelled:
                entry["per_class"][UNLABELLED_NAME] = unlabelled
            masses = read_rows(group[f"{split}/axion_mass"], slice(None))
            masses = masses[np.isfinite(masses)]
            if masses.size:
                entry["axion_mass_eV"] = [float(masses.min()), float(masses.max())]
            entry["pixels"] = _pixel_stats(group[f"{split}/images"], n)
        else:
            entry["pixels_lr"] = _pixel_stats(group[f"{split}/lr"], n)
            entry["pixels_hr"] = _pixel_stats(group[f"{split}/hr"], n)
        summary["splits"][split] = entry
    return summary


def _storage(path: Path, group: zarr.Group, kind: str) -> dict:
    """Bytes on disk against the arrays' raw bytes, and the image arrays' codecs."""
    splits = store_splits(group)
    arrays = [group[f"{split}/{name}"] for split in splits for name in LAYOUTS[kind].arrays]
    return {
        "bytes_on_disk": sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
        "raw_bytes": sum(a.nbytes for a in arrays),
        "image_codecs": [
            type(c).__name__.removesuffix("Codec").lower() for c in arrays[0].metadata.codecs
        ],
    }


def _pixel_stats(array: zarr.Array, n: int) -> dict:
    if n == 0:
        return {}
    # A prefix, not a random sample: the store is already shuffled, and a prefix reads whole
    # chunks.
    x = read_rows(array, slice(0, min(n, STATS_SAMPLE))).astype(np.float64)
    return {
        "shape": list(array.shape[1:]),
        "min": float(x.min()),
        "max": float(x.max()),
        "mean": float(x.mean()),
        "std": float(x.std()),
        "frac_above_half": float((x > 0.5).mean()),
        "mean_image_sum": float(x.sum(axis=(1, 2, 3)).mean()),
        **_light_in_brightest_patches(x),
    }


def _light_in_brightest_patches(x_NCHW: np.ndarray, patch: int = 8, keep: float = 0.25) -> dict:
    """The mean share of an image's light in its brightest quarter of 8x8 patches: near 1, the
    ViT recipes' `token_keep: 0.25` drops only empty sky (docs/recipes.md)."""
    N, _, H, W = x_NCHW.shape
    if H % patch or W % patch:
        return {}
    flux_NL = x_NCHW.sum(1).reshape(N, H // patch, patch, W // patch, patch).sum((2, 4))
    flux_NL = flux_NL.reshape(N, -1)
    k = max(1, round(flux_NL.shape[1] * keep))
    top_N = -np.sort(-flux_NL, axis=1)[:, :k].sum(1)
    total_N = flux_NL.sum(1)
    share = np.divide(top_N, total_N, out=np.ones_like(top_N), where=total_N > 0)
    return {"light_in_brightest_quarter_of_patches": float(share.mean())}


def format_summary(summary: dict) -> str:
    storage = summary["storage"]
    lines = [
        f"{summary['path']}: {summary['kind']} store, {summary['source']}",
        f"  storage: {storage['bytes_on_disk'] / 1e6:.1f} MB on disk for"
        f" {storage['raw_bytes'] / 1e6:.1f} MB of arrays"
        f" (image chunks: {' + '.join(storage['image_codecs'])})",
    ]
    for split, entry in summary["splits"].items():
        head = f"  {split}: {entry['count']} samples"
        if "per_class" in entry:
            head += " (" + ", ".join(f"{k} {v}" for k, v in entry["per_class"].items()) + ")"
        lines.append(head)
        for key in ("pixels", "pixels_lr", "pixels_hr"):
            p = entry.get(key)
            if p:
                lines.append(
                    f"    {key}: shape {tuple(p['shape'])}, min {p['min']:.3g}, max {p['max']:.3g},"
                    f" mean {p['mean']:.4f}, std {p['std']:.4f}, >0.5 {p['frac_above_half']:.2%},"
                    f" sum/image {p['mean_image_sum']:.1f}"
                )
                if "light_in_brightest_quarter_of_patches" in p:
                    share = p["light_in_brightest_quarter_of_patches"]
                    lines.append(
                        f"    brightest quarter of the 8x8 patches: {share:.1%} of the light"
                    )
        if "axion_mass_eV" in entry:
            lo, hi = entry["axion_mass_eV"]
            lines.append(f"    axion mass: {lo:.3g} .. {hi:.3g} eV")
    return "\n".join(lines)


def sample_grid_png(path: str | Path, png: str | Path, per_row: int = 6) -> Path:
    """A grid of training samples: one row per class, or LR/HR row pairs for SR stores."""
    from lensperf.figures import axes_grid, save_png

    group = open_store(path)
    attrs = group.attrs.asdict()
    rows: list[tuple[str, np.ndarray]] = []
    split = store_splits(group)[0]  # train, or the one split of a store imported whole
    if attrs["kind"] == CLASSIFICATION:
        labels = read_rows(group[f"{split}/labels"], slice(None))
        for i, name in [*enumerate(attrs["classes"]), (UNLABELLED, UNLABELLED_NAME)]:
            idx = np.flatnonzero(labels == i)[:per_row]
            if i != UNLABELLED or idx.size:
                rows.append((name, read_rows(group[f"{split}/images"], idx)[:, 0]))
    else:
        n = min(per_row, split_length(group, split))
        rows.append(("LR", read_rows(group[f"{split}/lr"], slice(0, n))[:, 0]))
        rows.append(("HR", read_rows(group[f"{split}/hr"], slice(0, n))[:, 0]))
    fig, axes = axes_grid(len(rows), per_row, figsize=(1.6 * per_row, 1.7 * len(rows)))
    for (name, images), row in zip(rows, axes):
        for j, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(images):
                ax.imshow(images[j], cmap="inferno", vmin=0, vmax=1)
        row[0].set_ylabel(name)
    fig.suptitle(f"{Path(path).name}: {attrs.get('source')}", fontsize=9)
    return save_png(fig, png)
