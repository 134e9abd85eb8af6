"""A ring of frame slots in shared memory: producer processes write frames, one consumer batches.

On a GPU the CPU side is the limit (docs/performance.md, "GPU"): a DataLoader makes a new
shared-memory tensor for every batch (allocate, fill, pickle a handle, map it again in the
main process, pin it by copying). Here the memory is allocated once: `slots` slots, each
holding `chunk` frames of one shape, that the producers write into directly
(a decoder resizes straight into a slot). Only small tuples cross the queues: a free slot's
index one way, a filled slot's index and frame count the other. The consumer gathers ready
slots into a batch, on a GPU without waiting (`non_blocking`), and hands the slots back.

The ring is an anonymous shared mapping (`mmap(-1, n)`), which forked children inherit:
nothing is named in /dev/shm, so nothing can be left behind there, even when a process is
killed, and /dev/shm's size (64 MiB in a default container) does not limit it. Producers
must therefore be started with fork, which is also why they may be closures. They must not
use CUDA (a forked child cannot); they only need numpy views of the ring.

A producer that raises ends the run with `RingError` naming it and its error; one that dies
without a word (killed, `os._exit`) is noticed within two polls, so the consumer never waits
forever. Leaving the ring (`with`, or `close()`) stops every producer still running.

Django-free, so the worker could feed its batches the same way later.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import multiprocessing as mp
import os
import queue
import signal
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bench.processes import stop

log = logging.getLogger(__name__)

# What a producer puts with each frame (an int64 of its choosing: a frame index, say).
Tag = int


class RingError(RuntimeError):
    """A producer failed or died; `details` holds its traceback when it sent one."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


@dataclass(frozen=True)
class Batch:
    """Frames gathered from ready slots, with who produced each and the tag it gave."""

    frames: torch.Tensor  # (N, H, W, C) uint8 on the consumer's device
    producers: torch.Tensor  # (N,) int64, on the CPU
    tags: torch.Tensor  # (N,) int64, on the CPU

    def __len__(self) -> int:
        return len(self.tags)


class SlotWriter:
    """A producer's end of the ring: `frame(tag)` gives the array to write the next frame into.

    Slots are taken from the free queue one at a time (blocking while the consumer is behind:
    that is the back-pressure) and handed over when full, or by `flush()` when partly full.
    """

    def __init__(self, ring: FrameRing, producer: int) -> None:
        self._ring, self.producer = ring, producer
        self._slot: int | None = None
        self._count = 0

    def frame(self, tag: Tag) -> np.ndarray:
        """A writable (H, W, C) uint8 view of shared memory for the next frame."""
        ring = self._ring
        if self._slot is not None and self._count == ring.chunk:
            self._publish()  # the previous frame filled the slot: it was written by now
        if self._slot is None:
            self._slot, self._count = self._take(), 0
        index = self._count
        self._count += 1
        ring._tags_np[self._slot, index] = tag
        return ring._frames_np[self._slot, index]

    def write(self, image: np.ndarray, tag: Tag) -> None:
        """Copy a whole frame in (when it cannot be produced in place)."""
        np.copyto(self.frame(tag), image)

    def flush(self) -> None:
        """Hand over a partly filled slot (at the end of the producer's frames)."""
        if self._slot is not None and self._count:
            self._publish()

    def _take(self) -> int:
        """A free slot; waits for the consumer, but not for one that died (killed, say)."""
        while True:
            try:
                return self._ring._free.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != self._ring._consumer_pid:
                    os._exit(1)  # orphaned: nobody will read what this process writes

    def _publish(self) -> None:
        self._ring._ready.put(("chunk", self.producer, self._slot, self._count))
        self._slot, self._count = None, 0


Producer = Callable[[SlotWriter], None]


