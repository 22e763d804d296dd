import json
import os
import subprocess
import sys

import pytest
import torch

from lensperf import api
from lensperf.config import load_config
from lensperf.errors import DataError
from lensperf.models import MAE, Classifier, MAEConfig, SuperResolution, ViTConfig, ViTEncoder
from lensperf.simulate.runner import simulate_classification, simulate_sr
from lensperf.store import open_store
from lensperf.train.checkpoint import load_checkpoint
from lensperf.train.config import PretrainConfig
from lensperf.train.run import train, train_config
from lensperf.train.tasks import PretrainTask
from lensperf.train.trainer import TrainingError

from .conftest import CONFIGS, ROOT, run_cli

TINY = [
    "model.encoder.dim=32", "model.encoder.depth=1", "model.encoder.heads=2",
    "model.decoder_dim=32", "model.decoder_depth=1", "model.decoder_heads=2",
    "data.batch_size=16", "runtime.compile=false", "runtime.log_every=1",
]  # fmt: skip
TINY_ENCODER = ["encoder.dim=32", "encoder.depth=1", "encoder.heads=2"]


@pytest.fixture(scope="module")
def stores(
    tmp_path_factory,
):
    root = tmp_path_factory.mktemp("train")
    from lensperf.simulate.config import SimulationConfig, SRSimulationConfig

    cls = load_config(SimulationConfig, CONFIGS / "data" / "model_ii.yaml", ["n_per_class=24"])
    sr = load_config(SRSimulationConfig, CONFIGS / "data" / "sr.yaml", ["n=20"])
    return {
        "cls": simulate_classification(cls, root / "c.zarr"),
        "sr": simulate_sr(sr, root / "s.zarr"),
    }


def pretrain_overrides(stores, out, *extra):
    return [f"out_dir={out}", f"data.store={stores['cls']}", "epochs=2", *TINY, *extra]


@pytest.mark.parametrize("size, patch", [(64, 8), (32, 4), (48, 16)])
def test_model_shapes_and_gradients(size, patch):
    enc = ViTConfig(image_size=size, patch_size=patch, dim=32, depth=2, heads=4)
    images = torch.rand(3, 1, size, size)
    mae = MAE(MAEConfig(encoder=enc, decoder_dim=16, decoder_depth=1, decoder_heads=2))
    loss, pred, mask = mae(images)
    L = (size // patch) ** 2
    assert pred.shape == (3, L, patch * patch) and mask.shape == (3, L)
    assert mask.sum(1).tolist() == [L - int(L * 0.25)] * 3
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in mae.parameters())

    clf = Classifier(ViTEncoder(enc))
    logits = clf(images)
    assert logits.shape == (3, 3)
    logits.sum().backward()
    assert clf.encoder.patch_embed.weight.grad is not None

    sr = SuperResolution(ViTEncoder(enc), features=8)
    lr = torch.rand(2, 1, size + 3, size + 3)  # not a multiple of the patch: padded inside
    hr = sr(lr)
    assert hr.shape == (2, 1, 2 * (size + 3), 2 * (size + 3))
    hr.mean().backward()
    assert sr.image_features.weight.grad is not None


def test_sr_starts_as_bicubic():
    sr = SuperResolution(ViTEncoder(ViTConfig(dim=32, depth=1, heads=2)), features=8)
    lr = torch.rand(2, 1, 20, 20)
    bicubic = torch.nn.functional.interpolate(lr, scale_factor=2, mode="bicubic")
    torch.testing.assert_close(sr(lr), bicubic)


def test_linear_probe_freezes_the_encoder():
    clf = Classifier(ViTEncoder(ViTConfig(dim=32, depth=1, heads=2)), linear_probe=True)
    clf(torch.rand(2, 1, 64, 64)).sum().backward()
    assert all(p.grad is None for p in clf.encoder.parameters())
    assert clf.head[1].weight.grad is not None


def test_compiled_equals_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    enc = ViTConfig(dim=32, depth=2, heads=2)
    mae = MAE(MAEConfig(encoder=enc, decoder_dim=16, decoder_depth=1, decoder_heads=2))
    clf = Classifier(ViTEncoder(enc))
    images = torch.rand(4, 1, 64, 64)
    with torch._inductor.config.patch(fallback_random=True):  # eager's RNG for the masks
        for model, fn in ((mae, lambda m: m(images)[0]), (clf, lambda m: m(images).sum())):
            torch.manual_seed(1)
            eager = fn(model)
            torch.manual_seed(1)
            compiled = fn(torch.compile(model, fullgraph=True))
            torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


