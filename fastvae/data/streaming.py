"""Batches streamed from a memory-mapped array larger than memory, prefetched by a background thread.

Pipeline, per batch (this rank's rows of ``(epoch, step)``, from :mod:`fastvae.data.schedule`):

1. a background thread takes a free host buffer (pinned when the target is CUDA), reads the
   batch's rows in ascending file order (sorted indices: the reads sweep the file forwards,
   runs of consecutive rows are one read) with a reader from :mod:`fastvae.data.gather`, and
   scatters them into the buffer in permutation order — so the batch is exactly the one
   :class:`DeviceResidentBatches` gives;
2. it queues the buffer; at most ``prefetch`` batches wait (host memory: ``prefetch + 1``
   buffers of ``M * D`` stored elements);
3. the consumer copies the buffer to the device (``non_blocking`` from pinned memory on
   CUDA; a CUDA event tells the thread when the buffer may be refilled, so the consumer never
   waits for the copy) and converts/binarises on the device.

Memory: with the default ``reader="auto"`` a memory-mapped file is read with ``os.preadv``
(``"pread"``): the page cache is never mapped into the process, so the resident set stays flat
at the buffers, whatever the file size. ``reader="mmap"`` gathers through the mapping (faster
from the page cache) and releases its pages every ``max_mapped_bytes``; see
:mod:`fastvae.data.gather` for the trade-off.

Trade-off chosen: a full random permutation with per-batch sorted gathers (not a shuffle of
contiguous chunks). Batches are exactly those of the resident path and statistically ideal;
each row is a separate random read, so throughput is that of random 1-row reads: fast from
the page cache or an SSD, slow from a spinning disk (chunk shuffling would fix that at the
cost of correlated batches and of the exact match).

Shutdown: :meth:`StreamingBatches.close` (or leaving a ``with`` block, or the object being
garbage-collected, or interpreter exit) sets a stop event, wakes the thread with a sentinel and
joins it. An exception in the thread is re-raised, with its type, by the consumer's next batch.

>>> import numpy as np
>>> data = np.arange(40, dtype=np.float32).reshape(10, 4)
>>> with StreamingBatches(data, "cpu", batch_size=5, seed=0) as batches:
...     shapes = [tuple(x.shape) for x in batches]
>>> shapes
[(5, 4), (5, 4)]
"""

from __future__ import annotations

import queue
import threading
import warnings
import weakref
from typing import NamedTuple

import numpy as np
import torch

from .arrays import torch_dtype
from .binarize import BinarizeMode
from .gather import FileRows, PreadGatherer, Reader, TakeGatherer, resolve_reader
from .schedule import EpochSchedule, epoch_permutation
from .source import BatchSource

#: Default bound on the mapped (resident) bytes of the source file between page releases.
DEFAULT_MAX_MAPPED_BYTES = 64 << 20
#: Seconds ``close()`` waits for the thread (it only ever finishes the batch it is gathering).
JOIN_TIMEOUT_S = 30.0
_POLL_S = 0.1


class _Ready(NamedTuple):
    epoch: int
    step: int
    slot: int
    rows: int


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_STOP = object()


def _produce(
    array: np.ndarray,
    schedule: EpochSchedule,
    seed: int,
    start: tuple[int, int],
    buffers: list[np.ndarray],
    free: queue.SimpleQueue,
    ready: queue.SimpleQueue,
    stop: threading.Event,
    file_rows: FileRows | None,
    max_mapped_bytes: int,
) -> None:
    """The prefetch thread: fill free buffers with the batches from ``start`` on, in order."""
    gatherer = None
    try:
        if file_rows is not None:
            gatherer = PreadGatherer(file_rows, schedule.batch_size)
        else:
            gatherer = TakeGatherer(array, max_mapped_bytes)
        epoch, step = start
        perm: np.ndarray | None = None
        perm_epoch = -1
        while not stop.is_set():
            item = free.get()
            if item is _STOP or stop.is_set():
                return
            slot, event = item
            if event is not None:
                event.synchronize()  # the previous copy out of this buffer has finished
            if perm_epoch != epoch:
                perm = epoch_permutation(schedule.num_examples, seed, epoch).numpy()
                perm_epoch = epoch
            assert perm is not None
            lo, hi = schedule.rows(step)
            index = perm[lo:hi]
            order = np.argsort(index, kind="stable")
            rows = gatherer.gather(index[order])  # ascending file offsets
            buffers[slot][: hi - lo][order] = rows  # back to permutation order (casts byte order/dtype)
            ready.put(_Ready(epoch, step, slot, hi - lo))
            epoch, step = schedule.advance(epoch, step)
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
        ready.put(_Failure(exc))
    finally:
        if gatherer is not None:
            gatherer.close()


def _shutdown(stop: threading.Event, free: queue.SimpleQueue, thread: threading.Thread) -> None:
    stop.set()
    free.put(_STOP)
    if thread is threading.current_thread() or not thread.is_alive():
        return
    thread.join(JOIN_TIMEOUT_S)
    if thread.is_alive():
        warnings.warn(f"fastvae: data prefetch thread {thread.name} did not stop within {JOIN_TIMEOUT_S:.0f} s", RuntimeWarning)


