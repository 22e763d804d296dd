"""Faults injected by hand, as a user meets them: damaged stores, runs in the way of runs,
read-only and full disks, killed parents, unguarded scripts, stores the trainer cannot use.
Each test failed before its fix."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from lensperf.errors import DataError
from lensperf.store import CLASSIFICATION, StoreWriter, open_store
from lensperf.train.run_dir import RunDirectory

from .conftest import ROOT, run_cli

TINY_PRETRAIN = [
    "model.encoder.dim=32", "model.encoder.depth=1", "model.encoder.heads=2",
    "model.decoder_dim=32", "model.decoder_depth=1", "model.decoder_heads=2",
    "data.batch_size=8", "runtime.compile=false", "epochs=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rel") / "c.zarr"
    result = run_cli("data", "simulate", "--out", out, "--n-per-class", "12", "--workers", "1")
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture
def copy_of(store, tmp_path):
    def make(name="copy.zarr") -> Path:
        return Path(shutil.copytree(store, tmp_path / name))

    return make


def one_line_error(result, fragment: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("lensperf: error:") and fragment in lines[-1], lines
    assert "Traceback" not in result.stderr


def pretrain(store: Path, out: Path, *extra: str, timeout: float = 300):
    return run_cli("pretrain", "--config", "demo", f"data.store={store}", f"out_dir={out}",
                   *TINY_PRETRAIN, *extra, timeout=timeout)  # fmt: skip


# ---------------------------------------------------------------- stores


@pytest.mark.parametrize("array", ["train/labels", "train/images", "val/axion_mass"])
def test_a_deleted_chunk_is_damage_everywhere(copy_of, tmp_path, array):
    damaged = copy_of()
    first_chunk = sorted(p for p in (damaged / array / "c").rglob("*") if p.is_file())[0]
    first_chunk.unlink()
    with pytest.raises(DataError, match="chunk file"):
        open_store(damaged)
    one_line_error(run_cli("data", "inspect", damaged), "is damaged")
    out = tmp_path / "cls"
    result = run_cli("finetune-cls", "--config", "demo", f"data.store={damaged}",
                     f"out_dir={out}", "pretrained=", "runtime.compile=false")  # fmt: skip
    one_line_error(result, "is damaged")
    assert not (out / "checkpoint.pt").exists()


def test_chunks_equal_to_the_fill_value_are_written(tmp_path):
    """All labels 0 (the fill value): zarr would leave those chunks out; the store holds them."""
    out = tmp_path / "zeros.zarr"
    with StoreWriter(out, kind=CLASSIFICATION) as writer:
        writer.set_attrs(classes=["no_sub", "cdm", "axion"], image_size=8, source="test")
        for split in ("train", "val"):
            writer.create(split, "images", (4, 1, 8, 8), "float32", 2)[:] = 0.5
            writer.create(split, "labels", (4,), "int64", 2)[:] = 0
            writer.create(split, "axion_mass", (4,), "float32", 2)[:] = np.nan
    open_store(out)
    assert len(list((out / "train" / "labels" / "c").iterdir())) == 2


def test_a_writer_that_skips_rows_leaves_no_store(tmp_path):
    out = tmp_path / "holes.zarr"
    with pytest.raises(RuntimeError, match="never written"):
        with StoreWriter(out, kind=CLASSIFICATION) as writer:
            writer.set_attrs(classes=["no_sub", "cdm", "axion"], image_size=8, source="t")
            writer.create("train", "images", (4, 1, 8, 8), "float32", 2)[:2] = 0.5
    assert not out.exists() and not list(tmp_path.iterdir())


def test_a_killed_write_is_cleaned_and_mentioned(store, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    leftover = tmp_path / f".again.zarr.tmp-{dead}"
    shutil.copytree(store, leftover)
    result = run_cli("data", "simulate", "--out", tmp_path / "again.zarr", "--n-per-class", "3",
                     "--workers", "1")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not leftover.exists() and str(leftover) in result.stderr


def test_inspect_into_a_closed_pipe_is_quiet(store):
    pipeline = f"{sys.executable} -m lensperf data inspect {store} | head -1"
    result = subprocess.run(pipeline, shell=True, capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.count("\n") == 1 and result.stderr == ""


# ---------------------------------------------------------------- runs


def test_a_finished_run_is_never_replaced_without_asking(store, tmp_path):
    out = tmp_path / "run"
    assert pretrain(store, out).returncode == 0

    def run_files():
        return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name[0] != "."}

    before = run_files()
    one_line_error(pretrain(store, out), "holds a run already")
    assert run_files() == before
    result = pretrain(store, out, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert (out / "checkpoint.pt").read_bytes() != before["checkpoint.pt"]


def test_resume_without_a_checkpoint_is_an_error(store, tmp_path):
    one_line_error(pretrain(store, tmp_path / "typo", "--resume"), "no checkpoint")


def test_two_runs_never_share_a_directory(store, tmp_path):
    out = tmp_path / "busy"
    with RunDirectory(out):  # another run holds it
        one_line_error(pretrain(store, out), "in use by another lensperf run")
    assert pretrain(store, out).returncode == 0  # free again


def test_resume_cuts_the_log_back_to_the_checkpoint(store, tmp_path):
    out = tmp_path / "cut"
    result = pretrain(store, out, "epochs=3", "runtime.log_every=1", "--stop-after", "2")
    assert result.returncode == 0, result.stderr
    log = out / "log.jsonl"
    # a run killed after its checkpoint logged steps 3 and 4 that the checkpoint does not hold
    log.write_text(log.read_text() + '{"step": 3, "loss": 9}\n{"step": 4, "loss": 9}\n')
    assert pretrain(store, out, "epochs=3", "runtime.log_every=1", "--resume").returncode == 0
    records = [json.loads(line) for line in log.read_text().splitlines()]
    steps = [r["step"] for r in records if "eval" not in r]
    assert steps == sorted(set(steps)) and 9 not in [r.get("loss") for r in records]


@pytest.mark.parametrize("missing", ["pretrained", "teacher"])
def test_a_run_that_fails_before_training_leaves_nothing(store, tmp_path, missing):
    """A missing file found while building the model (or its teacher's targets) used to leave an
    empty run directory holding only its `.lock`."""
    new, kept = tmp_path / "new" / "run", tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("the user's")
    for out in (new, kept):
        result = run_cli("finetune-cls", "--config", "demo", f"data.store={store}",
                         f"out_dir={out}", "runtime.compile=false", "pretrained=",
                         f"{missing}={tmp_path / 'gone.pt'}")  # fmt: skip
        one_line_error(result, "no checkpoint at")
    assert not new.exists() and new.parent.exists()
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]


def test_export_refuses_what_is_in_the_way(store, tmp_path):
    run = tmp_path / "run"
    assert pretrain(store, run).returncode == 0
    checkpoint = run / "checkpoint.pt"
    a_file = tmp_path / "file"
    a_file.write_text("keep me")
    one_line_error(run_cli("export", "--checkpoint", checkpoint, "--out", a_file), "is a file")
    assert a_file.read_text() == "keep me"
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("keep me")
    one_line_error(run_cli("export", "--checkpoint", checkpoint, "--out", full), "not empty")
    assert (full / "mine.txt").read_text() == "keep me"
    result = run_cli("export", "--checkpoint", checkpoint, "--out", full, "--overwrite")
    assert result.returncode == 0 and (full / "encoder.safetensors").exists()


# ---------------------------------------------------------------- read-only and full disks


def _mount_tmpfs(where: Path, options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a test filesystem needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                            capture_output=True, text=True)  # fmt: skip
    if result.returncode != 0:
        pytest.skip(f"cannot mount a test filesystem here: {result.stderr.strip()}")


@pytest.fixture
def read_only_dir(tmp_path):
    where = tmp_path / "ro"
    _mount_tmpfs(where, "size=4m")
    (where / "existing").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def full_disk(tmp_path):
    where = tmp_path / "full"
    _mount_tmpfs(where, "size=256k")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_read_only_places_are_one_line_errors(store, read_only_dir, tmp_path):
    ro = read_only_dir
    one_line_error(pretrain(store, ro / "existing"), "cannot write")
    one_line_error(run_cli("data", "simulate", "--out", ro / "x.zarr", "--n-per-class", "2",
                           "--workers", "1"), "Read-only")  # fmt: skip
    run = tmp_path / "run"
    assert pretrain(store, run).returncode == 0
    one_line_error(run_cli("export", "--checkpoint", run / "checkpoint.pt", "--out", ro / "e"),
                   "Read-only")  # fmt: skip
    one_line_error(run_cli("evaluate", "--checkpoint", run / "checkpoint.pt", "--data", store,
                           "--out", ro / "eval"), "Read-only")  # fmt: skip


def test_a_full_disk_is_a_one_line_error_and_leaves_nothing(store, full_disk):
    result = run_cli("data", "simulate", "--out", full_disk / "big.zarr", "--n-per-class", "40",
                     "--workers", "1")  # fmt: skip
    one_line_error(result, "No space left")
    assert list(full_disk.iterdir()) == []
    out = full_disk / "run"
    one_line_error(pretrain(store, out, "model.encoder.dim=64"), "No space left")
    assert not (out / "checkpoint.pt").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".checkpoint")]


# ---------------------------------------------------------------- workers and scripts


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(body))
    return path


@pytest.mark.parametrize("via_stdin", [False, True], ids=["file", "stdin"])
def test_dali_and_simulate_need_no_main_guard(store, tmp_path, via_stdin):
    script = _script(
        tmp_path,
        f"""
        from lensperf.config import load_config
        from lensperf.data import make_loader
        from lensperf.presets import preset
        from lensperf.simulate.config import SimulationConfig
        from lensperf.simulate.runner import simulate_classification

        loader = make_loader("{store}", "train", batch_size=4, backend="dali")
        batch = next(iter(loader))
        print("batch", tuple(batch["image"].shape))
        loader.close()
        config = load_config(SimulationConfig, preset("data", "model_ii"), ["n_per_class=2"])
        simulate_classification(config, "{tmp_path / "sim.zarr"}", workers=2)
        print("simulated")
    """,
    )
    args = [sys.executable, "-"] if via_stdin else [sys.executable, str(script)]
    result = subprocess.run(args, input=script.read_text() if via_stdin else None, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == ["batch (4, 1, 64, 64)", "simulated"]


def _children(pid: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return {int(x) for x in out.split()}


def _gone(pids: set[int], within: float = 15.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{p}").exists() for p in pids):
            return True
        time.sleep(0.2)
    return False


def test_dali_workers_die_with_a_killed_parent(store, tmp_path):
    script = _script(
        tmp_path,
        f"""
        import time
        from lensperf.data import make_loader
        loader = make_loader("{store}", "train", batch_size=4, backend="dali")
        next(iter(loader))
        print("ready", flush=True)
        time.sleep(300)
    """,
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "ready"
        workers = _children(parent.pid)
        assert workers
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    assert _gone(workers), "DALI workers outlived their killed parent"


def test_simulation_workers_die_with_a_killed_parent(tmp_path):
    parent = subprocess.Popen([sys.executable, "-m", "lensperf", "data", "simulate", "--out",
                               tmp_path / "s.zarr", "--n-per-class", "3000", "--workers", "2"],
                              cwd=ROOT)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while len(workers := _children(parent.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(workers) >= 2
        time.sleep(1)  # the workers are past their start-up
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    assert _gone(workers), "simulation workers outlived their killed parent"


def test_a_dali_data_error_gives_the_workers_message(copy_of):
    from lensperf.data import make_loader

    damaged = copy_of()
    chunk = sorted(p for p in (damaged / "train" / "images" / "c").rglob("*") if p.is_file())[0]
    chunk.write_bytes(chunk.read_bytes()[:-10] + b"0123456789")
    loader = make_loader(damaged, "train", batch_size=64, backend="dali", shuffle=False)
    with pytest.raises(DataError) as info:
        list(loader)
    message = str(info.value)
    assert "checksum does not match" in message and "raise" not in message, message


# ---------------------------------------------------------------- the importer


def _tree(root: Path, counts: dict, *, image=None) -> Path:
    for name, n in counts.items():
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(n):
            np.save(folder / f"{name}_{i}.npy", np.full((8, 8), 0.5) if image is None else image)
    return root


@pytest.mark.parametrize(
    "counts, extra, fragment",
    [
        ({"no_sub": 4, "cdm": 0, "axion": 4}, [], "holds no image files"),
        ({"no_sub": 6}, [], "one class only"),
        ({"no_sub": 4, "cdm": 4}, ["--val-fraction", "0"], "no validation"),
        ({"no_sub": 1, "cdm": 1, "axion": 1}, [], "no validation"),
        ({"no_sub": 4, "cdm": 4}, ["--kind", "sr"], "not a super-resolution tree"),
    ],
)
def test_the_importer_refuses_stores_the_trainer_cannot_use(tmp_path, counts, extra, fragment):
    src = _tree(tmp_path / "src", counts)
    out = tmp_path / "out.zarr"
    one_line_error(run_cli("data", "import", src, "--out", out, *extra), fragment)
    assert not out.exists()


@pytest.mark.parametrize(
    "content, fragment",
    [
        (np.array([np.full((8, 8), 0.5), float("nan")], dtype=object), "axion mass"),
        (np.full((8, 8), 0.5 + 0.1j), "complex"),
    ],
)
def test_bad_masses_and_complex_pixels_are_bad_files(tmp_path, content, fragment):
    src = _tree(tmp_path / "src", {"no_sub": 3, "axion": 3})
    np.save(src / "axion" / "axion_bad.npy", content, allow_pickle=True)
    one_line_error(run_cli("data", "import", src, "--out", tmp_path / "o.zarr"), fragment)
    result = run_cli("data", "import", src, "--out", tmp_path / "o.zarr", "--skip-bad")
    assert result.returncode == 0 and "skipped 1 bad file" in result.stdout


def test_an_empty_val_split_stops_training_before_it_starts(tmp_path):
    out = tmp_path / "noval.zarr"
    with StoreWriter(out, kind=CLASSIFICATION) as writer:
        writer.set_attrs(classes=["no_sub", "cdm", "axion"], image_size=64, source="test")
        for split, n in (("train", 8), ("val", 0)):
            writer.create(split, "images", (n, 1, 64, 64), "float32", 4)[:] = 0.5
            writer.create(split, "labels", (n,), "int64", 4)[:] = np.arange(n) % 3
            writer.create(split, "axion_mass", (n,), "float32", 4)[:] = np.nan
    run = tmp_path / "run"
    result = run_cli("finetune-cls", "--config", "demo", f"data.store={out}", f"out_dir={run}",
                     "pretrained=", "runtime.compile=false")  # fmt: skip
    one_line_error(result, "val split is empty")
    assert not run.exists()


def test_an_empty_simulator_config_is_the_nominal_preset(tmp_path):
    config = tmp_path / "sim.yaml"
    config.write_text("")
    result = run_cli("data", "simulate", "--config", config, "--out", tmp_path / "x.zarr",
                     "--n-per-class", "2", "--workers", "1")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize(
    "yaml_text, key",
    [
        ("instrument: {read_noise: null}\n", "instrument.background_rms"),
        ("lens: {z_lens: 3.0}\n", "lens.z_lens"),
        ("source: 5\n", "source"),
    ],
)
def test_partial_simulator_configs_are_one_line_errors(tmp_path, yaml_text, key):
    config = tmp_path / "sim.yaml"
    config.write_text(yaml_text)
    result = run_cli("data", "simulate", "--config", config, "--out", tmp_path / "x.zarr",
                     "--n-per-class", "2", "--workers", "1")  # fmt: skip
    one_line_error(result, key)
    assert not (tmp_path / "x.zarr").exists()