def _losses(run_dir):
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if '"loss"' in line and "eval" not in line]


def test_interrupted_and_resumed_run_repeats_the_losses(stores, tmp_path):
    # Batches of 8: two full batches an epoch of the 22 no_sub images.
    common = ["runtime.deterministic=true", "data.augment=true", "runtime.checkpoint_every=2",
              "data.batch_size=8"]  # fmt: skip
    full = tmp_path / "full"
    train("pretrain", CONFIGS / "pretrain" / "demo.yaml", pretrain_overrides(stores, full, *common))
    part = tmp_path / "part"
    overrides = pretrain_overrides(stores, part, *common)
    stopped = train("pretrain", CONFIGS / "pretrain" / "demo.yaml", overrides, stop_after=3)
    assert stopped == {"stopped_at_step": 3}
    assert len(_losses(part)) == 3
    train("pretrain", CONFIGS / "pretrain" / "demo.yaml", overrides, resume=True)
    assert _losses(part) == _losses(full)
    assert len(_losses(full)) > 3


def test_resume_refuses_a_different_model(stores, tmp_path):
    out = tmp_path / "r"
    train(
        "pretrain",
        CONFIGS / "pretrain" / "demo.yaml",
        pretrain_overrides(stores, out),
        stop_after=1,
    )
    with pytest.raises(TrainingError, match="section 'model' differs"):
        train("pretrain", CONFIGS / "pretrain" / "demo.yaml",
              pretrain_overrides(stores, out, "model.mask_ratio=0.5"), resume=True)  # fmt: skip


