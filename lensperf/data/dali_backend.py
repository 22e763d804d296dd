"""The DALI backend: a parallel external source (spawned workers, each opening the store
lazily) feeds a DALI graph that applies the augmentation flags and the normalisation.

On CUDA the graph runs on the GPU (images are moved there before augmentation); otherwise it is
a CPU-only pipeline (device_id=None). Flags come from the plan, not DALI's RNG, so both
backends give the same samples and a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from lensperf.data.loader import Loader, build_batch
from lensperf.errors import DataError


class _Source:
    """DALI batch-mode callback: BatchInfo(iteration, epoch_idx) -> the plan's batch."""

    def __init__(self, loader: Loader, start_epoch: int, start_batch: int):
        self.reader, self.plan = loader.reader, loader.plan
        self.augment = loader.augment
        self.start_epoch, self.start_batch = start_epoch, start_batch
        self.outputs = [n for n in ("image", "label", "lr", "hr") if n in _names(loader)]
        self._order_epoch, self._order = None, None

    def __call__(self, info):
        epoch = self.start_epoch + info.epoch_idx
        batch = info.iteration + (self.start_batch if info.epoch_idx == 0 else 0)
        if batch >= len(self.plan):
            raise StopIteration
        if self._order_epoch != epoch:
            self._order_epoch, self._order = epoch, self.plan.order(epoch)
        rows = build_batch(
            self.reader, self.plan, epoch, batch, augment=False, normalize=None, order=self._order
        )
        n = len(rows["index"])
        if self.augment:
            flags = self.plan.augment_flags(epoch, batch, n).astype(np.int32)
        else:
            flags = np.zeros((n, 3), np.int32)
        columns = [rows[name] for name in self.outputs] + [rows["index"], flags]
        # Whole-batch arrays: DALI takes a dense (B, ...) array as a batch, far cheaper than
        # B per-sample arrays through shared memory.
        return tuple(np.ascontiguousarray(column) for column in columns)


def _names(loader: Loader) -> list[str]:
    return ["image", "label"] if loader.reader.kind == "classification" else ["lr", "hr"]


class DaliLoader(Loader):
    backend = "dali"

    def __init__(self, reader, plan, *, num_workers: int = 2, prefetch: int = 2, **kw):
        super().__init__(reader, plan, **kw)
        self.num_workers = max(1, num_workers)
        self.prefetch = prefetch
        self._pipe = None
        self._pipe_start = None  # (epoch, batch) the pipeline was built to start from

    def _build(self, epoch: int, start: int):
        from nvidia.dali import fn, pipeline_def

        source = _Source(self, epoch, start)
        image_outputs = [n for n in source.outputs if n != "label"]
        on_gpu = self.device.type == "cuda"
        mean_std = self.normalize

        @pipeline_def(enable_conditionals=True)
        def pipeline():
            layouts = ["CHW" if n in image_outputs else "" for n in source.outputs] + ["", ""]
            columns = fn.external_source(
                source=source, num_outputs=len(layouts), batch=True, batch_info=True,
                parallel=True, layout=layouts,
            )  # fmt: skip
            named = dict(zip(source.outputs + ["index", "flags"], columns))
            flags = named["flags"]
            flip_h, flip_v, transpose = flags[0], flags[1], flags[2]
            outputs = []
            for name in source.outputs:
                node = named[name]
                if name in image_outputs:
                    node = node.gpu() if on_gpu else node
                    # (C, H, W): horizontal = W, vertical = H. LR and HR get the same flags.
                    node = fn.flip(node, horizontal=flip_h, vertical=flip_v)
                    if transpose:
                        node = fn.transpose(node, perm=[0, 2, 1], output_layout="CHW")
                    if mean_std is not None:
                        node = (node - mean_std[0]) / mean_std[1]
                outputs.append(node)
            return (*outputs, named["index"])

        pipe = pipeline(
            batch_size=self.plan.batch_size, num_threads=2,
            device_id=torch.cuda.current_device() if on_gpu else None,
            py_num_workers=self.num_workers, py_start_method="spawn",
            prefetch_queue_depth=self.prefetch, exec_dynamic=True,
        )  # fmt: skip
        pipe.build()
        return pipe

    def _batches(self, epoch: int, start: int) -> Iterator[dict]:
        if start >= len(self):
            return
        if self._pipe is None or self._pipe_start != (epoch, start):
            self.close()
            self._pipe = self._build(epoch, start)
        names = _Source(self, epoch, start).outputs + ["index"]
        try:
            while True:
                try:
                    outputs = self._pipe.run()
                except StopIteration:
                    break
                yield {name: _to_torch(out) for name, out in zip(names, outputs)}
        except Exception as error:  # DALI wraps worker errors in its own types
            if isinstance(error, DataError):
                raise
            self.close()
            lines = str(error).strip().splitlines() or [type(error).__name__]
            # The worker's own message (a DataError naming the damaged chunk) beats DALI's.
            detail = next((ln for ln in lines if "DataError" in ln or "damaged" in ln), lines[0])
            raise DataError(f"data loading failed ({self.reader.path}): {detail}") from None
        self._pipe.reset()
        self._pipe_start = (epoch + 1, 0)

    def close(self) -> None:
        if self._pipe is not None:
            del self._pipe
            self._pipe = None


def _to_torch(output) -> torch.Tensor:
    """A DALI batch as one torch tensor: through DLPack, copied once (DALI reuses its buffers)."""
    tensor = output.as_tensor()
    return torch.from_dlpack(tensor).clone()
