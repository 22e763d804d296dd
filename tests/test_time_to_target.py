"""The time-to-target bench finds crossings on recorded curves, repeats the deciding routes with
more seeds, and the GPU check runs every stage end to end (its --dry-run: CPU, tiny sizes), the
three routes included."""

import itertools
import json
import statistics
import subprocess

import pytest
import yaml
from scipy.stats import binomtest

from lensperf.bench.holdout import (
    SEED_ZERO,
    final_weights,
    holdout_comparison,
    mcnemar_p,
    seed_holdout,
)
from lensperf.bench.tables import holdout_section, seeds_section
from lensperf.bench.time_to_target import (
    Route,
    Stage,
    amortised,
    crossings,
    eval_records,
    long_route,
    routes,
    run_route,
    seed_medians,
    seed_repeats,
)
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


def test_a_second_bench_run_replaces_the_first_in_its_work_folder(
    tmp_path, model_ii_config, capsys
):
    store = simulate_classification(model_ii_config("n_per_class=12"), tmp_path / "c.zarr")
    route = Route("cnn", "ResNet", (Stage("finetune_cls", "cnn_demo", ("epochs=1",)),))
    first = run_route(route, store, tmp_path / "work")
    # each stage says when it starts and ends, for a bench run under nohup with no bars
    said = capsys.readouterr().err.splitlines()
    assert said[0] == "lensperf bench: cnn: finetune_cls (cnn_demo) started"
    assert said[-1].startswith("lensperf bench: cnn: finetune_cls done, ")
    assert said[-1].endswith(f"{first['stages'][0]['images']:,} images")
    again = run_route(route, store, tmp_path / "work")  # refused as "holds a run" before
    assert len(again["curve"]) == len(first["curve"]) == 1
    # the D4-averaged score is of the weights of the curve's last point, at the run's precision
    final_weights = tmp_path / "work" / "cnn" / "finetune_cls" / "checkpoint.pt"
    assert score(final_weights, store)["auc_macro"] == pytest.approx(again["final"]["auc_macro"])
    averaged = score(final_weights, store, tta=True)
    assert again["final_tta"] == {k: averaged[k] for k in ("accuracy", "auc_macro")}


def test_seed_medians_count_the_seeds_that_reached_a_target():
    ends = ((60.0, 0.99, 0.9990), (None, 0.97, 0.9999), (120.0, 0.98, 0.9995))
    runs = [{"time_to_accuracy": {"0.98": {"train_s": t} if t else None},
             "final": {"accuracy": a, "auc_macro": u}, "final_tta": {"accuracy": a, "auc_macro": u}}
            for t, a, u in ends]  # fmt: skip
    medians = seed_medians(runs)
    assert medians["time_to_accuracy"]["0.98"] == {"train_s": 90.0, "reached": 2}
    assert medians["final"] == {"accuracy": 0.98, "auc_macro": 0.9995}


@pytest.mark.parametrize("only_a, only_b", [(11, 34), (4, 28), (3, 3), (0, 6), (1, 0)])
def test_mcnemar_p_is_the_exact_two_sided_binomial_test(only_a, only_b):
    expected = binomtest(only_a, only_a + only_b, 0.5).pvalue
    assert mcnemar_p(only_a, only_b) == pytest.approx(expected, rel=1e-9)
    assert mcnemar_p(0, 0) == 1.0  # no image tells them apart


TINY = {
    "pretrain": ["epochs=1", "model.encoder.dim=32", "model.encoder.heads=2",
                 "model.encoder.depth=1", "model.decoder_dim=32", "model.decoder_depth=1"],
    "finetune_cls": ["epochs=1", "resnet.widths=[4,8]", "resnet.blocks=[1,1]"],
}  # fmt: skip


