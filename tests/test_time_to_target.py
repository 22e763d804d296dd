"""The time-to-target bench finds crossings on recorded curves, and the GPU check runs every
stage end to end (its --dry-run: CPU, tiny sizes), the three routes included."""

import json
import subprocess

import pytest

from lensperf.bench.time_to_target import Route, Stage, amortised, crossings, run_route
from lensperf.simulate.runner import simulate_classification
from lensperf.train.run import score

from .conftest import ROOT


def _curve(points):
    return [{"train_s": 60.0 * m, "images": 1000 * i, "accuracy": a, "auc_macro": u}
            for i, (m, a, u) in enumerate(points)]  # fmt: skip


def test_crossings_are_the_first_evaluation_at_or_above_each_target():
    curve = _curve([(1, 0.5, 0.80), (2, 0.95, 0.99), (3, 0.93, 0.996), (4, 0.971, 0.995)])
    found = crossings(curve)
    assert found["time_to_accuracy"]["0.90"] == {"train_s": 120.0, "images": 1000}
    assert found["time_to_accuracy"]["0.95"] == {"train_s": 120.0, "images": 1000}
    assert found["time_to_accuracy"]["0.97"] == {"train_s": 240.0, "images": 3000}
    assert found["time_to_accuracy"]["0.98"] is None
    assert found["time_to_auc"]["0.995"] == {"train_s": 180.0, "images": 2000}
    assert found["final"]["accuracy"] == 0.971 and found["best_accuracy"] == 0.971


def test_amortised_route_starts_its_clock_at_fine_tuning():
    result = {
        "label": "lensperf: MAE pretraining + fine-tuning", "offset_s": 100.0,
        "stages": [{"images": 5000}, {"images": 4000}],
        "curve": [{"train_s": 130.0, "images": 6000, "accuracy": 0.96, "auc_macro": 0.99}],
    }  # fmt: skip
    seen = amortised(result)
    assert seen["curve"][0]["train_s"] == 30.0 and seen["curve"][0]["images"] == 1000
    assert seen["time_to_accuracy"]["0.95"]["train_s"] == 30.0 and seen["amortised"]


def test_a_second_bench_run_replaces_the_first_in_its_work_folder(tmp_path, model_ii_config):
    store = simulate_classification(model_ii_config("n_per_class=12"), tmp_path / "c.zarr")
    route = Route("cnn", "ResNet", (Stage("finetune_cls", "cnn_demo", ("epochs=1",)),))
    first = run_route(route, store, tmp_path / "work")
    again = run_route(route, store, tmp_path / "work")  # refused as "holds a run" before
    assert len(again["curve"]) == len(first["curve"]) == 1
    # the D4-averaged score is of the weights of the curve's last point, at the run's precision
    final_weights = tmp_path / "work" / "cnn" / "finetune_cls" / "checkpoint.pt"
    assert score(final_weights, store)["auc_macro"] == pytest.approx(again["final"]["auc_macro"])
    averaged = score(final_weights, store, tta=True)
    assert again["final_tta"] == {k: averaged[k] for k in ("accuracy", "auc_macro")}


def test_gpu_check_dry_run_runs_every_stage(tmp_path):
    out = tmp_path / "check"
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert {s: e["status"] for s, e in report["stages"].items()} == dict.fromkeys(
        ["gpu_tests", "kernels", "throughput", "loader", "accuracy"], "ok"
    )
    throughput = report["stages"]["throughput"]["result"]
    assert set(throughput["vs_reference_best"]) == {
        "pretrain", "finetune_cls", "finetune_sr", "pretrain_brightest", "finetune_cls_brightest",
        "finetune_sr_brightest",
    }  # fmt: skip
    routes = report["stages"]["accuracy"]["result"]["routes"]
    assert set(routes) == {"mae", "mae_finetune", "vit_scratch", "cnn"}
    for route in routes.values():
        assert route["curve"] and set(route["time_to_accuracy"]) == {"0.90", "0.95", "0.97", "0.98"}
        minutes = [p["train_s"] for p in route["curve"]]
        assert minutes == sorted(minutes)
    mae = routes["mae"]
    assert mae["curve"][0]["train_s"] > mae["offset_s"] > 0  # pretraining counted
    assert report["stages"]["loader"]["result"]["dali_images_per_s"] > 0
    assert "| accuracy | ok |" in (out / "gpu_check.md").read_text()
