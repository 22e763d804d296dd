"""The loss-parity run trains both MAEs on the same batches and judges their difference against
the seeds' spread."""

import pytest

from lensperf.bench.loss_parity import main, run, summarize
from lensperf.models import MAEConfig, ViTConfig

from .test_loader import SIZE, synthetic_store

TINY = MAEConfig(encoder=ViTConfig(image_size=SIZE, patch_size=4, dim=16, depth=1, heads=2),
                 decoder_dim=16, decoder_depth=1, decoder_heads=2)  # fmt: skip


def test_both_models_train_on_every_seed(tmp_path):
    store = synthetic_store(tmp_path / "c.zarr")
    result = run(store, steps=30, seeds=2, batch_size=8, config=TINY, compile_=False)
    assert set(result["runs"]) == {"lensperf", "lensperf_same_init", "reference"}
    for runs in result["runs"].values():
        assert [r["seed"] for r in runs] == [0, 1]
        for r in runs:  # 30 steps cross an epoch of 25 full batches: the loader restarts
            assert len(r["train_loss"]) == 30 and r["val_loss"] > 0
            assert r["final_train_loss"] == pytest.approx(sum(r["train_loss"][-3:]) / 3)
    for arm in ("lensperf", "lensperf_same_init"):
        assert set(result["summary"][arm]) == {"final_train_loss", "val_loss"}


def test_the_same_init_arm_starts_from_the_references_weights():
    """Same weights, same masks: the same loss at step 0."""
    import torch

    from lensperf.bench.loss_parity import MODELS

    images = torch.rand(4, 1, SIZE, SIZE)
    losses = []
    for name in ("reference", "lensperf_same_init", "lensperf"):
        torch.manual_seed(3)
        model = MODELS[name][0](TINY)
        torch.manual_seed(7)
        losses.append(model(images)[0].item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert losses[2] != pytest.approx(losses[0], rel=1e-3)  # its own initialisation


def test_within_noise_means_no_larger_than_the_seeds_spread():
    def runs(lensperf, reference):
        sides = {"lensperf": lensperf, "reference": reference}
        return {k: [{"final_train_loss": v, "val_loss": v} for v in vs] for k, vs in sides.items()}

    close = summarize(runs([0.10, 0.12], [0.11, 0.12]))["lensperf"]["val_loss"]
    assert close["difference"] == pytest.approx(-0.005)
    assert close["seed_spread"] == pytest.approx(0.02)
    assert close["within_noise"]
    assert not summarize(runs([0.20, 0.21], [0.11, 0.12]))["lensperf"]["val_loss"]["within_noise"]


def test_bad_arguments_are_refused(tmp_path, capsys):
    bad = [(["--store", str(tmp_path / "none.zarr")], "no dataset store"),
           (["--store", str(tmp_path), "--seeds", "1"], "--seeds >= 2")]  # fmt: skip
    for argv, message in bad:
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2 and message in capsys.readouterr().err