def test_holdout_scores_each_route_on_another_store_image_by_image(
    tmp_path, model_ii_config, capsys
):
    store = simulate_classification(model_ii_config("n_per_class=12"), tmp_path / "c.zarr")
    holdout = simulate_classification(
        model_ii_config("n_per_class=16", "seed=7", "val_fraction=0.5"), tmp_path / "h.zarr"
    )
    work = tmp_path / "work"
    main = {r.name: run_route(r, store, work, TINY) for r in routes("demo")
            if r.name != "vit_scratch"}  # fmt: skip
    main["mae_long"] = long_route(main, "demo", store, work, (), TINY, epochs=3)
    # the longer fine-tune starts from the route's encoder, its clock after the pretraining
    tuned = work / "mae_long" / "finetune_cls"
    encoder = work / "mae" / "pretrain" / "checkpoint.pt"
    assert yaml.safe_load((tuned / "config.yaml").open())["pretrained"] == str(encoder)
    pretraining = main["mae"]["stages"][0]
    assert main["mae_long"]["stages"][0] == pretraining
    own_clock = eval_records(tuned)[-1]["train_s"]
    assert main["mae_long"]["final"]["train_s"] == own_clock + pretraining["train_s"] > own_clock
    capsys.readouterr()
    found = holdout_comparison(main, work, holdout)
    assert set(found["routes"]) == {"mae", "mae_long", "cnn"}
    said = capsys.readouterr().err.splitlines()
    by_route = found["routes"]
    assert said == [f"lensperf bench: holdout: {name} scored, {by_route[name]['plain']['errors']} "
                    f"errors, {by_route[name]['d4']['errors']} D4-averaged"
                    for name in ("mae", "mae_long", "cnn")]  # fmt: skip
    errors = {}
    for name, scored in found["routes"].items():
        weights = final_weights(work / name / "finetune_cls")
        assert scored["weights"] == str(weights)
        for way, tta in (("plain", False), ("d4", True)):
            own = score(weights, holdout, tta=tta)  # the task's own metrics, the same images
            got = scored[way]
            assert got["images"] == 24
            assert got["accuracy"] == pytest.approx(own["accuracy"], abs=1e-6)
            assert got["auc_macro"] == pytest.approx(own["auc_macro"], abs=1e-5)
            assert got["errors"] == round(24 * (1 - own["accuracy"]))
            errors[name, way] = got["errors"]
    assert [(p["a"], p["b"]) for p in found["pairs"]] == [("mae", "cnn"), ("mae_long", "cnn")]
    for found_pair, way in itertools.product(found["pairs"], ("plain", "d4")):
        pair, mae = found_pair[way], found_pair["a"]
        # right only for lensperf's route minus right only for the ResNet: their error gap
        gap = errors["cnn", way] - errors[mae, way]
        assert pair["only_a_right"] - pair["only_b_right"] == gap
        assert pair["mcnemar_p"] == mcnemar_p(pair["only_a_right"], pair["only_b_right"])
        # the two models averaged, as `lensperf evaluate --checkpoint A --checkpoint B` scores it
        both = [final_weights(work / name / "finetune_cls") for name in (mae, "cnn")]
        own = score(both, holdout, tta=way == "d4")
        mean = found_pair["mean"]
        assert mean[way]["accuracy"] == pytest.approx(own["accuracy"], abs=1e-6)
        assert mean[way]["auc_macro"] == pytest.approx(own["auc_macro"], abs=1e-5)
        assert mean["train_s"] == main[mae]["final"]["train_s"] + main["cnn"]["final"]["train_s"]
    table = holdout_section(found)
    assert "24 validation images" in table[2] and sum(line.startswith("| ") for line in table) == 4
    assert sum(line.startswith("The mean of the two models") for line in table) == 2


def test_long_route_can_pretrain_an_encoder_of_its_own_and_count_its_time(
    tmp_path, model_ii_config
):
    store = simulate_classification(model_ii_config("n_per_class=12"), tmp_path / "c.zarr")
    work = tmp_path / "work"
    # the pretraining's epochs from --long-pretrain, not from the tiny sizes
    tiny = {**TINY, "pretrain": [o for o in TINY["pretrain"] if not o.startswith("epochs=")]}
    long = long_route({}, "demo", store, work, (), tiny, epochs=2, pretrain_epochs=3)
    pretrained = work / "mae_long" / "pretrain"
    assert yaml.safe_load((pretrained / "config.yaml").open())["epochs"] == 3
    assert [e["epoch"] for e in eval_records(pretrained)][-1] == pytest.approx(3)
    tuned = yaml.safe_load((work / "mae_long" / "finetune_cls" / "config.yaml").open())
    assert tuned["pretrained"] == str(pretrained / "checkpoint.pt")
    assert [stage["task"] for stage in long["stages"]] == ["pretrain", "finetune_cls"]
    assert long["offset_s"] == long["stages"][0]["train_s"] > 0
    own_clock = eval_records(work / "mae_long" / "finetune_cls")[-1]["train_s"]
    assert long["final"]["train_s"] == pytest.approx(own_clock + long["offset_s"])
    assert "3-epoch MAE pretraining + 2-epoch" in long["label"]