def test_non_finite_loss_stops_before_the_step(stores, tmp_path, monkeypatch):
    out = tmp_path / "nan"
    config = load_config(
        PretrainConfig, CONFIGS / "pretrain" / "demo.yaml",
        pretrain_overrides(stores, out, "runtime.checkpoint_every=1", "epochs=5"),
    )  # fmt: skip
    calls = {"n": 0}
    real_loss = PretrainTask.loss

    def poisoned(self, model, batch):
        calls["n"] += 1
        loss = real_loss(self, model, batch)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(PretrainTask, "loss", poisoned)
    with pytest.raises(TrainingError, match="non-finite loss at step 3") as info:
        train_config("pretrain", config)
    assert "last good checkpoint" in str(info.value)
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_damaged_checkpoints_give_clear_errors(stores, tmp_path):
    out = tmp_path / "ck"
    train(
        "pretrain",
        CONFIGS / "pretrain" / "demo.yaml",
        pretrain_overrides(stores, out),
        stop_after=1,
    )
    good = (out / "checkpoint.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="damaged or truncated"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(DataError, match="not a lensperf checkpoint"):
        load_checkpoint(foreign)
    result = run_cli("evaluate", "--checkpoint", truncated, "--data", stores["cls"])
    assert result.returncode == 2 and "damaged or truncated" in result.stderr
    assert "Traceback" not in result.stderr


def test_finetune_from_pretrained_export_and_api(stores, tmp_path):
    pre = tmp_path / "pre"
    train(
        "pretrain", CONFIGS / "pretrain" / "demo.yaml", pretrain_overrides(stores, pre, "epochs=1")
    )
    exported = tmp_path / "encoder"
    result = run_cli("export", "--checkpoint", pre / "checkpoint.pt", "--out", exported)
    assert result.returncode == 0, result.stderr
    encoder = api.load_encoder(exported)
    ckpt = load_checkpoint(pre / "checkpoint.pt")
    torch.testing.assert_close(
        encoder.state_dict()["patch_embed.weight"], ckpt["model"]["encoder.patch_embed.weight"]
    )

    cls_out = tmp_path / "cls"
    metrics = train("finetune_cls", CONFIGS / "finetune_cls" / "demo.yaml", [
        f"out_dir={cls_out}", f"data.store={stores['cls']}", f"pretrained={exported}", "epochs=1",
        "data.batch_size=16", "runtime.compile=false",
    ])  # fmt: skip
    assert 0 <= metrics["accuracy"] <= 1 and "auc_macro" in metrics
    for name in ("roc.png", "confusion_matrix.png", "embeddings.png", "classification_report.txt"):
        assert (cls_out / "report" / name).stat().st_size > 0
    model = api.load_model(cls_out / "checkpoint.pt")
    probs = api.predict(model, torch.rand(5, 64, 64))
    torch.testing.assert_close(probs.sum(1), torch.ones(5))
    assert api.embed(model, torch.rand(2, 1, 64, 64)).shape == (2, 32)
    # Fine-tuning started from the pretrained weights (not a fresh init).
    scratch = api.build_model("finetune_cls", CONFIGS / "finetune_cls" / "demo.yaml",
                              TINY_ENCODER + ["pretrained="])  # fmt: skip
    assert not torch.equal(scratch.encoder.patch_embed.weight, encoder.patch_embed.weight)

    sr_out = tmp_path / "sr"
    metrics = train("finetune_sr", CONFIGS / "finetune_sr" / "demo.yaml", [
        f"out_dir={sr_out}", f"data.store={stores['sr']}", f"pretrained={pre / 'checkpoint.pt'}",
        "epochs=1", "data.batch_size=8", "runtime.compile=false",
    ])  # fmt: skip
    assert {"psnr", "ssim", "mse", "bicubic_psnr", "psnr_gain_db"} <= set(metrics)
    assert (sr_out / "report" / "triptychs.png").exists()
    hr = api.upscale(api.load_model(sr_out / "checkpoint.pt"), torch.rand(1, 75, 75))
    assert hr.shape == (1, 1, 150, 150)

    checkpoint = sr_out / "checkpoint.pt"
    evaluation = run_cli(
        "evaluate", "--checkpoint", checkpoint, "--data", stores["sr"], "--out", tmp_path / "ev"
    )
    assert evaluation.returncode == 0, evaluation.stderr
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["task"] == "finetune_sr"


def test_labels_per_class_trains_on_that_many_and_validates_on_all(stores, tmp_path):
    out = tmp_path / "few"
    metrics = train("finetune_cls", CONFIGS / "finetune_cls" / "demo.yaml", [
        f"out_dir={out}", f"data.store={stores['cls']}", "pretrained=", "epochs=2",
        "data.batch_size=3", "data.labels_per_class=1", "runtime.compile=false", *TINY_ENCODER,
    ])  # fmt: skip
    assert metrics["images_seen"] == 2 * 3  # 2 epochs of 1 image a class
    # the report scores every validation image: its macro average's support is the split
    report = (out / "report" / "classification_report.txt").read_text()
    support = int(next(line for line in report.splitlines() if "macro avg" in line).split()[-1])
    assert support == open_store(stores["cls"])["val/labels"].shape[0] > 3
    for bad, message in (("1000", "has only"), ("-1", "must be non-negative")):
        result = run_cli("finetune-cls", "--config", "demo", f"data.store={stores['cls']}",
                         f"out_dir={tmp_path / bad}", "pretrained=", "runtime.compile=false",
                         f"data.labels_per_class={bad}")  # fmt: skip
        assert result.returncode == 2 and message in result.stderr.strip().splitlines()[-1]


def test_wrong_store_kind_for_the_task(stores, tmp_path):
    result = run_cli("finetune-sr", "--config", "demo", f"data.store={stores['cls']}",
                     f"out_dir={tmp_path / 'x'}", "pretrained=")  # fmt: skip
    assert result.returncode == 2
    assert "this needs a sr store" in result.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_torchrun_on_cpu(stores, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={_free_port()}", "-m", "lensperf", "pretrain", "--config", "demo",
           *pretrain_overrides(stores, out, "epochs=1", "data.batch_size=4")]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    state = load_checkpoint(out / "checkpoint.pt")
    # 2 ranks x equal shards: each step consumed a batch per rank. The demo preset pretrains
    # on all three classes: 24 per class, 2 of each in val (10%, rounded).
    train_images = 3 * (24 - 2)
    assert state["step"] == train_images // 2 // 4
    assert (out / "metrics.json").exists()


@pytest.mark.parametrize("device_kernels", [False, True], ids=["torch-path", "kernels"])
def test_ops_attention_paths_agree(device_kernels, monkeypatch):
    """lensperf.ops picks explicit matmuls on CPU (or the kernel); both equal SDPA."""
    from lensperf.models import ops

    q, k, v = (torch.randn(2, 3, 17, 16, dtype=torch.float64).float() for _ in range(3))
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    with ops.kernels_switched("on" if device_kernels else "off"):
        torch.testing.assert_close(ops.attention(q, k, v), expected, rtol=1e-5, atol=1e-6)
        assert ops.kernels_active(q) == device_kernels
    assert ops.kernels_mode() == "auto" and not ops.kernels_active(q)  # restored; CPU: off


def test_kernel_switch_is_read_once_from_the_environment():
    """LENSPERF_KERNELS sets the starting mode at import; a bad value fails there."""
    code = "from lensperf.models import ops; print(ops.kernels_mode())"
    for value, expected in (("1", "on"), ("off", "off"), (None, "auto")):
        env = {k: v for k, v in os.environ.items() if k != "LENSPERF_KERNELS"}
        if value is not None:
            env["LENSPERF_KERNELS"] = value
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, cwd=ROOT)  # fmt: skip
        assert out.stdout.strip() == expected, out.stderr
    env = {**os.environ, "LENSPERF_KERNELS": "maybe"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "LENSPERF_KERNELS='maybe'" in out.stderr


def test_patchify_round_trip():
    from lensperf.models.mae import patchify, unpatchify

    images = torch.rand(2, 3, 32, 48)
    patches = patchify(images, 8)
    assert patches.shape == (2, 4 * 6, 8 * 8 * 3)
    assert torch.equal(unpatchify(patches, 8, (4, 6), 3), images)
    assert torch.equal(patches[0, 1, : 8 * 8 * 3].reshape(8, 8, 3)[..., 0], images[0, 0, :8, 8:16])


@pytest.mark.parametrize("task_name", ["pretrain", "finetune_cls", "finetune_sr"])
def test_tokens_biases_and_norms_are_not_decayed(task_name, tmp_path):
    """Each model declares its tokens (no_weight_decay); the trainer exempts them with biases
    and norms, and decays every other weight (the SR model's tokens_to_pixels convolution too,
    which an old `"token" in name` rule exempted by accident)."""
    from lensperf.train.tasks import TASKS
    from lensperf.train.trainer import Trainer

    task = TASKS[task_name](TASKS[task_name].config_type())
    trainer = Trainer(task.config, task)
    trainer.device = torch.device("cpu")
    model = task.build_model(ViTConfig(dim=32, depth=1, heads=2))
    decay, no_decay = trainer._optimizer(model).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    exempt = {names[id(p)] for p in no_decay["params"]}
    tokens = {"encoder.cls_token", "mask_token"}
    assert exempt == {n for n, p in model.named_parameters() if p.ndim < 2 or n in tokens}
    assert "encoder.cls_token" in exempt and decay["weight_decay"] > 0
    assert len(decay["params"]) + len(exempt) == len(names)


def test_train_and_eval_records_share_one_position(stores, tmp_path):
    """step, epoch (fractional, epochs done) and images seen mean the same in both kinds of
    record: an evaluation at the end of an epoch sits where that epoch's last step does."""
    out = tmp_path / "pos"
    train("pretrain", CONFIGS / "pretrain" / "demo.yaml", pretrain_overrides(stores, out))
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = {r["step"]: r for r in records if "eval" not in r}
    evals = [r["eval"] for r in records if "eval" in r]
    assert [e["epoch"] for e in evals] == [1.0, 2.0]
    for e in evals:
        assert {k: steps[e["step"]][k] for k in ("step", "epoch", "images")} == {
            k: e[k] for k in ("step", "epoch", "images")
        }
    train_images, batch = 3 * (24 - 2), 16  # all three classes, as the demo preset pretrains
    assert evals[-1]["images"] == 2 * (train_images // batch) * batch  # full batches only


def test_sr_loss_is_taken_on_the_clamped_output_with_the_gradient_straight_through():
    """Evaluation and predict clamp the SR output to [0, 1], so the loss does too: a sky pushed
    below 0 costs nothing where the truth is 0, and a value above 1 is 1. Its gradient is that of
    the clamped error, passed through the clamp: a faint pixel predicted below 0 is pulled up."""
    from lensperf.train.tasks import SuperResolutionTask

    hr = torch.tensor([[[[0.0, 0.2], [0.5, 1.0]]]])
    out = torch.tensor([[[[-0.3, -0.1], [0.6, 1.4]]]], requires_grad=True)
    loss = SuperResolutionTask(None).loss(lambda lr: out, {"lr": None, "hr": hr})
    torch.testing.assert_close(loss, torch.tensor((0.2**2 + 0.1**2) / 4))
    loss.backward()
    torch.testing.assert_close(out.grad, torch.tensor([[[[0.0, -0.1], [0.05, 0.0]]]]))
