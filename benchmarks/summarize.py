"""Print one Markdown table from pytest-benchmark JSON files: median time per provider, side
by side, with the speedup of the first provider over each other and its GB/s or TFLOP/s.

    python benchmarks/summarize.py results.json [more.json ...]
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict

PREFERRED = ["triton", "torch_reference", "mae_argsort_gather", "sdpa"]


def load(paths: list[str]) -> dict:
    rows: dict = defaultdict(dict)
    for path in paths:
        for bench in json.load(open(path))["benchmarks"]:
            params = dict(bench.get("params") or {})
            provider = params.pop("provider", "-")
            key = (
                bench["name"].split("[")[0],
                tuple(sorted((k, str(v)) for k, v in params.items())),
            )
            rows[key][provider] = (bench["stats"]["median"], bench.get("extra_info", {}))
    return rows


def table(rows: dict) -> str:
    lines = [
        "| benchmark | case | provider medians (ms) | first vs others | rate of first |",
        "|---|---|---|---|---|",
    ]
    for (name, params), by_provider in sorted(rows.items()):
        order = [p for p in PREFERRED if p in by_provider] + sorted(
            p for p in by_provider if p not in PREFERRED
        )
        first = order[0]
        t0, info0 = by_provider[first]
        medians = ", ".join(f"{p} {by_provider[p][0] * 1e3:.3f}" for p in order)
        ratios = ", ".join(f"{by_provider[p][0] / t0:.2f}x vs {p}" for p in order[1:]) or "-"
        rate = next(
            (f"{info0[k]:.1f} {k}" for k in ("GBps", "TFLOPs", "images_per_s") if k in info0), "-"
        )
        case = re.sub(r"[()'\[\]]", "", " ".join(f"{k}={v}" for k, v in params))
        lines.append(f"| {name} | {case} | {medians} | {ratios} | {rate} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(load(sys.argv[1:])))
