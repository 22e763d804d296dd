import json

import pytest
import torch

from lensperf.bench.measure import flops_per_image, interleaved_rates, train_step_rate
from lensperf.bench.reference import ReferenceMAE
from lensperf.bench.tables import markdown, plot
from lensperf.bench.throughput import summarize
from lensperf.models import MAE, MAEConfig, ViTConfig
from lensperf.models.mae import patchify

from .conftest import run_cli

SMALL = MAEConfig(
    encoder=ViTConfig(dim=32, depth=1, heads=2), decoder_dim=16, decoder_depth=1, decoder_heads=2
)


def test_reference_mae_matches_lensperf_mae_semantics():
    """Same weights and the same noise: the plain reference and lensperf's MAE agree."""
    torch.manual_seed(0)
    ours = MAE(SMALL)
    ref = ReferenceMAE(SMALL)
    mapping = {k.replace("encoder.", "", 1): v for k, v in ours.state_dict().items()}
    mapping = {
        k.replace("attn.qkv", "attn.qkv").replace("attn.proj", "attn.proj"): v
        for k, v in mapping.items()
    }
    missing = ref.load_state_dict(mapping, strict=False)
    assert not missing.missing_keys, missing.missing_keys
    images = torch.rand(3, 1, 64, 64)
    torch.manual_seed(5)
    loss_ours, pred_ours, mask_ours = ours(images)
    torch.manual_seed(5)
    loss_ref, pred_ref, mask_ref = ref(images)
    assert torch.equal(mask_ours, mask_ref)
    torch.testing.assert_close(pred_ours, pred_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss_ours, loss_ref, rtol=1e-4, atol=1e-6)
    assert pred_ref.shape == patchify(images, 8).shape


def test_train_step_rate_and_flops():
    images = torch.rand(4, 1, 64, 64)
    timing = dict(warmup=1, windows=3, steps_per_window=1)
    cpu = torch.device("cpu")
    result = train_step_rate(
        MAE(SMALL), lambda m: m(images)[0], 4, device=cpu, amp=False, compile_=False, **timing
    )
    assert result["images_per_s"] > 0 and len(result["windows"]) == 3
    assert sorted(result["windows"])[1] == pytest.approx(result["images_per_s"], rel=0.01)
    per_image = flops_per_image(MAE(SMALL), lambda m: m(images)[0], 4)
    # The MLPs alone: 2 linears of 32x128 on 17 encoder tokens, fwd + 2x bwd, times 2 FLOPs.
    assert per_image > 3 * 2 * 2 * 32 * 128 * 17


def test_interleaved_rates_time_one_window_of_each_in_turn():
    """Warm-up of each step, then rounds of one window each, each round starting one further
    along: a drifting host meets every step alike."""
    calls = []

    def step(name):
        def run():
            calls.append(name)
            return torch.tensor(float(len(name)))

        return run

    steps = {name: (step(name), 4) for name in ("a", "bb", "ccc")}
    rates = interleaved_rates(steps, device=torch.device("cpu"), warmup=1, windows=3,
                              steps_per_window=2)  # fmt: skip
    windows = ["a", "a", "bb", "bb", "ccc", "ccc", "bb", "bb", "ccc", "ccc", "a", "a",
               "ccc", "ccc", "a", "a", "bb", "bb"]  # fmt: skip
    assert calls == ["a", "bb", "ccc", *windows]
    for name, r in rates.items():
        assert len(r["windows"]) == 3 and r["images_per_s"] > 0
        assert r["final_loss"] == len(name)