def test_a_long_route_with_its_own_encoder_reports_that_encoders_fine_tune_alone(
    tmp_path, monkeypatch
):
    from lensperf.bench import time_to_target as ttt

    def fake_route(route, store, workdir, overrides):  # each stage 60 s and 1,000 images
        offset_s, offset_images = 60.0 * (len(route.stages) - 1), 1000 * (len(route.stages) - 1)
        curve = [{"train_s": offset_s + 30.0, "images": offset_images + 500, "accuracy": 0.96,
                  "auc_macro": 0.999}]  # fmt: skip
        stages = [{"task": s.task, "train_s": 60.0, "images": 1000} for s in route.stages]
        return {"label": route.label, "stages": stages, "offset_s": offset_s, "curve": curve,
                **crossings(curve)}  # fmt: skip

    monkeypatch.setattr(ttt, "run_route", fake_route)
    monkeypatch.setattr(ttt, "_super_resolution", lambda *args, **kwargs: {})
    found = ttt.run_time_to_target(tmp_path, quick=True, store=tmp_path / "c.zarr",
                                   sr_store=tmp_path / "sr.zarr", long_epochs=2,
                                   long_pretrain_epochs=3)["routes"]  # fmt: skip
    assert list(found)[-2:] == ["mae_long", "mae_long_finetune"]
    assert found["mae_long"]["time_to_accuracy"]["0.95"]["train_s"] == 90.0  # pretraining counted
    alone = found["mae_long_finetune"]
    assert alone["time_to_accuracy"]["0.95"] == {"train_s": 30.0, "images": 500}
    assert alone["amortised"] and "3-epoch MAE pretrained" in alone["label"]
    # from the recipe's encoder the long fine-tune has no encoder of its own to amortise
    again = ttt.run_time_to_target(tmp_path, quick=True, store=tmp_path / "c.zarr",
                                   sr_store=tmp_path / "sr.zarr",
                                   long_epochs=2)["routes"]  # fmt: skip
    assert "mae_long" in again and "mae_long_finetune" not in again


def test_seed_repeats_train_the_fine_tune_and_the_resnet_again_with_new_seeds(
    tmp_path, model_ii_config
):
    store = simulate_classification(model_ii_config("n_per_class=12"), tmp_path / "c.zarr")
    work, extra, tiny = tmp_path / "work", ("runtime.eval_every=0.5",), TINY
    main = {r.name: run_route(r, store, work, tiny) for r in routes("demo", extra)
            if r.name != "vit_scratch"}  # fmt: skip
    main["mae_finetune"] = amortised(main["mae"])
    repeats = seed_repeats(main, "demo", store, work, extra, tiny, seeds=2)
    assert set(repeats) == {"mae_finetune", "cnn"}
    for name, repeat in repeats.items():
        assert [run["seed"] for run in repeat["seeds"]] == [0, 1]
        assert repeat["seeds"][0]["final"] == main[name]["final"]  # seed 0 is the main run
        config = yaml.safe_load((work / f"{name}_seed1" / "finetune_cls" / "config.yaml").open())
        assert config["runtime"]["seed"] == 1
        finals = [run["final"]["accuracy"] for run in repeat["seeds"]]
        assert repeat["median"]["final"]["accuracy"] == statistics.median(finals)
    seeded_fine_tune = work / "mae_finetune_seed1" / "finetune_cls" / "config.yaml"
    encoder = work / "mae" / "pretrain" / "checkpoint.pt"
    assert yaml.safe_load(seeded_fine_tune.open())["pretrained"] == str(encoder)
    table = seeds_section(repeats)
    assert sum("**median**" in line for line in table) == 2 and "### Over 2 seeds" in table
    assert "held-out errors" not in table[4]  # no column without a held-out store
    # with a held-out store, every seed's end point is scored on it too
    holdout = simulate_classification(
        model_ii_config("n_per_class=8", "seed=7", "val_fraction=0.5"), tmp_path / "h.zarr"
    )
    seed_holdout(repeats, work, holdout)
    for name, repeat in repeats.items():
        for run in repeat["seeds"]:
            folder = SEED_ZERO[name] if run["seed"] == 0 else f"{name}_seed{run['seed']}"
            for way, tta in (("plain", False), ("d4", True)):
                own = score(final_weights(work / folder / "finetune_cls"), holdout, tta=tta)
                assert run["holdout_errors"][way] == round(12 * (1 - own["accuracy"]))
        errors = [run["holdout_errors"]["plain"] for run in repeat["seeds"]]
        assert repeat["median"]["holdout_errors"]["plain"] == statistics.median(errors)
    table = seeds_section(repeats)
    assert "held-out errors" in table[4] and table[5].count("|") == table[6].count("|")