class _Prefetcher:
    """One run of the prefetch thread, from a start position; stopped by :meth:`close` or when collected."""

    def __init__(
        self,
        array: np.ndarray,
        schedule: EpochSchedule,
        seed: int,
        start: tuple[int, int],
        buffers: list[torch.Tensor],
        events: list[torch.cuda.Event] | None,
        file_rows: FileRows | None,
        max_mapped_bytes: int,
    ) -> None:
        self.ready: queue.SimpleQueue = queue.SimpleQueue()
        self.free: queue.SimpleQueue = queue.SimpleQueue()
        self.stop = threading.Event()
        for slot in range(len(buffers)):
            # A buffer may still be the source of a copy issued before a restart: wait for it.
            self.free.put((slot, events[slot] if events is not None else None))
        self.thread = threading.Thread(
            target=_produce,
            args=(
                array,
                schedule,
                seed,
                start,
                [b.numpy() for b in buffers],
                self.free,
                self.ready,
                self.stop,
                file_rows,
                max_mapped_bytes,
            ),
            name=f"fastvae-prefetch-rank{schedule.rank}",
            daemon=True,
        )
        self.thread.start()
        # Holds no reference to self: runs on close(), on garbage collection, or at exit.
        self._finalizer = weakref.finalize(self, _shutdown, self.stop, self.free, self.thread)

    def get(self) -> _Ready:
        """The next filled buffer; re-raises the thread's exception."""
        while True:
            try:
                item = self.ready.get(timeout=_POLL_S)
            except queue.Empty:
                if self.thread.is_alive():
                    continue
                try:
                    item = self.ready.get_nowait()
                except queue.Empty:
                    raise RuntimeError("fastvae: the data prefetch thread stopped unexpectedly") from None
            if isinstance(item, _Failure):
                raise item.exc
            return item

    def give_back(self, slot: int, event: torch.cuda.Event | None) -> None:
        self.free.put((slot, event))

    def close(self) -> bool:
        """Stop and join the thread; True when it has stopped."""
        self._finalizer()
        return not self.thread.is_alive()


class StreamingBatches(BatchSource):
    """Batches gathered from a (memory-mapped) array by a background thread; see the module docs.

    Same arguments as :class:`~fastvae.data.source.BatchSource` (``device`` cpu or cuda), plus:

    Args:
        prefetch: batches gathered ahead of the consumer (host buffers: ``prefetch + 1``).
        reader: ``"auto"`` (``"pread"`` for a memory-mapped file, else ``"mmap"``), ``"pread"`` or
            ``"mmap"``; see :mod:`fastvae.data.gather`.
        max_mapped_bytes: with ``reader="mmap"``, release the file's pages after the rows gathered
            may have mapped this much.
    """

    def __init__(
        self,
        array: np.ndarray,
        device: torch.device | str,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        *,
        divisor: float | None = None,
        binarize: BinarizeMode | str = "none",
        drop_last: bool = True,
        example_shape: tuple[int, ...] | None = None,
        prefetch: int = 3,
        reader: Reader | str = "auto",
        max_mapped_bytes: int = DEFAULT_MAX_MAPPED_BYTES,
    ) -> None:
        super().__init__(
            array, device, batch_size, seed, rank, world_size, divisor=divisor, binarize=binarize, drop_last=drop_last,
            example_shape=example_shape,
        )
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"StreamingBatches streams to cpu or cuda devices, not {self.device.type}")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
            raise ValueError(f"prefetch must be an int >= 1, got {prefetch!r}")
        self.prefetch = prefetch
        self.max_mapped_bytes = max(1, int(max_mapped_bytes))
        cuda = self.device.type == "cuda"
        self._buffers = self._new_buffers()
        self._events = [torch.cuda.Event() for _ in self._buffers] if cuda else None
        self.reader, self._file_rows = resolve_reader(self.array, reader)
        self._prefetcher: _Prefetcher | None = None
        self._expect: tuple[int, int] | None = None

    def _fetch(self, epoch: int, step: int) -> torch.Tensor:
        if self._prefetcher is None or self._expect != (epoch, step):
            self._stop_prefetch()
            self._prefetcher = _Prefetcher(
                self.array,
                self.schedule,
                self.seed,
                (epoch, step),
                self._buffers,
                self._events,
                self._file_rows,
                self.max_mapped_bytes,
            )
        try:
            ready = self._prefetcher.get()
        except BaseException:  # the thread failed, or the consumer was interrupted: stop cleanly
            self._stop_prefetch()
            raise
        if (ready.epoch, ready.step) != (epoch, step):  # cannot happen: the thread runs in order
            self._stop_prefetch()
            raise RuntimeError(f"fastvae: prefetch returned batch {(ready.epoch, ready.step)}, expected {(epoch, step)}")
        host = self._buffers[ready.slot][: ready.rows]
        event = None
        if self._events is not None:
            x = host.to(self.device, non_blocking=True)
            event = self._events[ready.slot]
            event.record(torch.cuda.current_stream(self.device))
        else:
            x = host.clone()
        self._prefetcher.give_back(ready.slot, event)
        self._expect = self.schedule.advance(epoch, step)
        return x

    def _new_buffers(self) -> list[torch.Tensor]:
        shape = (self.batch_size, self.num_features)
        dtype = torch_dtype(self.array.dtype)
        pin = self.device.type == "cuda"
        return [torch.empty(shape, dtype=dtype, pin_memory=pin) for _ in range(self.prefetch + 1)]

    def _stop_prefetch(self) -> None:
        if self._prefetcher is not None:
            if not self._prefetcher.close():  # a thread stuck in I/O may still write: never share its buffers
                self._buffers = self._new_buffers()
            self._prefetcher = None
            self._expect = None

    def close(self) -> None:
        """Stop and join the prefetch thread (iteration may continue later: it restarts)."""
        self._stop_prefetch()
