"""A run's logs: `log.jsonl` (one JSON line per logged step and per evaluation) and, where the
`tensorboard` package is installed, TensorBoard event files in `tensorboard/` beside it with the
same scalars, the learning rate, images/s and, at the end, the report's figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lensperf.atomic import write_text_atomic
from lensperf.errors import ConfigError

POSITION = ("step", "epoch", "images")


def tensorboard_writer(run_dir: Path, mode: str, start_step: int):
    """A SummaryWriter, or None. mode "auto": when tensorboard is installed; "on": required.
    A resumed run drops the events after its checkpoint's step, as log.jsonl does."""
    if mode == "off":
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if mode == "on":
            raise ConfigError(
                "runtime.tensorboard", "needs the tensorboard package (pip install tensorboard)"
            ) from None
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start_step or None)


class RunLog:
    def __init__(self, run_dir: Path, tensorboard: str = "auto", start_step: int = 0):
        self.path = run_dir / "log.jsonl"
        self.board = tensorboard_writer(run_dir, tensorboard, start_step)

    def train(self, record: dict) -> None:
        self._append(record)
        self._scalars("train", record)

    def eval(self, record: dict) -> None:
        self._append({"eval": record})
        self._scalars("eval", record)

    def _append(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def _scalars(self, prefix: str, record: dict) -> None:
        if self.board is None:
            return
        for key, value in record.items():
            if key not in POSITION and isinstance(value, int | float):
                self.board.add_scalar(f"{prefix}/{key}", value, record["step"])
        self.board.flush()

    def figures(self, report_dir: Path, step: int) -> None:
        """The report's PNG figures as TensorBoard images."""
        if self.board is None:
            return
        from PIL import Image

        for png in sorted(report_dir.glob("*.png")):
            image = np.asarray(Image.open(png).convert("RGB"))
            self.board.add_image(f"report/{png.stem}", image, step, dataformats="HWC")
        self.board.flush()

    def close(self) -> None:
        if self.board is not None:
            self.board.close()


def truncate_log(path: Path, step: int) -> None:
    """Keep the log's records up to `step` (a resumed run repeats the steps after its last
    checkpoint; their first records must go), replacing the file atomically."""
    if not path.exists():
        return

    def step_of(line: str) -> int:
        record = json.loads(line)
        return record.get("eval", record)["step"]

    kept = [line for line in path.read_text().splitlines() if line and step_of(line) <= step]
    write_text_atomic(path, "".join(f"{line}\n" for line in kept))
