"""Unlabelled images (label -1, imported from an `unlabelled/` folder): they go to the train
split only; pretraining and `distill_unlabelled` use them; a classifier's cross-entropy, its
evaluation and `labels_per_class` never see them; a label that is neither a class nor -1 is
damage."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lensperf.data import make_loader
from lensperf.errors import DataError
from lensperf.store import UNLABELLED, StoreWriter, open_store, read_rows
from lensperf.store.importer import import_tree
from lensperf.store.inspect import format_summary, summarize
from lensperf.train.config import FinetuneClsConfig
from lensperf.train.distill import distillation_loss
from lensperf.train.run import train
from lensperf.train.tasks import ClassifyTask

from .conftest import CONFIGS, run_cli
from .test_distill import student_task, teacher  # noqa: F401 (a module-scoped fixture)
from .test_train import TINY_ENCODER, stores  # noqa: F401 (a module-scoped fixture)


def _tree(root: Path, store: Path, unlabelled: bool) -> Path:
    """The simulated store's training images as a DeepLense tree of .npy files: its class
    folders, and with `unlabelled` an unlabelled/ folder of its val images."""
    group = open_store(store)
    images = read_rows(group["train/images"], slice(None))[:, 0]
    labels = read_rows(group["train/labels"], slice(None))
    for c, name in enumerate(("no_sub", "cdm", "axion")):
        (root / name).mkdir(parents=True)
        for i in np.flatnonzero(labels == c):
            np.save(root / name / f"{name}_{i}.npy", images[i])
    if unlabelled:
        (root / "unlabelled").mkdir()
        extra = read_rows(group["val/images"], slice(None))[:, 0]
        for i, image in enumerate(extra):
            np.save(root / "unlabelled" / f"u_{i}.npy", image)
    return root


@pytest.fixture(scope="module")
def mixed(stores, tmp_path_factory):  # noqa: F811
    """(store with unlabelled training images, the same import without them)."""
    root = tmp_path_factory.mktemp("unlabelled")
    with_them = import_tree(_tree(root / "a", stores["cls"], True), root / "mixed.zarr").out
    without = import_tree(_tree(root / "b", stores["cls"], False), root / "plain.zarr").out
    return with_them, without


def _labels(store, split):
    return read_rows(open_store(store)[f"{split}/labels"], slice(None))


def test_unlabelled_images_go_to_train_only_and_leave_the_labelled_split_unchanged(mixed):
    with_them, without = mixed
    train, files = _labels(with_them, "train"), len(_labels(without, "val"))
    assert (train == UNLABELLED).sum() == files > 0
    assert (_labels(with_them, "val") >= 0).all()
    # validation is the same images as an import without the unlabelled folder
    val = [read_rows(open_store(s)["val/images"], slice(None)) for s in mixed]
    assert np.array_equal(np.sort(val[0].reshape(len(val[0]), -1), 0),
                          np.sort(val[1].reshape(len(val[1]), -1), 0))  # fmt: skip
    summary = summarize(with_them)
    assert summary["splits"]["train"]["per_class"]["unlabelled"] == files
    assert f"unlabelled {files})" in format_summary(summary)
    assert "unlabelled" not in summarize(without)["splits"]["train"]["per_class"]


def test_loaders_leave_unlabelled_images_out_only_when_asked(mixed):
    store, _ = mixed
    labels = _labels(store, "train")

    def seen(**kwargs):
        loader = make_loader(store, "train", batch_size=7, shuffle=False, **kwargs)
        return torch.cat([batch["label"] for batch in loader]).numpy()

    assert np.array_equal(seen(), labels)
    assert np.array_equal(seen(unlabelled=False), labels[labels != UNLABELLED])
    assert np.array_equal(seen(classes=("no_sub", "unlabelled")), labels[labels <= 0])
    assert (seen(per_class=2) >= 0).all() and len(seen(per_class=2)) == 6


def test_import_refuses_unlabelled_images_outside_train(stores, tmp_path):  # noqa: F811
    tree = _tree(tmp_path / "t", stores["cls"], True)
    with pytest.raises(DataError, match="unlabelled images can go to the train split only"):
        import_tree(tree, tmp_path / "test.zarr", split="test")
    split_tree = tmp_path / "s"
    _tree(split_tree / "train", stores["cls"], False)
    _tree(split_tree / "val", stores["cls"], True)
    with pytest.raises(DataError, match="not val"):
        import_tree(split_tree, tmp_path / "split.zarr")
    only = tmp_path / "only"
    (only / "unlabelled").mkdir(parents=True)
    for i in range(4):
        np.save(only / "unlabelled" / f"{i}.npy", np.full((8, 8), i / 4))
    result = run_cli("data", "import", only, "--out", tmp_path / "only.zarr")
    assert result.returncode == 2 and "no labelled images" in result.stderr
    assert not any(p.name.startswith("only") for p in tmp_path.iterdir() if p.suffix == ".zarr")


def test_a_label_neither_a_class_nor_unlabelled_is_damage(tmp_path):
    for bad in (3, -2):
        out = tmp_path / f"bad{bad}.zarr"
        with StoreWriter(out, kind="classification") as writer:
            writer.set_attrs(classes=["no_sub", "cdm", "axion"], image_size=8)
            for split in ("train", "val"):
                writer.create(split, "images", (4, 1, 8, 8), "float32", 4)[:] = 0.5
                writer.create(split, "labels", (4,), "int64", 4)[:] = [0, 1, 2, bad]
                writer.create(split, "axion_mass", (4,), "float32", 4)[:] = np.nan
        with pytest.raises(DataError, match=f"labels holds {bad}, not a class index"):
            make_loader(out, "train", batch_size=2)


def test_a_classifier_trains_and_validates_on_labelled_images_only(mixed, tmp_path):
    store, _ = mixed
    labelled = int((_labels(store, "train") >= 0).sum())
    metrics = train("finetune_cls", CONFIGS / "finetune_cls" / "demo.yaml", [
        f"out_dir={tmp_path / 'cls'}", f"data.store={store}", "pretrained=", "epochs=1",
        "data.batch_size=1", "runtime.compile=false", *TINY_ENCODER,
    ])  # fmt: skip
    assert metrics["images_seen"] == labelled
    pretrained = train("pretrain", CONFIGS / "pretrain" / "demo.yaml", [
        f"out_dir={tmp_path / 'mae'}", f"data.store={store}", "epochs=1", "data.batch_size=1",
        "data.classes=[no_sub,unlabelled]", "runtime.compile=false",
        *(f"model.{o}" for o in TINY_ENCODER),
    ])  # fmt: skip
    assert pretrained["images_seen"] == int((_labels(store, "train") <= 0).sum())


def test_distill_unlabelled_learns_unlabelled_images_from_the_teacher(mixed, teacher, tmp_path):  # noqa: F811
    store, plain = mixed
    task = student_task({"cls": store}, teacher, 0, distill_unlabelled=True, distill_weight=0.4)
    task.prepare(torch.device("cpu"))
    labels = torch.from_numpy(_labels(store, "train"))
    assert torch.equal(task.labelled, labels >= 0)
    torch.manual_seed(0)
    model = ClassifyTask(FinetuneClsConfig(arch="resnet")).build_model()
    index = torch.cat([(labels >= 0).nonzero()[:3, 0], (labels < 0).nonzero()[:3, 0]])
    batch = {"image": torch.rand(6, 1, 64, 64), "label": labels[index], "index": index}
    logits = model(batch["image"]).float()
    labelled = F.cross_entropy(logits[:3], batch["label"][:3])
    distilled = distillation_loss(logits, task.teacher_log_probs[index], 1.0)
    torch.testing.assert_close(task.loss(model, batch), 0.6 * labelled + 0.4 * distilled)
    # end to end, a fine-tune sees every training image; without unlabelled ones or
    # labels_per_class there is nothing for distill_unlabelled to do
    metrics = train("finetune_cls", CONFIGS / "finetune_cls" / "demo.yaml", [
        f"out_dir={tmp_path / 'semi'}", f"data.store={store}", "pretrained=", "epochs=1",
        "data.batch_size=1", "runtime.compile=false", f"teacher={teacher}",
        "distill_unlabelled=true", *TINY_ENCODER,
    ])  # fmt: skip
    assert metrics["images_seen"] == len(labels)
    result = run_cli("finetune-cls", "--config", "demo", f"data.store={plain}",
                     f"out_dir={tmp_path / 'none'}", "pretrained=", "runtime.compile=false",
                     f"teacher={teacher}", "distill_unlabelled=true")  # fmt: skip
    assert result.returncode == 2 and "no unlabelled training images" in result.stderr
    assert not (tmp_path / "none").exists()
