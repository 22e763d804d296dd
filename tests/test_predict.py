"""Models on new data: `lensperf predict` on files, folders and stores; DeepLense's split
layouts in the importer; best.pt, early stopping, the weight average as a model; TensorBoard."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from astropy.io import fits

from lensperf import api
from lensperf.store import open_store, store_splits
from lensperf.train.checkpoint import load_checkpoint

from .conftest import run_cli

TINY_VIT = ["encoder.dim=32", "encoder.depth=1", "encoder.heads=2", "runtime.compile=false",
            "data.batch_size=16", "pretrained="]  # fmt: skip


def _one_line_error(result, fragment):
    assert result.returncode == 2, result.stderr[-2000:]
    assert fragment in result.stderr.strip().splitlines()[-1] and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def raw_tree(tmp_path_factory):
    """A class tree of raw (not min-max scaled) lens images, half .npy and half FITS: made from
    a simulated store's images as x * 37 + 5."""
    root = tmp_path_factory.mktemp("raw")
    store = root / "sim.zarr"
    assert run_cli("data", "simulate", "--out", store, "--n-per-class", "10",
                   "--workers", "1").returncode == 0  # fmt: skip
    group = open_store(store)
    images = np.concatenate([group["train/images"][:], group["val/images"][:]])[:, 0]
    labels = np.concatenate([group["train/labels"][:], group["val/labels"][:]])
    tree = root / "tree"
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = tree / ["no_sub", "cdm", "axion"][label]
        folder.mkdir(parents=True, exist_ok=True)
        raw = image.astype(np.float64) * 37 + 5
        if i % 2:
            fits.PrimaryHDU(raw).writeto(folder / f"img{i}.fits")
        else:
            np.save(folder / f"img{i}.npy", raw)
    return tree


