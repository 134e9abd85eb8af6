"""The shared-memory ring of frame slots (bench/ring.py) and the benchmark's ring feed, on the
CPU with the tiny model: the same frames and scores as the DataLoader feed, errors that end
the run instead of hanging it, nothing left in /dev/shm."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest

from bench import gpu
from bench.ring import FrameRing, RingError, SlotWriter
from detection.engine import ModelSpec, load_model


def _shm() -> set[str]:
    return set(os.listdir("/dev/shm")) if Path("/dev/shm").is_dir() else set()


def _loaded(tiny_model):
    return load_model(ModelSpec(str(tiny_model.config), str(tiny_model.checkpoint), "cpu", "fp32"))


def _frames_of(ring: FrameRing, batch_size: int = 4) -> list[tuple[int, int, int]]:
    """(producer, tag, first pixel) of every frame the ring delivers."""
    rows = []
    for batch in ring.batches(batch_size, "cpu"):
        for producer, tag, frame in zip(batch.producers, batch.tags, batch.frames, strict=True):
            rows.append((int(producer), int(tag), int(frame[0, 0, 0])))
    return rows


@pytest.mark.parametrize("fit_on_device", [False, True], ids=["fit-in-decoders", "fit-on-device"])
def test_it_scores_the_same_frames_with_the_same_scores_as_the_dataloader(
    tiny_model, make_video, fit_on_device
):
    video = make_video("ring.avi", frames=21, fps=10.0, size=(320, 240), black=(4,))
    loaded = _loaded(tiny_model)
    runs = {
        feed: gpu.pipeline_run(
            loaded,
            video,
            10.0,
            decoders=2,
            batch_size=8,
            loops=2,
            feed=feed,
            fit_on_device=fit_on_device,
            ring_chunk=3,  # slots of 3 frames: batches cross slot and producer boundaries
            keep_scores=True,
        )
        for feed in ("dataloader", "ring")
    }
    dataloader, ring = runs["dataloader"], runs["ring"]
    # 2 decoders x 2 passes x 20 frames (the black one is skipped, as VideoReader does).
    assert dataloader["frames"] == ring["frames"] == 80
    assert ring["feed"] == "ring" and ring["transfer"] == "cpu copy"
    assert [row[:2] for row in ring["scores"]] == [row[:2] for row in dataloader["scores"]]
    assert {(p, t >> 32) for p, t, _ in ring["scores"]} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    # The same pixels; only the batches' make-up (float summation order) differs.
    diff = np.abs(np.array(ring["scores"])[:, 2] - np.array(dataloader["scores"])[:, 2])
    assert diff.max() < 1e-6


def test_it_hands_slots_back_so_a_small_ring_carries_every_frame_in_order():
    def produce(writer: SlotWriter) -> None:
        for i in range(50):
            writer.frame(tag=i)[:] = i  # written in place, into shared memory

    with FrameRing(slots=2, chunk=3, frame_shape=(4, 5, 3)) as ring:
        ring.start([produce, produce])
        rows = _frames_of(ring)
    assert sorted(rows) == [(p, i, i) for p in (0, 1) for i in range(50)]
    for p in (0, 1):  # each producer's frames arrive in the order it wrote them
        assert [tag for q, tag, _ in rows if q == p] == list(range(50))


@pytest.mark.timeout(20)
def test_it_ends_the_run_with_the_error_of_a_producer_that_raises():
    def fine(writer: SlotWriter) -> None:
        for i in range(1000):  # more than the ring holds: blocked until the consumer stops
            writer.write(np.zeros((4, 4, 3), np.uint8), i)

    def broken(writer: SlotWriter) -> None:
        writer.write(np.zeros((4, 4, 3), np.uint8), 0)
        raise ValueError("the camera caught fire")

    before = _shm()
    with pytest.raises(RingError, match=r"producer 1 failed: ValueError: the camera caught fire"):
        with FrameRing(slots=3, chunk=2, frame_shape=(4, 4, 3)) as ring:
            ring.start([fine, broken])
            _frames_of(ring)
    assert not [p for p in mp.active_children() if p.name.startswith("ring-producer")]
    assert _shm() <= before


@pytest.mark.timeout(20)
def test_it_notices_a_producer_that_dies_without_a_word():
    def dies(writer: SlotWriter) -> None:
        writer.write(np.ones((2, 2, 3), np.uint8), 0)
        os._exit(3)  # no error message, no "done": as if killed

    with pytest.raises(RingError, match=r"producer 0 died \(exit code 3\)"):
        with FrameRing(slots=2, chunk=4, frame_shape=(2, 2, 3), poll_s=0.1) as ring:
            ring.start([dies])
            _frames_of(ring)


@pytest.mark.timeout(20)
def test_it_ends_a_pipeline_run_with_its_decoders_error_and_leaves_no_shared_memory(
    tiny_model, tmp_path
):
    loaded = _loaded(tiny_model)
    before = _shm()
    missing = tmp_path / "gone.avi"
    with pytest.raises(RingError, match=r"ring producer \d failed: .*gone\.avi"):
        gpu.pipeline_run(loaded, missing, 10.0, decoders=2, batch_size=8, loops=1, feed="ring")
    assert not [p for p in mp.active_children() if p.name.startswith("ring-producer")]
    assert _shm() <= before  # the ring is an anonymous mapping: nothing was ever named there


def test_it_leaves_no_shared_memory_segments_behind_after_a_run(tiny_model, make_video):
    video = make_video("ring.avi", frames=12, fps=10.0)
    loaded = _loaded(tiny_model)
    before = _shm()
    run = gpu.pipeline_run(
        loaded, video, 10.0, decoders=2, batch_size=8, loops=1, feed="ring", fit_on_device=True
    )
    assert run["frames"] == 24
    assert _shm() <= before
    assert not [p for p in mp.active_children() if p.name.startswith("ring-producer")]