def _run_producer(ring: FrameRing, index: int, producer: Producer) -> None:
    """The body of a producer process: its errors go to the consumer, not to stderr only."""
    # The parent may have set handlers (pytest's, Django's); a terminate() must end a child.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the consumer's to handle
    try:
        writer = SlotWriter(ring, index)
        producer(writer)
        writer.flush()
    except BaseException as exc:  # noqa: BLE001 - reported to the consumer, then exit 1
        ring._ready.put(("error", index, f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        ring._ready.close()
        ring._ready.join_thread()  # the message is in the pipe before this process ends
        os._exit(1)
    ring._ready.put(("done", index))
    ring._ready.close()
    ring._ready.join_thread()


class FrameRing:
    """`slots` slots of `chunk` uint8 frames of `frame_shape` (H, W, C) in shared memory.

    Usage (the producers run in forked processes)::

        with FrameRing(slots=24, chunk=32, frame_shape=(224, 224, 3)) as ring:
            ring.start([produce] * 4)
            for batch in ring.batches(256, "cuda"):
                ...

    Frames arrive in slot order per producer, interleaved across producers.
    """

    def __init__(
        self, slots: int, chunk: int, frame_shape: Sequence[int], *, poll_s: float = 0.5
    ) -> None:
        if slots < 1 or chunk < 1:
            raise ValueError(f"a ring needs at least one slot of one frame, not {slots}x{chunk}")
        self.slots, self.chunk = slots, chunk
        self.frame_shape = tuple(int(x) for x in frame_shape)
        self.poll_s = poll_s
        frame_bytes = int(np.prod(self.frame_shape))
        # Anonymous and shared: inherited by forked children, named nowhere (see the module).
        self._buffer = mmap.mmap(-1, slots * chunk * frame_bytes)
        self._tag_buffer = mmap.mmap(-1, slots * chunk * 8)
        self._frames_np = np.frombuffer(self._buffer, dtype=np.uint8).reshape(
            slots, chunk, *self.frame_shape
        )
        self._tags_np = np.frombuffer(self._tag_buffer, dtype=np.int64).reshape(slots, chunk)
        self.frames = torch.from_numpy(self._frames_np)  # the same memory, for the consumer
        self._ctx = mp.get_context("fork")
        self._free: Any = self._ctx.Queue()
        self._ready: Any = self._ctx.Queue()
        for slot in range(slots):
            self._free.put(slot)
        self._processes: list[Any] = []
        self._consumer_pid = os.getpid()
        self._registered = False
        self._in_flight: list[tuple[Any, list[int]]] = []  # (CUDA event, slots) being copied
        self._staging: list[torch.Tensor] = []
        self._staging_events: list[Any] = []
        self._copy_stream: Any = None
        self.transfer = "none"  # how batches reach the device, for the report

    @property
    def nbytes(self) -> int:
        return len(self._buffer)

    # --- producers ---------------------------------------------------------------------

    def start(self, producers: Sequence[Producer]) -> None:
        """Fork one process per producer; producer i's frames carry producer index i."""
        if self._processes:
            raise RuntimeError("this ring's producers were started already")
        for index, producer in enumerate(producers):
            process = self._ctx.Process(
                target=_run_producer,
                args=(self, index, producer),
                name=f"ring-producer-{index}",
                daemon=True,  # never outlive the consumer
            )
            process.start()
            self._processes.append(process)

    def chunks(self) -> Iterator[tuple[int, int, int]]:
        """(producer, slot, count) for each filled slot, until every producer has finished.

        Raises `RingError` when a producer reports an error or exits without finishing.
        """
        running = set(range(len(self._processes)))
        suspects: set[int] = set()
        while running:
            try:
                message = self._ready.get(timeout=self._poll_timeout())
            except queue.Empty:
                self._reap()
                # Dead at two empty polls in a row: whatever it sent would have arrived.
                dead = {i for i in running if self._processes[i].exitcode is not None}
                for i in sorted(dead & suspects):
                    code = self._processes[i].exitcode
                    how = f"signal {-code}" if code < 0 else f"exit code {code}"
                    raise RingError(f"ring producer {i} died ({how}) before finishing") from None
                suspects = dead
                continue
            kind, producer = message[0], message[1]
            if kind == "chunk":
                yield producer, message[2], message[3]
            elif kind == "done":
                running.discard(producer)
            else:
                raise RingError(f"ring producer {producer} failed: {message[2]}", message[3])

    def release(self, slots: Sequence[int]) -> None:
        """Give slots back to the producers."""
        for slot in slots:
            self._free.put(slot)

    # --- batches -----------------------------------------------------------------------

    def batches(
        self, batch_size: int, device: str | torch.device = "cpu", *, pin: str = "register"
    ) -> Iterator[Batch]:
        """Batches of at least `batch_size` frames (fewer at the end), on `device`.

        On a CUDA device, `pin="register"` page-locks the ring itself (cudaHostRegister) so
        each slot is copied to the device by DMA without waiting, and goes back to the
        producers once its copy is done; the CPU copies nothing. If registering fails, or
        with `pin="stage"`, slots are gathered into one of two pinned staging buffers (the
        other may still be copying) and released at once. On the CPU a batch is a copy.
        """
        if pin not in ("register", "stage"):
            raise ValueError(f"pin must be 'register' or 'stage', not {pin!r}")
        device = torch.device(device)
        cuda = device.type == "cuda"
        if cuda and pin == "register" and not self._registered:
            self._register()
        if cuda:
            self.transfer = "registered ring" if self._registered else "pinned staging"
        else:
            self.transfer = "cpu copy"
        pending: list[tuple[int, int, int]] = []
        frames = 0
        for producer, slot, count in self.chunks():
            pending.append((producer, slot, count))
            frames += count
            if frames >= batch_size:
                yield self._gather(pending, frames, device)
                pending, frames = [], 0
        if pending:
            yield self._gather(pending, frames, device)
        self._reap(wait=True)

    def _gather(self, chunks: list[tuple[int, int, int]], n: int, device: torch.device) -> Batch:
        producers = torch.cat([torch.full((c,), p, dtype=torch.int64) for p, _, c in chunks])
        tags = torch.cat([torch.from_numpy(self._tags_np[s, :c].copy()) for _, s, c in chunks])
        views = [self.frames[s, :c] for _, s, c in chunks]
        slots = [s for _, s, _ in chunks]
        if device.type != "cuda":
            frames = torch.cat(views)
            self.release(slots)
            return Batch(frames.to(device), producers, tags)
        if not self._registered:
            staging = self._staging_buffer(n)
            torch.cat(views, out=staging[:n])  # the one CPU copy of this path
            self.release(slots)
            views = [staging[:n]]
        # Copies run on their own stream: they need not wait behind the previous batch's
        # encoder, so registered slots go back to the producers sooner.
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(device)
        compute = torch.cuda.current_stream(device)
        event = torch.cuda.Event()
        with torch.cuda.stream(self._copy_stream):
            # Allocated on the copy stream: a block the encoder may still be reading is not
            # handed out here; `record_stream` keeps it from being reused while in use there.
            frames = torch.empty((n, *self.frame_shape), dtype=torch.uint8, device=device)
            offset = 0
            for view in views:
                frames[offset : offset + len(view)].copy_(view, non_blocking=True)
                offset += len(view)
            event.record(self._copy_stream)
        frames.record_stream(compute)
        compute.wait_event(event)  # what runs on the batch waits for its copy, on the GPU
        if self._registered:
            self._in_flight.append((event, slots))
            self._reap()
        else:
            self._staging_events[0] = event
            # Alternate the buffers: the next gather fills the other while this one copies.
            self._staging.reverse()
            self._staging_events.reverse()
        return Batch(frames, producers, tags)

    def _staging_buffer(self, n: int) -> torch.Tensor:
        if not self._staging or len(self._staging[0]) < n:
            rows = max(n, self.chunk * 2)
            self._staging = [
                torch.empty((rows, *self.frame_shape), dtype=torch.uint8).pin_memory()
                for _ in range(2)
            ]
            self._staging_events = [None, None]
        event = self._staging_events[0]
        if event is not None:
            event.synchronize()  # this buffer's previous copy to the device is done
        return self._staging[0]

    def _register(self) -> None:
        """Page-lock the ring for DMA; on failure (some sandboxes refuse) staging is used."""
        try:
            cudart = torch.cuda.cudart()
            err = cudart.cudaHostRegister(self.frames.data_ptr(), self.nbytes, 0)
            self._registered = int(err) == 0
            if not self._registered:
                log.warning("cudaHostRegister failed (%s): pinned staging instead", err)
        except (RuntimeError, AttributeError) as exc:
            log.warning("cudaHostRegister unavailable (%s): pinned staging instead", exc)

    def _poll_timeout(self) -> float:
        # With copies in flight, come back soon to return their slots to the producers.
        return 0.005 if self._in_flight else self.poll_s

    def _reap(self, wait: bool = False) -> None:
        """Release the slots whose copies to the device have finished."""
        still: list[tuple[Any, list[int]]] = []
        for event, slots in self._in_flight:
            if wait:
                event.synchronize()
            if wait or event.query():
                self.release(slots)
            else:
                still.append((event, slots))
        self._in_flight = still

    # --- shutdown ----------------------------------------------------------------------

    def close(self) -> None:
        """Stop the producers still running and free the ring. Idempotent."""
        # SIGTERM ends a producer (`_run_producer` restores its default); SIGKILL after 5 s.
        stop(self._processes, timeout=5, kill_timeout=5)
        with contextlib.suppress(Exception):
            self._reap(wait=True)
        for q in (self._free, self._ready):
            q.cancel_join_thread()  # never block on a pipe whose reader is gone
            q.close()
        if self._registered:
            with contextlib.suppress(Exception):
                torch.cuda.synchronize()
                torch.cuda.cudart().cudaHostUnregister(self.frames.data_ptr())
            self._registered = False
        # The mapping is unmapped when the last view of it is gone (numpy/torch hold views).
        self._processes = []

    def __enter__(self) -> FrameRing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
