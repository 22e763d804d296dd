"""The DALI backend: a parallel external source (a spawned worker that opens the store
lazily and builds batches ahead on `num_workers` threads) feeds a DALI graph.

On CUDA the graph moves the images to the GPU and applies the augmentation flags and the
standardisation there. A CPU-only pipeline (device_id=None) leaves them to the worker's
compiled gather instead (augment.py): DALI's CPU flip, transpose and arithmetic ran at 80k, 100k
and 104k images/s on 64x64 batches here (about 40k for all three). Flags come
from the plan, not DALI's RNG, so every backend gives the same samples and a resumed run
repeats an uninterrupted one exactly.

One worker process, not several: DALI hands batches to its workers in turn, so two workers
would each decode the chunks that neighbouring batches share; threads in one worker share
the chunk cache (see prefetch.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import numpy as np
import torch

from lensperf.data.augment import standardisation
from lensperf.data.loader import Loader, StoreBatches
from lensperf.data.prefetch import Key, Prefetcher
from lensperf.errors import DataError
from lensperf.processes import die_with_parent, spawning_without_main


class _Source:
    """DALI batch-mode callback: BatchInfo(iteration, epoch_idx) -> the plan's batch.

    `graph_ops`: the DALI graph applies augmentation and standardisation, so this hands over raw
    rows and the flags; otherwise this applies them itself and the flags are all zero."""

    def __init__(self, loader: Loader, start_epoch: int, start_batch: int, graph_ops: bool):
        self.plan = loader.plan
        self.batches = StoreBatches(
            loader.reader, loader.plan, augment=loader.augment and not graph_ops,
            standardise=None if graph_ops else loader.standardise,
        )  # fmt: skip
        self.graph_ops, self.graph_flags = graph_ops, loader.augment and graph_ops
        self.threads = loader.num_workers
        self.start_epoch, self.start_batch = start_epoch, start_batch
        self.outputs = list(loader.reader.layout.batch_names.values())
        self._prefetcher = None  # made in the worker process, on the first call
        self.parent_pid = os.getpid()

    def __getstate__(self):
        return {**self.__dict__, "_prefetcher": None}

    def __call__(self, info):
        epoch = self.start_epoch + info.epoch_idx
        batch = info.iteration + (self.start_batch if info.epoch_idx == 0 else 0)
        if batch >= len(self.plan):
            raise StopIteration
        if self._prefetcher is None:  # the first call, in the worker process
            die_with_parent(self.parent_pid)
            self._prefetcher = Prefetcher(self._columns, self.plan.next_key, threads=self.threads)
        return self._prefetcher.get((epoch, batch))

    def _columns(self, key: Key) -> tuple:
        rows = self.batches[key]
        columns = [rows[name] for name in self.outputs] + [rows["index"]]
        if self.graph_ops:  # the flags column exists only where the graph reads it
            n = len(rows["index"])
            if self.graph_flags:
                columns.append(self.plan.augment_flags(*key, n).astype(np.int32))
            else:
                columns.append(np.zeros((n, 3), np.int32))
        # Whole-batch arrays: DALI takes a dense (B, ...) array as a batch, far cheaper than
        # B per-sample arrays through shared memory.
        return tuple(np.ascontiguousarray(column) for column in columns)


class DaliLoader(Loader):
    backend = "dali"

    def __init__(
        self, reader, plan, *, num_workers: int = 2, prefetch: int = 2,
        graph_ops: bool | None = None, **kw,
    ):  # fmt: skip
        """graph_ops: augment and standardise in the DALI graph (default: on GPU pipelines only;
        tests set it to check the graph's operators on the CPU)."""
        super().__init__(reader, plan, **kw)
        self.num_workers = max(1, num_workers)  # threads in the one worker process
        self.graph_ops = graph_ops
        self.prefetch = prefetch
        self._pipe = None
        self._pipe_start = None  # (epoch, batch) the pipeline was built to start from

    def _build(self, epoch: int, start: int):
        from nvidia.dali import fn, pipeline_def

        on_gpu = self.device.type == "cuda"
        graph_ops = on_gpu if self.graph_ops is None else self.graph_ops
        source = _Source(self, epoch, start, graph_ops)
        layout = self.reader.layout
        image_outputs = [layout.batch_names[name] for name in layout.images]
        standardise = self.standardise
        shift, scale = standardisation(standardise)

        @pipeline_def(enable_conditionals=True)
        def pipeline():
            names = source.outputs + ["index"] + (["flags"] if graph_ops else [])
            layouts = ["CHW" if n in image_outputs else "" for n in names]
            columns = fn.external_source(
                source=source, num_outputs=len(layouts), batch=True, batch_info=True,
                parallel=True, layout=layouts,
            )  # fmt: skip
            named = dict(zip(names, columns))
            outputs = []
            for name in source.outputs:
                node = named[name]
                if name in image_outputs and graph_ops:
                    flip_h, flip_v, transpose = (named["flags"][i] for i in range(3))
                    node = node.gpu() if on_gpu else node
                    # (C, H, W): horizontal = W, vertical = H. LR and HR get the same flags.
                    node = fn.flip(node, horizontal=flip_h, vertical=flip_v)
                    if transpose:
                        node = fn.transpose(node, perm=[0, 2, 1], output_layout="CHW")
                    if standardise is not None:  # the same float32 ops as augment.gather
                        node = (node - float(shift)) * float(scale)
                outputs.append(node)
            return (*outputs, named["index"])

        pipe = pipeline(
            batch_size=self.plan.batch_size, num_threads=2,
            device_id=torch.cuda.current_device() if on_gpu else None,
            py_num_workers=1, py_start_method="spawn",
            prefetch_queue_depth=self.prefetch,
            exec_dynamic=True,  # _to_torch's zero-copy outputs depend on it
        )  # fmt: skip
        with spawning_without_main():  # a script without a __main__ guard works too
            pipe.start_py_workers()
            pipe.build()
        return pipe

    def _batches(self, epoch: int, start: int) -> Iterator[dict]:
        if start >= len(self):
            return
        if self._pipe is None or self._pipe_start != (epoch, start):
            self.close()
            self._pipe = self._build(epoch, start)
        names = [*self.reader.layout.batch_names.values(), "index"]
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
            raise DataError(
                f"data loading failed ({self.reader.path}): {worker_message(error)}"
            ) from None
        self._pipe.reset()
        self._pipe_start = (epoch + 1, 0)

    def close(self) -> None:
        if self._pipe is not None:
            del self._pipe
            self._pipe = None


def worker_message(error: Exception) -> str:
    """The worker's own message from DALI's wrapped error: the text after the last
    "DataError: " line of the worker's traceback (a traceback also quotes the source line that
    raised it, which is not the message), else the error's first line."""
    text = str(error).strip()
    found = re.findall(r"^(?:[\w.]+\.)?DataError: (.+)$", text, flags=re.MULTILINE)
    if found:
        return found[-1].strip()
    return (text.splitlines() or [type(error).__name__])[0]


def _to_torch(output) -> torch.Tensor:
    """A DALI batch as one torch tensor through DLPack, without a copy: the dynamic executor
    (exec_dynamic=True) keeps an output's buffer alive while anything refers to it, as DALI's
    own PyTorch iterator relies on. The copy this once made halved the CPU pipeline's rate."""
    return torch.from_dlpack(output.as_tensor())