@pytest.fixture(scope="module")
def classifier(raw_tree, tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    store = root / "imported.zarr"
    result = run_cli("data", "import", raw_tree, "--out", store, "--normalise")
    assert result.returncode == 0, result.stderr
    run = root / "run"
    result = run_cli("finetune-cls", "--config", "demo", f"data.store={store}", f"out_dir={run}",
                     "epochs=3", "optim.ema=0.9", *TINY_VIT)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return {"store": store, "run": run}


def _rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_predict_a_folder_of_npy_and_fits_like_the_api(classifier, raw_tree, tmp_path):
    out = tmp_path / "p.csv"
    checkpoint = classifier["run"] / "checkpoint.pt"
    result = run_cli("predict", "--checkpoint", checkpoint, raw_tree, "--out", out, "--tta")
    assert result.returncode == 0, result.stderr
    rows = _rows(out)
    files = sorted(p for p in raw_tree.rglob("*") if p.is_file())
    assert [r["path"] for r in rows] == [str(p) for p in files]
    assert {Path(r["path"]).suffix for r in rows} == {".npy", ".fits"}
    probs = np.array([[float(r[f"p_{c}"]) for c in api.CLASSES] for r in rows])
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert [r["predicted"] for r in rows] == [api.CLASSES[k] for k in probs.argmax(1)]
    # the API, given the same raw pixels, applies the same preprocessing and predicts the same
    raw = np.stack([np.load(p) if p.suffix == ".npy" else fits.getdata(p) for p in files])
    model = api.load_model(checkpoint)
    assert model.preprocessing["minmax"] is True
    np.testing.assert_allclose(api.predict(model, raw, tta=True).numpy(), probs, atol=2e-6)
    # ...which is what the model makes of the stored (min-max scaled) images
    scaled = (raw - raw.min((1, 2), keepdims=True)) / np.ptp(raw, (1, 2), keepdims=True)
    model.preprocessing = {}
    np.testing.assert_allclose(api.predict(model, scaled, tta=True).numpy(), probs, atol=2e-6)


def test_predict_a_store_split(classifier, tmp_path):
    out = tmp_path / "s.csv"
    result = run_cli("predict", "--checkpoint", classifier["run"] / "best.pt",
                     f"{classifier['store']}:val", "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    n_val = open_store(classifier["store"])["val/labels"].shape[0]
    assert [r["path"] for r in _rows(out)] == [
        f"{classifier['store']}:val:{i}" for i in range(n_val)
    ]


def test_evaluate_with_tta_scores_what_predict_with_tta_predicts(classifier, raw_tree, tmp_path):
    from lensperf.train.metrics import classification_metrics

    held_out = tmp_path / "held_out.zarr"
    assert run_cli("data", "import", raw_tree, "--out", held_out, "--split", "test",
                   "--normalise").returncode == 0  # fmt: skip
    labels = torch.from_numpy(open_store(held_out, splits=("test",))["test/labels"][:])
    checkpoint = classifier["run"] / "checkpoint.pt"
    for tta in ([], ["--tta"]):
        result = run_cli("evaluate", "--checkpoint", checkpoint, "--data", held_out, "--split",
                         "test", "--out", tmp_path / f"eval{len(tta)}", *tta)  # fmt: skip
        assert result.returncode == 0, result.stderr
        metrics = json.loads((tmp_path / f"eval{len(tta)}" / "metrics.json").read_text())
        assert metrics["tta"] is bool(tta)
        csv_out = tmp_path / f"p{len(tta)}.csv"
        assert run_cli("predict", "--checkpoint", checkpoint, f"{held_out}:test", "--out",
                       csv_out, *tta).returncode == 0  # fmt: skip
        probs = torch.tensor([[float(r[f"p_{c}"]) for c in api.CLASSES] for r in _rows(csv_out)])
        expected = classification_metrics(probs.log(), labels)
        for key in ("accuracy", "auc_macro"):
            assert metrics[key] == pytest.approx(expected[key], abs=1e-5), (tta, key)


def test_evaluate_with_a_shift_scores_the_rolled_images(classifier, tmp_path):
    from lensperf.train.metrics import classification_metrics

    checkpoint = classifier["run"] / "checkpoint.pt"
    group = open_store(classifier["store"])
    images, labels = group["val/images"][:], torch.from_numpy(group["val/labels"][:])
    model = api.load_model(checkpoint)
    for shift in ((0, 0), (2, -3)):
        out = tmp_path / f"eval{shift[0]}"
        result = run_cli("evaluate", "--checkpoint", checkpoint, "--data", classifier["store"],
                         "--out", out, "--shift", *map(str, shift))  # fmt: skip
        assert result.returncode == 0, result.stderr
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["shift"] == list(shift)
        model.preprocessing = {}  # the store's images are scaled already
        rolled = np.roll(images, shift, axis=(-2, -1))
        expected = classification_metrics(api.predict(model, rolled).log(), labels)
        assert metrics["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-6), shift
        assert metrics["auc_macro"] == pytest.approx(expected["auc_macro"], abs=1e-5), shift


def test_predict_and_evaluate_run_at_the_precision_the_model_was_trained_at(classifier, tmp_path):
    """The same weights saved as a bf16 run and as an fp32 run: `lensperf predict`, `lensperf
    evaluate` and the API apply each at its own precision (a batch-norm network's accuracy can
    move by points between the two)."""
    from lensperf.train.checkpoint import save_checkpoint
    from lensperf.train.metrics import classification_metrics

    state = load_checkpoint(classifier["run"] / "checkpoint.pt")
    store = classifier["store"]
    images = torch.from_numpy(open_store(store)["val/images"][:])
    probs = {}
    for precision in ("bf16", "fp32"):
        state["config"]["runtime"]["precision"] = precision
        checkpoint = save_checkpoint(state, tmp_path / f"{precision}.pt")
        out = tmp_path / f"{precision}.csv"
        assert run_cli("predict", "--checkpoint", checkpoint, f"{store}:val", "--out",
                       out).returncode == 0  # fmt: skip
        probs[precision] = np.array([[float(r[f"p_{c}"]) for c in api.CLASSES] for r in _rows(out)])
        model = api.load_model(checkpoint)
        assert model.precision == precision
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16,
                                             enabled=precision == "bf16"):  # fmt: skip
            expected = model(images).float().softmax(1).numpy()
        np.testing.assert_allclose(probs[precision], expected, atol=2e-6)
        np.testing.assert_allclose(api.predict(model, images).numpy(), expected, atol=2e-6)
        result = run_cli("evaluate", "--checkpoint", checkpoint, "--data", store, "--out",
                         tmp_path / f"eval-{precision}")  # fmt: skip
        assert result.returncode == 0, result.stderr
        metrics = json.loads((tmp_path / f"eval-{precision}" / "metrics.json").read_text())
        labels = torch.from_numpy(open_store(store)["val/labels"][:])
        want = classification_metrics(torch.from_numpy(expected).log(), labels)["auc_macro"]
        assert metrics["auc_macro"] == pytest.approx(want, abs=1e-6)
    assert np.abs(probs["bf16"] - probs["fp32"]).max() > 1e-4  # the two really differ


def test_a_bad_file_stops_predict_or_is_skipped(classifier, raw_tree, tmp_path):
    tree = Path(shutil.copytree(raw_tree, tmp_path / "tree"))
    bad = tree / "cdm" / "broken.npy"
    bad.write_bytes(b"\x93NUMPY garbage")
    np.save(tree / "cdm" / "big.npy", np.random.default_rng(0).random((80, 80)))
    out = tmp_path / "p.csv"
    checkpoint = classifier["run"] / "checkpoint.pt"
    _one_line_error(run_cli("predict", "--checkpoint", checkpoint, tree, "--out", out),
                    str(tree / "cdm" / "big.npy"))  # fmt: skip
    assert not out.exists()
    result = run_cli("predict", "--checkpoint", checkpoint, tree, "--out", out, "--skip-bad")
    assert result.returncode == 0 and "skipped 2 bad file(s)" in result.stdout
    assert len(_rows(out)) == len([p for p in raw_tree.rglob("*") if p.is_file()])
    _one_line_error(run_cli("predict", "--checkpoint", checkpoint, tree, "--out", out,
                            "--skip-bad"), "already exists")  # fmt: skip


def test_best_checkpoint_and_the_weight_average(classifier):
    run = classifier["run"]
    lines = (run / "log.jsonl").read_text().splitlines()
    evals = [json.loads(line)["eval"] for line in lines if line.startswith('{"eval"')]
    best = max(evals, key=lambda e: e["accuracy"])  # the first of equals, as selection keeps
    state = load_checkpoint(run / "best.pt")
    assert state["step"] == best["step"] and state["metrics"]["accuracy"] == best["accuracy"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best"]["step"] == best["step"]
    ema = load_checkpoint(run / "ema.pt")
    last = load_checkpoint(run / "checkpoint.pt")
    assert not torch.equal(ema["model"]["head.1.weight"], last["model"]["head.1.weight"])
    assert torch.equal(ema["model"]["head.1.weight"], last["ema"]["model"]["head.1.weight"])


def test_early_stopping_stops(classifier, tmp_path):
    run = tmp_path / "stop"
    result = run_cli("finetune-cls", "--config", "demo", f"data.store={classifier['store']}",
                     f"out_dir={run}", "epochs=6", "optim.lr=1e-9", "optim.min_lr=0",
                     "runtime.early_stop_patience=2", "runtime.select_metric=accuracy",
                     *TINY_VIT)  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    evals = [line for line in (run / "log.jsonl").read_text().splitlines() if '"eval"' in line]
    assert len(evals) == 3 and "stopped_early_at_step" in metrics  # best, then 2 without gain


def test_tensorboard_files_hold_the_scalars(classifier):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(classifier["run"] / "tensorboard"))
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/lr", "train/images_per_s", "eval/accuracy"} <= set(tags["scalars"])
    assert any(tag.startswith("report/") for tag in tags["images"])
    assert [e.value for e in events.Scalars("eval/accuracy")][-1] == pytest.approx(
        json.loads((classifier["run"] / "metrics.json").read_text())["accuracy"]
    )


# ---------------------------------------------------------------- super-resolution


def test_sr_predict_writes_upscaled_files_of_the_same_names(tmp_path):
    store = tmp_path / "sr.zarr"
    assert run_cli("data", "simulate-sr", "--out", store, "--n", "12",
                   "--workers", "1").returncode == 0  # fmt: skip
    run = tmp_path / "run"
    result = run_cli("finetune-sr", "--config", "demo", f"data.store={store}", f"out_dir={run}",
                     "epochs=1", "features=8", "data.batch_size=4", *TINY_VIT)  # fmt: skip
    assert result.returncode == 0, result.stderr
    inputs = tmp_path / "lr"
    inputs.mkdir()
    lr = open_store(store)["train/lr"][:]
    np.save(inputs / "a.npy", lr[0])
    fits.PrimaryHDU(lr[1, 0]).writeto(inputs / "b.fits")
    out = tmp_path / "hr"
    result = run_cli("predict", "--checkpoint", run / "checkpoint.pt", inputs, "--out", out)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.npy", "b.fits"]
    assert np.load(out / "a.npy").shape == (1, 150, 150)
    assert fits.getdata(out / "b.fits").shape == (150, 150)
    expected = api.upscale(api.load_model(run / "checkpoint.pt"), lr[:1])[0].numpy()
    np.testing.assert_allclose(np.load(out / "a.npy"), expected, atol=1e-6)
    # SR models are not averaged: only classifiers' probabilities are
    _one_line_error(run_cli("predict", "--checkpoint", run / "checkpoint.pt", "--checkpoint",
                            run / "best.pt", inputs, "--out", tmp_path / "hr2"),
                    "only classifiers")  # fmt: skip
    assert not (tmp_path / "hr2").exists()


# ---------------------------------------------------------------- DeepLense layouts


def _class_tree(root: Path, per_class: int) -> None:
    rng = np.random.default_rng(len(str(root)))
    for name in ("no_sub", "cdm", "axion"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            np.save(root / name / f"{name}_{i}.npy", rng.random((16, 16)))


def test_split_folders_keep_their_split(tmp_path):
    src = tmp_path / "src"
    _class_tree(src / "train", 6)
    _class_tree(src / "val", 2)
    _class_tree(src / "test", 3)
    result = run_cli("data", "import", src, "--out", tmp_path / "s.zarr")
    assert result.returncode == 0, result.stderr
    group = open_store(tmp_path / "s.zarr", splits=("train", "val", "test"))
    assert store_splits(group) == ["train", "val", "test"]
    assert [group[f"{s}/labels"].shape[0] for s in ("train", "val", "test")] == [18, 6, 9]


def test_a_train_folder_alone_gets_a_carved_val_split(tmp_path):
    src = tmp_path / "src"
    _class_tree(src / "Train", 10)
    result = run_cli("data", "import", src, "--out", tmp_path / "s.zarr")
    assert result.returncode == 0, result.stderr
    group = open_store(tmp_path / "s.zarr")
    assert store_splits(group) == ["train", "val"]
    assert (group["train/labels"].shape[0], group["val/labels"].shape[0]) == (27, 3)


def test_a_held_out_tree_imports_whole_as_test_and_evaluates(classifier, raw_tree, tmp_path):
    held_out = tmp_path / "held_out.zarr"
    result = run_cli("data", "import", raw_tree, "--out", held_out, "--split", "test",
                     "--normalise")  # fmt: skip
    assert result.returncode == 0, result.stderr
    group = open_store(held_out, splits=("test",))
    assert store_splits(group) == ["test"] and group["test/labels"].shape[0] == 30
    result = run_cli("evaluate", "--checkpoint", classifier["run"] / "best.pt", "--data",
                     held_out, "--split", "test", "--out", tmp_path / "eval")  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["split"] == "test" and 0 <= metrics["accuracy"] <= 1
    result = run_cli("evaluate", "--checkpoint", classifier["run"] / "best.pt", "--data",
                     held_out)  # fmt: skip
    _one_line_error(result, "has no val split (it holds test)")


def test_normalise_applies_to_sr_trees(tmp_path):
    src = tmp_path / "src"
    (src / "HR").mkdir(parents=True)
    (src / "LR").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        np.save(src / "HR" / f"s{i}.npy", 10 + 5 * rng.random((1, 32, 32)))
        np.save(src / "LR" / f"s{i}.npy", 10 + 5 * rng.random((1, 16, 16)))
    _one_line_error(run_cli("data", "import", src, "--out", tmp_path / "a.zarr"), "--normalise")
    result = run_cli("data", "import", src, "--out", tmp_path / "a.zarr", "--normalise")
    assert result.returncode == 0, result.stderr
    hr = open_store(tmp_path / "a.zarr")["train/hr"][:]
    assert hr.min() == 0 and hr.max() == 1


def test_several_checkpoints_predict_and_evaluate_the_mean_of_their_probabilities(
    classifier, tmp_path
):
    """A ViT (bf16 here) and a ResNet run in fp32, given together: predict writes the mean of
    the two models' probabilities, each model at its own precision; evaluate, with and without
    test-time averaging, scores that mean; a model trained on images made another way, or one
    checkpoint given twice, is refused with one line (an SR model: in the SR test)."""
    from lensperf.train.checkpoint import save_checkpoint
    from lensperf.train.metrics import classification_metrics

    store, vit = classifier["store"], classifier["run"] / "checkpoint.pt"
    result = run_cli("finetune-cls", "--config", "cnn_demo", f"data.store={store}",
                     f"out_dir={tmp_path / 'cnn'}", "epochs=1", "resnet.widths=[4,8]",
                     "resnet.blocks=[1,1]", "data.batch_size=16",
                     "runtime.precision=fp32")  # fmt: skip
    assert result.returncode == 0, result.stderr
    cnn = tmp_path / "cnn" / "checkpoint.pt"
    labels = torch.from_numpy(open_store(store)["val/labels"][:])
    for tta in ([], ["--tta"]):
        alone = []
        for checkpoint in (vit, cnn):
            out = tmp_path / f"{checkpoint.parent.name}{len(tta)}.csv"
            assert run_cli("predict", "--checkpoint", checkpoint, f"{store}:val", "--out", out,
                           *tta).returncode == 0  # fmt: skip
            alone.append(np.array([[float(r[f"p_{c}"]) for c in api.CLASSES] for r in _rows(out)]))
        assert np.abs(alone[0] - alone[1]).max() > 1e-3  # two different models
        out = tmp_path / f"both{len(tta)}.csv"
        result = run_cli("predict", "--checkpoint", vit, "--checkpoint", cnn, f"{store}:val",
                         "--out", out, *tta)  # fmt: skip
        assert result.returncode == 0, result.stderr
        both = np.array([[float(r[f"p_{c}"]) for c in api.CLASSES] for r in _rows(out)])
        np.testing.assert_allclose(both, (alone[0] + alone[1]) / 2, atol=2e-6)
        model = api.load_model([vit, cnn])  # the API's ensemble, given the stored images
        model.preprocessing = {}
        images = open_store(store)["val/images"][:]
        np.testing.assert_allclose(api.predict(model, images, tta=bool(tta)).numpy(), both,
                                   atol=2e-6)  # fmt: skip
        report = tmp_path / f"eval{len(tta)}"
        result = run_cli("evaluate", "--checkpoint", vit, "--checkpoint", cnn, "--data", store,
                         "--out", report, *tta)  # fmt: skip
        assert result.returncode == 0, result.stderr
        metrics = json.loads((report / "metrics.json").read_text())
        assert metrics["checkpoint"] == [str(vit), str(cnn)]
        want = classification_metrics(torch.from_numpy(both).float().log(), labels)
        for key in ("accuracy", "auc_macro"):
            assert metrics[key] == pytest.approx(want[key], abs=1e-5), (tta, key)

    state = load_checkpoint(cnn)
    state["preprocessing"] = {"minmax": False}
    other = save_checkpoint(state, tmp_path / "raw_pixels.pt")
    _one_line_error(run_cli("predict", "--checkpoint", vit, "--checkpoint", other,
                            f"{store}:val", "--out", tmp_path / "x.csv"),
                    "made another way")  # fmt: skip
    _one_line_error(run_cli("evaluate", "--checkpoint", vit, "--checkpoint", cnn, "--checkpoint",
                            vit.parent / ".." / vit.parent.name / vit.name, "--data", store,
                            "--out", tmp_path / "twice"),
                    "given twice")  # fmt: skip
    assert not (tmp_path / "twice").exists()