def test_throughput_times_every_mode_then_the_best_modes_head_to_head(monkeypatch):
    """Every workload of a task (lensperf, its reference, its brightest patches) gets a rate in
    each of its modes from one interleaved timing, then its best mode is timed again beside the
    others' and the ratios come from neighbouring windows."""
    import lensperf.bench.throughput as T

    images = torch.rand(2, 1, 64, 64)
    tiny = {
        "pretrain": (lambda sdpa: MAE(SMALL), lambda m: m(images)[0], 2),
        "pretrain_reference": (lambda sdpa: ReferenceMAE(SMALL), lambda m: m(images)[0], 2),
        "pretrain_brightest": (lambda sdpa: MAE(SMALL), lambda m: m(images)[0], 2),
    }
    monkeypatch.setattr(T, "workloads", lambda batch, device: tiny)
    monkeypatch.setattr(T, "BENCH_CONFIGS", {"pretrain": None})
    monkeypatch.setattr(T, "native_bf16", lambda device: False)
    timed = []
    real = T.interleaved_rates

    def spy(steps, **kw):
        timed.append((sorted(steps), kw["windows"]))
        return real(steps, **kw)

    monkeypatch.setattr(T, "interleaved_rates", spy)
    optimizers = set()
    real_step = T.training_step

    def step_spy(model, loss_fn, **kw):
        optimizers.add((type(model).__name__, kw["fused_adamw"]))
        return real_step(model, loss_fn, **kw)

    monkeypatch.setattr(T, "training_step", step_spy)
    cpu = torch.device("cpu")
    timing = {"warmup": 1, "windows": 2, "steps_per_window": 1}
    results = T.throughput({"pretrain": 2}, cpu, timing, {**timing, "windows": 3})
    modes = ["compiled_fp32", "eager_fp32"]
    assert timed[0] == ([(name, mode) for name in sorted(tiny) for mode in modes], 2)
    # lensperf's steps with its trainer's fused AdamW, the reference's with torch's default
    assert optimizers == {("MAE", True), ("ReferenceMAE", False)}
    # the head to head: one mode a workload, and square matmuls timed beside them
    assert timed[1] == (sorted([*tiny, "matmul_peak"]), 3)
    for name in tiny:
        assert sorted(results["throughput"][name]) == modes
        assert all(r["batch"] == 2 for r in results["throughput"][name].values())
    duel = results["head_to_head"]["pretrain"]
    for name in tiny:  # each workload's head-to-head mode is its fastest in the sweep
        sweep = results["throughput"][name]
        assert duel["modes"][name] == max(sweep, key=lambda m: sweep[m]["images_per_s"])
        assert len(duel["rates"][name]["windows"]) == 3
    assert set(duel["vs_reference"]) == {"pretrain", "pretrain_brightest"}
    assert duel["matmul_peak"]["dtype"] == "fp32" and len(duel["matmul_peak"]["windows"]) == 3
    assert duel["matmul_peak"]["flops_per_s"] > 1e9  # FLOP/s, not calls a second


def test_head_to_head_ratios_are_medians_of_neighbouring_windows():
    """The host runs at full speed, then at half, then changes speed between the two windows of
    one round: the ratios of neighbouring windows still give the models' 1.2x, where the ratio of
    the rates' medians would give 0.9x."""
    from lensperf.bench.throughput import paired_ratios

    duel = {
        "pretrain": {"windows": [120, 60, 90]},
        "pretrain_brightest": {"windows": [240, 120, 240]},
        "pretrain_reference": {"windows": [100, 50, 100]},
    }
    assert paired_ratios(duel, "pretrain") == pytest.approx(
        {"pretrain": 1.2, "pretrain_brightest": 2.4}
    )


def fake_results():
    def run(rate):
        return {"batch": 8, "images_per_s": rate, "windows": [rate], "warmup_s": 0.1,
                "final_loss": 0.1}  # fmt: skip

    def modes(a, b, c):
        return {"eager_fp32": run(a), "compiled_fp32": run(b), "compiled_bf16": run(c)}

    throughput = {
        "pretrain": modes(100, 150, 250), "pretrain_reference": modes(90, 140, 200),
        "finetune_cls": modes(50, 60, 80), "finetune_cls_reference": modes(50, 64, 70),
        "finetune_sr": modes(10, 12, 16), "finetune_sr_reference": modes(10, 11, 15),
        "finetune_cls_brightest": modes(100, 120, 175),
    }  # fmt: skip
    fractions = {
        name: {"gflops_per_image": 0.5, "fraction_of_peak": {m: r["images_per_s"] / 1000
                                                             for m, r in modes_.items()}}
        for name, modes_ in throughput.items()
    }  # fmt: skip
    return {
        "environment": {"device": "cpu", "gpu": None, "cpu": "x", "threads": 2,
                        "python": "3.11", "versions": {"torch": "2"}, "git_commit": "abc"},
        "quick": True,
        "timing": {},
        "throughput": throughput,
        "flops": {"matmul_peak_tflops": {"fp32": 0.5, "bf16": 0.5}, "tasks": fractions},
        "loader_images_per_s": {"memory_0w": 5000.0, "torch_0w": 1000.0},
    }  # fmt: skip


def test_summary_ratios_are_against_the_references_best_mode(tmp_path):
    results = fake_results()
    s = summarize(results)
    pretrain = s["tasks"]["pretrain"]
    assert pretrain["vs_reference_best"] == pytest.approx(250 / 200)
    assert pretrain["best_mode"] == pretrain["reference_best_mode"] == "compiled_bf16"
    assert pretrain["vs_own_eager_fp32"] == pytest.approx(250 / 100)
    assert pretrain["fraction_of_peak"] == pytest.approx(0.25)
    cls = s["tasks"]["finetune_cls"]
    assert cls["vs_reference_best"] == pytest.approx(80 / 70)  # not vs its 64 compiled fp32
    assert cls["brightest_vs_reference_best"] == pytest.approx(175 / 70)
    assert cls["brightest_fraction_of_peak"] == pytest.approx(0.175)
    assert "brightest_vs_reference_best" not in pretrain
    assert s["loader_vs_pretrain_consumption"] == pytest.approx(5000 / 250)
    results["summary"] = s
    text = markdown(results)
    assert (
        "**1.25x** (1.5x)" in text and "| pretrain_reference | 8 | compiled_bf16 | 200.0 |" in text
    )
    assert "| finetune_cls, brightest patches only | compiled_bf16 | 175 |" in text
    assert "**2.50x** (1.3x)" in text
    plot(results, tmp_path / "t.png")
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    json.dumps(results)


