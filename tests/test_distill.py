"""Knowledge distillation (`teacher`): the loss against a float64 reference, forward and
backward; the teacher's targets, row by row, against its own 8-view predictions; and bad
teachers refused."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lensperf.data.augment import symmetric_view
from lensperf.errors import ConfigError, DataError
from lensperf.store import open_store
from lensperf.train.checkpoint import load_checkpoint
from lensperf.train.config import DataConfig, FinetuneClsConfig, RuntimeConfig
from lensperf.train.distill import distillation_loss
from lensperf.train.run import train
from lensperf.train.tasks import ClassifyTask, model_from_checkpoint

from .conftest import CONFIGS
from .test_train import TINY_ENCODER, stores  # noqa: F401 (a module-scoped fixture)

TINY_RESNET = ["arch=resnet", "resnet.widths=[4,8]", "resnet.blocks=[1,1]"]


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_the_loss_is_the_softened_kl_times_t_squared(temperature):
    torch.manual_seed(0)
    logits = torch.randn(6, 3, requires_grad=True)
    teacher = torch.randn(6, 3).log_softmax(-1)
    loss = distillation_loss(logits, teacher, temperature)
    loss.backward()
    x, t = logits.detach().double(), teacher.double()
    p, q = (x / temperature).softmax(-1), (t / temperature).softmax(-1)
    reference = (q * (q.log() - p.log())).sum(-1).mean() * temperature**2
    torch.testing.assert_close(loss.double(), reference)
    # d/dx of T^2 KL(q || softmax(x / T)), over a batch of B: T (p - q) / B
    torch.testing.assert_close(logits.grad.double(), temperature * (p - q) / len(x))
    assert distillation_loss(teacher, teacher, temperature).abs() < 1e-6


@pytest.fixture(scope="module")
def teacher(stores, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("teacher") / "cnn"
    overrides = [f"out_dir={out}", f"data.store={stores['cls']}", "pretrained=", *TINY_RESNET,
                 "epochs=1", "data.batch_size=8", "runtime.compile=false",
                 "optim.layer_decay=1"]  # fmt: skip
    train("finetune_cls", CONFIGS / "finetune_cls" / "demo.yaml", overrides)
    return out / "checkpoint.pt"


def student_task(stores, teacher, per_class=0, **settings) -> ClassifyTask:  # noqa: F811
    data = DataConfig(store=str(stores["cls"]), labels_per_class=per_class)
    config = FinetuneClsConfig(
        teacher=str(teacher), data=data, runtime=RuntimeConfig(compile=False), **settings
    )
    return ClassifyTask(config)


def test_the_targets_are_the_teachers_eight_view_mean_at_each_row(stores, teacher):  # noqa: F811
    task = student_task(stores, teacher)
    task.prepare(torch.device("cpu"))
    images = torch.from_numpy(np.asarray(open_store(stores["cls"])["train/images"][:]))
    _, model = model_from_checkpoint(load_checkpoint(teacher))
    model.eval()
    with torch.no_grad():
        views = [model(symmetric_view(images, v)).double().softmax(-1) for v in range(8)]
    reference = torch.stack(views).mean(0).log()
    assert task.teacher_log_probs.shape == reference.shape
    torch.testing.assert_close(task.teacher_log_probs.double(), reference, atol=1e-5, rtol=1e-4)
    # the images' predictions differ, so a target at the wrong row would be seen
    assert (reference - reference.mean(0)).abs().max() > 1e-3


def test_the_loss_weighs_labels_and_teacher_and_evaluation_sees_only_labels(stores, teacher):  # noqa: F811
    task = student_task(stores, teacher, distill_weight=0.3, distill_temperature=2.0)
    task.prepare(torch.device("cpu"))
    torch.manual_seed(0)
    model = ClassifyTask(FinetuneClsConfig(arch="resnet")).build_model()
    batch = {"image": torch.rand(5, 1, 64, 64), "label": torch.tensor([0, 1, 2, 0, 1]),
             "index": torch.tensor([7, 0, 3, 3, 11])}  # fmt: skip
    logits = model(batch["image"]).float()
    labelled = F.cross_entropy(logits, batch["label"])
    distilled = distillation_loss(logits, task.teacher_log_probs[batch["index"]], 2.0)
    assert distilled > 1e-3
    torch.testing.assert_close(task.loss(model, batch), 0.7 * labelled + 0.3 * distilled)
    model.eval()
    torch.testing.assert_close(
        task.loss(model, batch), F.cross_entropy(model(batch["image"]), batch["label"])
    )


def test_bad_teachers_and_settings_are_refused(stores, tmp_path):  # noqa: F811
    mae = tmp_path / "mae"
    train("pretrain", CONFIGS / "pretrain" / "demo.yaml", [
        f"out_dir={mae}", f"data.store={stores['cls']}", "epochs=1", "data.batch_size=8",
        "runtime.compile=false", *(f"model.{o}" for o in TINY_ENCODER),
    ])  # fmt: skip
    with pytest.raises(DataError, match="not a classifier's checkpoint"):
        student_task(stores, mae / "checkpoint.pt").prepare(torch.device("cpu"))
    with pytest.raises(DataError, match="no checkpoint at"):
        student_task(stores, tmp_path / "none.pt").prepare(torch.device("cpu"))
    with pytest.raises(ConfigError, match="distill_weight"):
        FinetuneClsConfig(distill_weight=1.5)
    with pytest.raises(ConfigError, match="distill_temperature"):
        FinetuneClsConfig(distill_temperature=0)


@pytest.mark.parametrize("backend", ["memory", "torch"])
def test_a_fine_tune_learns_from_a_teacher_end_to_end(stores, teacher, tmp_path, backend):  # noqa: F811
    out = tmp_path / "student"
    overrides = [f"out_dir={out}", f"data.store={stores['cls']}", "pretrained=", *TINY_ENCODER,
                 "epochs=1", "data.batch_size=8", f"data.backend={backend}",
                 "runtime.compile=false", f"teacher={teacher}", "distill_weight=0.9"]  # fmt: skip
    metrics = train("finetune_cls", CONFIGS / "finetune_cls" / "demo.yaml", overrides)
    assert 0 <= metrics["accuracy"] <= 1 and metrics["train_seconds"] > 0
    assert "distill_weight: 0.9" in (out / "config.yaml").read_text()


def test_unlabelled_images_learn_from_the_teacher_alone(stores, teacher):  # noqa: F811
    task = student_task(stores, teacher, 2, distill_unlabelled=True, distill_weight=0.4)
    assert task.train_per_class() == 0  # the loader gives every image
    task.prepare(torch.device("cpu"))
    drawn = task.labelled.nonzero().flatten()
    assert len(drawn) == 6 and (task.teacher_log_probs.exp().sum(-1) - 1).abs().max() < 1e-4
    others = (~task.labelled).nonzero().flatten()[:4]
    torch.manual_seed(0)
    model = ClassifyTask(FinetuneClsConfig(arch="resnet")).build_model()
    for index in (torch.cat([drawn[:2], others]), others):
        batch = {"image": torch.rand(len(index), 1, 64, 64), "index": index,
                 "label": torch.randint(0, 3, (len(index),))}  # fmt: skip
        logits = model(batch["image"]).float()
        mine = torch.isin(index, drawn)
        labelled = F.cross_entropy(logits[mine], batch["label"][mine]) if mine.any() else 0.0
        distilled = distillation_loss(logits, task.teacher_log_probs[index], 1.0)
        torch.testing.assert_close(task.loss(model, batch), 0.6 * labelled + 0.4 * distilled)
    with pytest.raises(ConfigError, match="distill_unlabelled: needs a teacher"):
        FinetuneClsConfig(distill_unlabelled=True, data=DataConfig(labels_per_class=2))


def test_a_few_label_fine_tune_with_unlabelled_images_sees_them_all(stores, teacher, tmp_path):  # noqa: F811
    out = tmp_path / "semi"
    overrides = [f"out_dir={out}", f"data.store={stores['cls']}", "pretrained=", *TINY_ENCODER,
                 "epochs=1", "data.batch_size=4", "runtime.compile=false", f"teacher={teacher}",
                 "data.labels_per_class=2", "distill_unlabelled=true"]  # fmt: skip
    metrics = train("finetune_cls", CONFIGS / "finetune_cls" / "demo.yaml", overrides)
    rows = open_store(stores["cls"])["train/labels"].shape[0]
    assert metrics["images_seen"] == rows // 4 * 4 > 6


def test_targets_are_cached_by_teacher_and_rows(stores, teacher, tmp_path, monkeypatch):  # noqa: F811
    copy = tmp_path / "teacher" / "checkpoint.pt"
    copy.parent.mkdir()
    copy.write_bytes(teacher.read_bytes())
    first = student_task(stores, copy)
    first.prepare(torch.device("cpu"))
    cache = list((copy.parent / "teacher_targets").iterdir())
    assert len(cache) == 1 and cache[0].suffix == ".pt"

    def computed(*args):
        raise AssertionError("the targets were computed again")

    with monkeypatch.context() as patch:
        patch.setattr("lensperf.train.tasks.teacher_targets", computed)
        again = student_task(stores, copy)
        again.prepare(torch.device("cpu"))
    assert torch.equal(again.teacher_log_probs, first.teacher_log_probs)
    # other rows drawn, or another teacher: another cache file, computed
    student_task(stores, copy, 2, distill_unlabelled=True).prepare(torch.device("cpu"))
    assert len(list(cache[0].parent.iterdir())) == 2
    state = torch.load(copy, weights_only=False)
    state["model"] = {k: v * 0 for k, v in state["model"].items()}
    torch.save(state, copy)
    zeroed = student_task(stores, copy)
    zeroed.prepare(torch.device("cpu"))
    assert len(list(cache[0].parent.iterdir())) == 3
    assert not torch.allclose(zeroed.teacher_log_probs, first.teacher_log_probs)
    # a damaged cache file is recomputed, not trusted
    copy.write_bytes(teacher.read_bytes())
    cache[0].write_bytes(b"not a tensor")
    mended = student_task(stores, copy)
    mended.prepare(torch.device("cpu"))
    assert torch.equal(mended.teacher_log_probs, first.teacher_log_probs)


def test_a_teacher_whose_folder_holds_no_cache_teaches(stores, teacher, tmp_path, capfd):  # noqa: F811
    copy = tmp_path / "checkpoint.pt"
    copy.write_bytes(teacher.read_bytes())
    (tmp_path / "teacher_targets").write_text("a file where the cache folder would go")
    task = student_task(stores, copy)
    task.prepare(torch.device("cpu"))
    assert task.teacher_log_probs.shape[1] == 3
    assert "the teacher's targets are not cached" in capfd.readouterr().err
