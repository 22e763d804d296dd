"""A wheel that works outside the tree, an import name of our own, no global state changed on
import, precision chosen by what the hardware does natively, and the notebook example."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from lensperf import runtime

from .conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(ROOT)], check=True, capture_output=True)  # fmt: skip
    return next(out.glob("lensperf-*.whl"))


def test_the_wheel_holds_the_presets_and_no_top_level_kernels(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert "kernels" not in tops and "lensperf_kernels" in tops
    assert "lensperf_kernels/attention.py" in names
    for section in ("data/model_ii", "pretrain/cpu", "finetune_cls/cnn", "finetune_sr/demo"):
        assert f"lensperf/configs/{section}.yaml" in names


def test_an_installed_wheel_works_from_any_directory(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(target)}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import lensperf, lensperf_kernels; from lensperf.presets import resolve_config; "
        "print(lensperf.__file__); print(lensperf_kernels.__file__); "
        "print(resolve_config('cpu', 'pretrain'))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env,
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert all(line.startswith(str(target)) for line in out), out
    for command in (["demo", "--help"], ["pretrain", "--config", "cpu", "--help"]):
        result = subprocess.run([sys.executable, "-m", "lensperf", *command], cwd=elsewhere,
                                env=env, capture_output=True, text=True)  # fmt: skip
        assert result.returncode == 0 and "usage" in result.stdout, result.stderr
    # --config cpu resolves to the packaged preset and loads
    code = (
        "from lensperf.config import load_config; from lensperf.presets import resolve_config; "
        "from lensperf.train.config import PretrainConfig; "
        "print(load_config(PretrainConfig, resolve_config('cpu', 'pretrain')).epochs)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env,
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0 and int(result.stdout) > 0, result.stderr


def test_importing_lensperf_changes_no_global_state():
    code = (
        "import matplotlib; matplotlib.use('svg'); import signal, torch; "
        "threads = torch.get_num_threads(); handler = signal.getsignal(signal.SIGTERM); "
        "import lensperf.api, lensperf.cli, lensperf.train.report, lensperf.bench.run; "
        "import matplotlib.pyplot; "
        "print(matplotlib.get_backend(), torch.get_num_threads() == threads, "
        "signal.getsignal(signal.SIGTERM) == handler)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.split() == ["svg", "True", "True"], out.stderr


@pytest.mark.parametrize(
    "device, capability, cpu_bf16, precision, expected",
    [
        ("cuda", (9, 0), False, "auto", torch.bfloat16),  # H100
        ("cuda", (8, 0), False, "auto", torch.bfloat16),  # A100
        ("cuda", (7, 5), False, "auto", torch.float16),  # T4: bf16 only emulated
        ("cuda", (7, 0), False, "auto", torch.float16),  # V100
        ("cpu", None, True, "auto", torch.bfloat16),  # AVX-512-BF16 / AMX
        ("cpu", None, False, "auto", None),  # AVX2: fp32
        ("cpu", None, False, "bf16", torch.bfloat16),  # asked for
        ("cuda", (7, 5), False, "fp16", torch.float16),
        ("cuda", (9, 0), False, "fp32", None),
    ],
)
def test_precision_follows_the_hardware(monkeypatch, device, capability, cpu_bf16, precision,
                                        expected):  # fmt: skip
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: cpu_bf16)
    assert runtime.autocast_dtype(precision, torch.device(device)) == expected


def test_fp16_skips_overflowed_steps_and_stops_only_when_they_persist(monkeypatch):
    """With loss scaling a non-finite gradient skips the update (the scaler's job); the guard
    stops training only after MAX_SKIPPED_STEPS of them in a row."""
    from lensperf.train import trainer as T
    from lensperf.train.config import PretrainConfig
    from lensperf.train.tasks import PretrainTask

    class Scaler:  # GradScaler's interface, on the CPU, without its CUDA checks
        def scale(self, loss):
            return loss

        def unscale_(self, optimizer):
            pass

        def step(self, optimizer):
            self.steps = getattr(self, "steps", 0) + 1

        def update(self):
            pass

    task = PretrainTask(PretrainConfig())
    trainer = T.Trainer(task.config, task)
    trainer.device, trainer.amp_dtype, trainer.ema = torch.device("cpu"), None, None
    trainer.model = torch.nn.Linear(2, 1)
    trainer.optimizer = torch.optim.SGD(trainer.model.parameters(), lr=0.1)
    trainer.scaler, trainer._skipped, trainer.step = Scaler(), 0, 0
    trainer.run_dir = Path("/nonexistent")
    monkeypatch.setattr(T, "MAX_SKIPPED_STEPS", 3)
    batch = {"x": torch.ones(4, 2)}
    overflow = {"on": True}

    def loss(model, batch):
        return model(batch["x"]).mean()

    monkeypatch.setattr(task, "loss", loss)
    # a finite loss whose gradient overflows, as an fp16 backward does under too large a scale
    trainer.model.weight.register_hook(lambda g: g * float("inf") if overflow["on"] else g)
    for _ in range(2):  # overflowed, skipped
        trainer._step(trainer.model, batch)
    assert trainer._skipped == 2
    overflow["on"] = False
    trainer._step(trainer.model, batch)
    assert trainer._skipped == 0
    overflow["on"] = True
    with pytest.raises(T.TrainingError, match="3 steps in a row"):
        for _ in range(3):
            trainer._step(trainer.model, batch)


def test_the_notebook_example_runs(tmp_path):
    env = {**os.environ, "LENSPERF_QUICKSTART_SCALE": "0.1", "LENSPERF_QUICKSTART_DIR":
           str(tmp_path), "MPLBACKEND": "Agg"}  # fmt: skip
    example = ROOT / "examples" / "quickstart.py"
    result = subprocess.run([sys.executable, str(example)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "accuracy" in result.stdout and "predicted:" in result.stdout
    assert (tmp_path / "cls" / "report" / "curves.png").exists()
