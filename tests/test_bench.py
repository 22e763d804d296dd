import json

import pytest
import torch

from lensperf.bench.measure import flops_per_image, train_step_rate
from lensperf.bench.reference_mae import ReferenceMAE
from lensperf.bench.run import summarize
from lensperf.bench.tables import markdown, plot
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


def fake_results():
    def run(rate):
        return {
            "batch": 8,
            "images_per_s": rate,
            "windows": [rate],
            "warmup_s": 0.1,
            "final_loss": 0.1,
        }

    def modes(a, b, c):
        return {"eager_fp32": run(a), "compiled_fp32": run(b), "compiled_bf16": run(c)}

    return {
        "environment": {
            "device": "cpu",
            "gpu": None,
            "cpu": "x",
            "threads": 2,
            "python": "3.11",
            "versions": {"torch": "2"},
            "git_commit": "abc",
        },  # fmt: skip
        "quick": True,
        "timing": {},
        "throughput": {
            "pretrain": modes(100, 150, 250),
            "finetune_cls": modes(50, 60, 80),
            "finetune_sr": modes(10, 12, 16),
            "reference_mae": {"eager_fp32": run(90)},
        },  # fmt: skip
        "flops": {"matmul_peak_tflops": {"fp32": 1.0, "bf16": 2.0}, "tasks": {}},
        "loader_images_per_s": {"memory_0w": 5000.0, "torch_0w": 1000.0},
    }


def test_summary_ratios_and_report(tmp_path):
    results = fake_results()
    s = summarize(results)
    assert s["pretrain_speedup_vs_reference_mae"] == pytest.approx(250 / 90)
    assert s["speedup_vs_eager_fp32"]["finetune_cls"] == pytest.approx(80 / 50)
    assert s["loader_vs_pretrain_consumption"] == pytest.approx(5000 / 250)
    assert s["best_mode"]["pretrain"] == "compiled_bf16"
    results["summary"] = s
    text = markdown(results)
    assert (
        "**2.78x** (target 2x)" in text and "| pretrain | 8 | compiled_bf16 | 250.0 | 2.50x" in text
    )
    plot(results, tmp_path / "t.png")
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    json.dumps(results)


def test_bf16_modes_only_where_bf16_is_native(monkeypatch, tmp_path):
    import lensperf.bench.run as bench_run

    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr(bench_run, "native_bf16", lambda device, native=native: native)
        names = [mode[0] for mode in bench_run._modes(cpu)]
        assert ("compiled_bf16" in names) is native and "compiled_fp32" in names
    results = fake_results()
    for modes in results["throughput"].values():
        modes.pop("compiled_bf16", None)
    results["flops"]["matmul_peak_tflops"].pop("bf16")
    results["summary"] = summarize(results)
    assert "the bf16 modes were skipped" in markdown(results)


@pytest.mark.slow
def test_bench_quick_end_to_end(tmp_path):
    result = run_cli("bench", "--quick", "--out", tmp_path / "b", timeout=1800)
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert results["summary"]["pretrain_speedup_vs_reference_mae"] > 0
    assert (tmp_path / "b" / "profile.txt").stat().st_size > 0