def test_reference_ratios_compare_best_modes_and_skip_failed_ones():
    from lensperf.bench.gpu_check import reference_ratios

    found = reference_ratios({
        "pretrain": {"a": {"images_per_s": 300.0}, "b": {"error": "RuntimeError: no"}},
        "pretrain_reference": {"c": {"images_per_s": 100.0}, "d": {"images_per_s": 150.0}},
        "finetune_cls": {"a": {"images_per_s": 50.0}},  # no reference measured: no ratio
    })  # fmt: skip
    assert found == {"pretrain": 2.0}


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
    profile = throughput["profile"]
    assert profile["step_s_profiled"] > 0 and "Self CPU" in profile["top_ops"]
    rows = [r for modes in throughput["throughput"].values() for r in modes.values()]
    assert all(0 < r["peak_fraction"] and r["flops_per_image"] > 0 for r in rows)
    loader = report["stages"]["loader"]["result"]
    assert loader["backend"] == "dali" and loader["loader_images_per_s"] > 0
    assert "| accuracy | ok |" in (out / "gpu_check.md").read_text()


def test_gpu_check_fits_a_rerun_in_a_gpu_window():
    # a 15-minute window, the machine's start included, must hold the script twice
    from lensperf.bench.gpu_check import BUDGETS

    assert sum(BUDGETS.values()) <= 6 * 60


def test_gpu_accuracy_stage_runs_the_short_route_and_retries_without_kernels(tmp_path, monkeypatch):
    from lensperf.bench import gpu_check
    from lensperf.bench import time_to_target as ttt

    (tmp_path / "gpu_tests.json").write_text(json.dumps({"exit": 0}))  # the kernels passed
    calls = []

    def fake_route(route, store, workdir, overrides):
        calls.append((route.name, overrides))
        if route.name == "mae" and "runtime.kernels=off" not in overrides["pretrain"]:
            raise RuntimeError("a kernel failed")
        return {"offset_s": 1.0, "curve": [], "stages": []}

    monkeypatch.setattr(ttt, "_simulate", lambda *args, **kwargs: tmp_path / "store.zarr")
    monkeypatch.setattr(ttt, "run_route", fake_route)
    monkeypatch.setattr(ttt, "amortised", lambda outcome: outcome)
    result = gpu_check._gpu_recipe_accuracy(tmp_path)
    assert [name for name, _ in calls] == ["mae", "mae", "cnn"]  # no ViT from scratch
    for _, overrides in calls:
        for given in overrides.values():
            assert set(gpu_check.SHORT_ROUTE) <= set(given)
    assert "runtime.kernels=off" in calls[1][1]["finetune_cls"]
    assert "runtime.kernels=off" not in calls[2][1]["finetune_cls"]
    assert "a kernel failed" in result["errors"]["mae"]
    assert set(result["routes"]) == {"mae", "mae_finetune", "cnn"}


def test_bench_without_throughput_runs_only_the_routes(tmp_path, monkeypatch):
    import lensperf.bench.run as bench_run

    def not_asked(*args, **kwargs):
        raise AssertionError("--no-throughput measured throughput")

    for name in ("throughput", "flops", "loader_rate", "profile_step"):
        monkeypatch.setattr(bench_run, name, not_asked)
    curve = _curve([(1, 0.91, 0.99), (2, 0.96, 0.996)])
    route = {"label": "ResNet baseline", "curve": curve, "offset_s": 0.0,
             "stages": [{"images": 3000}], **crossings(curve)}  # fmt: skip
    monkeypatch.setattr(bench_run, "run_time_to_target",
                        lambda *a, **k: {"recipe": "cpu", "store": "s.zarr",
                                         "routes": {"cnn": route}})  # fmt: skip
    results = bench_run.run_bench(tmp_path, quick=True, with_time_to_target=True,
                                  measure_throughput=False)  # fmt: skip
    assert "throughput" not in results and "summary" not in results
    text = (tmp_path / "results.md").read_text()
    assert "| ResNet baseline | 1.0 | 2.0 | - |" in text and "Training throughput" not in text
    assert json.loads((tmp_path / "results.json").read_text())["time_to_target"]["routes"]
    assert (tmp_path / "time_to_accuracy.png").exists()
    assert not (tmp_path / "throughput.png").exists()