def test_summary_takes_ratios_and_rates_from_the_head_to_head():
    results = fake_results()
    run = lambda rate: {"images_per_s": rate, "windows": [rate]}  # noqa: E731
    results["head_to_head"] = {
        task: {"modes": {n: "compiled_bf16" for n in results["throughput"] if n.startswith(task)},
               "rates": {n: run(100.0) for n in results["throughput"] if n.startswith(task)},
               "vs_reference": {task: 1.1, f"{task}_brightest": 3.0}}
        for task in ("pretrain", "finetune_cls", "finetune_sr")
    }  # fmt: skip
    # the peak timed beside the classifier's windows: 2x the run's peak, then the run's peak
    results["head_to_head"]["finetune_cls"]["matmul_peak"] = {
        "dtype": "bf16", "flops_per_s": 0.75e12, "windows": [1e12, 0.5e12, 0.5e12]}  # fmt: skip
    rates = results["head_to_head"]["finetune_cls"]["rates"]
    rates["finetune_cls"]["windows"] = [200, 60, 60]
    rates["finetune_cls_reference"]["windows"] = [100, 100, 100]
    s = summarize(results)
    cls = s["tasks"]["finetune_cls"]
    assert cls["vs_reference_best"] == 1.1 and cls["brightest_vs_reference_best"] == 3.0
    assert cls["images_per_s"] == cls["reference_images_per_s"] == 100.0
    # each round against its own peak: the medians of 0.5e9 * (200 / 1e12, 60 / 0.5e12,
    # 60 / 0.5e12) and of 0.5e9 * (100 / 1e12, 100 / 0.5e12, 100 / 0.5e12)
    assert cls["fraction_of_peak"] == pytest.approx(0.06)
    assert cls["reference_fraction_of_peak"] == pytest.approx(0.1)
    # without a peak beside: against the run's peak of 0.5 TFLOP/s
    assert s["tasks"]["finetune_sr"]["fraction_of_peak"] == pytest.approx(0.5e9 * 100 / 0.5e12)
    assert s["tasks"]["pretrain"]["vs_own_eager_fp32"] == pytest.approx(100 / 100)
    results["summary"] = s
    assert "**3.00x** (1.3x)" in markdown(results)


def test_bf16_modes_only_where_bf16_is_native(monkeypatch):
    import lensperf.bench.throughput as bench_throughput

    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr(bench_throughput, "native_bf16", lambda device, native=native: native)
        for reference in (False, True):
            names = [m.name for m in bench_throughput.modes(cpu, reference=reference)]
            assert ("compiled_bf16" in names) is native and "compiled_fp32" in names
    results = fake_results()
    for modes in results["throughput"].values():
        modes.pop("compiled_bf16", None)
    for entry in results["flops"]["tasks"].values():
        entry["fraction_of_peak"].pop("compiled_bf16")
    results["flops"]["matmul_peak_tflops"].pop("bf16")
    results["summary"] = summarize(results)
    assert "the bf16 modes were skipped" in markdown(results)


def test_reference_classifier_and_sr_train_on_the_tasks_own_losses():
    """The bench's reference workloads run each task's loss on each reference model."""
    from lensperf.bench.throughput import workloads

    found = workloads({"pretrain": 2, "finetune_cls": 2, "finetune_sr": 1}, torch.device("cpu"))
    assert set(found) == {f"{t}{r}" for t in ("pretrain", "finetune_cls", "finetune_sr")
                          for r in ("", "_reference")} | {
        "pretrain_brightest", "finetune_cls_brightest", "finetune_sr_brightest"
    }  # the cpu recipes' token_keep  # fmt: skip
    for name, (make, loss_fn, _) in found.items():
        for sdpa in (False, True):
            loss = loss_fn(make(sdpa))
            loss.backward()
            assert torch.isfinite(loss), name


@pytest.mark.slow
def test_bench_quick_end_to_end(tmp_path):
    result = run_cli("bench", "--quick", "--out", tmp_path / "b", timeout=1800)
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert results["summary"]["tasks"]["pretrain"]["vs_reference_best"] > 0
    assert (tmp_path / "b" / "profile.txt").stat().st_size > 0
