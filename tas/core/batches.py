"""Where the training loop's batches come from: a small object beside the loop (`tas.core.loop`),
so that the loop itself stays forward, loss, backward, step.

- `DeviceBatches`: the data sit on the training device as two whole tensors and a batch is
  `X.index_select(0, idx)` of the epoch's order: no per-sample `__getitem__`, no collate. The
  fastest path, taken whenever the data fit (`fits_on_device`).
- `StreamedBatches`: the data stay in host memory, typically a memory map of the preprocessing
  cache's file, so a dataset larger than memory is paged in as it is read. A background reader
  thread gathers each batch of the epoch's order into a buffer (pinned when CUDA is available, so
  that the copy can be asynchronous), copies it to the device on a side stream, and hands it over
  one batch ahead of the step that needs it: reading and copying overlap the step's compute.

Both read the same order from the same step (the order is a pure function of (seed, epoch),
`tas.core.loop.epoch_order`) and a batch holds the same bytes either way, so the two paths train
to bit-identical weights, and both resume mid-epoch at the exact batch where a run stopped."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

#: (inputs, targets) of one training batch, on the training device, inputs still compact.
Batch = tuple[torch.Tensor, torch.Tensor]

#: Without an explicit budget, data are kept on a CUDA device when they take at most this share of
#: its free memory: the rest is the model's, its activations' and the optimizer's.
CUDA_DATA_SHARE = 0.5


def data_bytes(*tensors: torch.Tensor | None) -> int:
    """The bytes the given tensors take (None counts as nothing)."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def fits_on_device(nbytes: int, device: torch.device, budget_mb: int | None) -> bool:
    """Whether `nbytes` of training data should sit on `device` whole (else they are streamed).

    An explicit budget decides alone. Without one: a CUDA device takes data up to
    `CUDA_DATA_SHARE` of its free memory; the CPU (and any other device) always keeps them, the
    host memory being where they are anyway (a memory map pages them in and out as needed)."""
    if budget_mb is not None:
        return nbytes <= budget_mb << 20
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return nbytes <= free * CUDA_DATA_SHARE
    return True


class BatchSource(Protocol):
    """A training set's batches in the order of an epoch, from a given step on."""

    @property
    def order_device(self) -> torch.device:
        """Where the epoch's order tensor should be (where the batches are gathered)."""
        ...

    def epoch(
        self, order: torch.Tensor, start: int, steps: int
    ) -> contextlib.AbstractContextManager[Iterator[tuple[int, Batch]]]:
        """(step, batch) for steps `start` .. `steps` - 1; leaving the context releases whatever
        the source holds for the epoch (a reader thread), also when training stops mid-epoch."""
        ...


def _indices(order: torch.Tensor, batch_size: int, step: int) -> torch.Tensor:
    return order[step * batch_size : (step + 1) * batch_size]


@dataclass
class DeviceBatches:
    """Batches gathered from whole tensors already on the training device."""

    X: torch.Tensor
    y: torch.Tensor
    batch_size: int

    @property
    def order_device(self) -> torch.device:
        return self.X.device

    @contextlib.contextmanager
    def epoch(
        self, order: torch.Tensor, start: int, steps: int
    ) -> Iterator[Iterator[tuple[int, Batch]]]:
        def batches() -> Iterator[tuple[int, Batch]]:
            for step in range(start, steps):
                idx = _indices(order, self.batch_size, step)
                yield step, (self.X.index_select(0, idx), self.y.index_select(0, idx))

        yield batches()


class StreamedBatches:
    """Batches gathered from host tensors (a memory map) by a reader thread, one batch ahead."""

    def __init__(
        self, X: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device
    ) -> None:
        self.X, self.y, self.batch_size, self.device = X, y, batch_size, device
        self.cuda = device.type == "cuda" and torch.cuda.is_available()

    @property
    def order_device(self) -> torch.device:
        return torch.device("cpu")

    @contextlib.contextmanager
    def epoch(
        self, order: torch.Tensor, start: int, steps: int
    ) -> Iterator[Iterator[tuple[int, Batch]]]:
        reader = _Reader(self, order.cpu(), start, steps)
        try:
            yield iter(reader)
        finally:
            reader.close()


class _Reader:
    """One epoch's reader thread. It gathers batch k+1 (and copies it to the device) while the
    training thread computes on batch k; the hand-over queue holds one finished batch, so the
    reader is never more than a batch or two ahead and host memory holds two batches at most."""

    def __init__(self, src: StreamedBatches, order: torch.Tensor, start: int, steps: int) -> None:
        self.src, self.order, self.start, self.steps = src, order, start, steps
        self.ready: queue.Queue[Batch | BaseException] = queue.Queue(maxsize=1)
        self.stopping = threading.Event()
        self.copy_stream = torch.cuda.Stream(src.device) if src.cuda else None
        self.pinned: Batch | None = None
        self.thread = threading.Thread(target=self._run, name="tas-batch-reader", daemon=True)
        self.thread.start()

    def __iter__(self) -> Iterator[tuple[int, Batch]]:
        for step in range(self.start, self.steps):
            item = self.ready.get()
            if isinstance(item, BaseException):
                raise item
            if self.copy_stream is not None:
                # Allocated on the copy stream, used on the compute stream: the allocator must
                # not hand the memory back to the copy stream before the compute is done with it.
                current = torch.cuda.current_stream(self.src.device)
                for t in item:
                    t.record_stream(current)
            yield step, item

    def _run(self) -> None:
        try:
            for step in range(self.start, self.steps):
                if self.stopping.is_set():
                    return
                self._hand_over(self._load(_indices(self.order, self.src.batch_size, step)))
        except BaseException as exc:  # the training thread raises it at the batch it waits for
            self._hand_over(exc)

    def _load(self, idx: torch.Tensor) -> Batch:
        src = self.src
        if self.copy_stream is None:  # no CUDA: the gathered batch is the batch (CPU training)
            return src.X.index_select(0, idx).to(src.device), src.y.index_select(0, idx).to(
                src.device
            )
        if self.pinned is None:  # page-locked, so the copy to the device needs no staging
            bs = src.batch_size
            self.pinned = (
                torch.empty((bs, *src.X.shape[1:]), dtype=src.X.dtype, pin_memory=True),
                torch.empty((bs, *src.y.shape[1:]), dtype=src.y.dtype, pin_memory=True),
            )
        k = int(idx.shape[0])
        xh, yh = self.pinned[0][:k], self.pinned[1][:k]
        torch.index_select(src.X, 0, idx, out=xh)
        torch.index_select(src.y, 0, idx, out=yh)
        with torch.cuda.stream(self.copy_stream):
            xd = xh.to(src.device, non_blocking=True)
            yd = yh.to(src.device, non_blocking=True)
        # Waits for this copy only (the side stream), not for the training's kernels; after it
        # the pinned buffer may be refilled with the next batch.
        self.copy_stream.synchronize()
        return xd, yd

    def _hand_over(self, item: Batch | BaseException) -> None:
        while not self.stopping.is_set():
            try:
                self.ready.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Stop the thread (mid-epoch on a stop or an error) and wait for it."""
        self.stopping.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self.ready.get_nowait()
        self.thread.join()


def batch_source(
    X: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device, stream: bool
) -> BatchSource:
    """The source for a training set: streamed from where X and y are, or gathered on the device
    (where they must already be)."""
    if stream:
        return StreamedBatches(X, y, batch_size, device)
    return DeviceBatches(X, y, batch_size)
