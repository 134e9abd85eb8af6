"""Decoding less (issue 16, item 1): sampled live sources convert, or decode, only the frames
they hand out, and keep the sources' contract (status, end, timeouts, reconnects).

Real clips made here (H.264 by PyAV's libx264, MJPG by OpenCV) played in real time, and the
local MJPEG server; nothing of OpenCV or PyAV is mocked.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from detection.api import analyze_stream
from detection.engine.capture import Sampler, keyframes_suffice
from detection.engine.schedule import Ticker
from detection.engine.sources import (
    Backoff,
    Frame,
    LiveSource,
    PacedFileSource,
    SourceError,
    SourceStatus,
    StreamSource,
)
from tests.support.media import frame_level, write_h264, write_video
from tests.support.sources import Recorder
from tests.support.streams import MJPEGServer, StalledServer
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

POLL = 0.01
FAST = Backoff(initial_s=0.05, cap_s=0.2, jitter=0.0, max_failures=3, max_opens=100, per_s=1.0)
FPS = 25


@pytest.fixture(scope="module")
def gop_clip(tmp_path_factory) -> Path:
    """4 s of 25 fps H.264, a keyframe every second (frames 0, 25, 50, 75)."""
    return write_h264(tmp_path_factory.mktemp("decode") / "gop1s.mp4", seconds=4.0, fps=FPS)


def paced(sources: list[LiveSource], path: Path, **options) -> PacedFileSource:
    source = PacedFileSource(path, **options)
    sources.append(source)
    return source


def take_every(
    source: LiveSource, interval: float, seconds: float, *, announce: bool = True
) -> list[tuple[float, Frame | None]]:
    """Ask `latest()` every `interval` s for `seconds`, as the worker does (its Ticker,
    telling the source when it asks next if `announce`); (age of the frame handed out, frame).
    """
    out: list[tuple[float, Frame | None]] = []
    start = time.monotonic()
    ticker = Ticker(interval, start + interval)
    if announce:
        source.will_take(ticker.next_due)
    while time.monotonic() - start < seconds:
        now = time.monotonic()
        if ticker.due(now):
            ticker.advance(now)
            if announce:
                source.will_take(ticker.next_due)
            frame = source.latest(0)
            age = now - (source._t0 + frame.time_s) if frame is not None else math.nan
            out.append((age, frame))
        time.sleep(0.002)
    return out


def is_frame(frame: Frame) -> bool:
    """Whether the image is the clip's frame at `frame.index` (write_h264's grey levels)."""
    median = float(np.median(frame.image))
    return abs(median - frame_level(frame.index)) <= 5 < abs(median - frame_level(frame.index + 1))


def test_it_converts_only_the_sampled_frames_when_grabbing(tmp_path, sources):
    clip = write_video(tmp_path / "camera.avi", frames=100, fps=FPS)  # MJPG, 4 s
    source = paced(sources, clip, sample_interval_s=0.5, decode="grab").start()
    taken = take_every(source, 0.5, 3.0)
    grabbed, sampled = source.frames_grabbed, source.frames_sampled
    assert source.decoding == "grab"
    assert grabbed >= 70  # every frame read, in real time ...
    assert sampled <= len(taken) + 2  # ... about one converted per ask
    frames = [f for _, f in taken if f is not None]
    assert len(frames) >= len(taken) - 1  # no ask went without a frame (the first may)
    # Announced asks get a frame converted just before: a frame period or two old.
    assert max(age for age, f in taken[1:] if f is not None) < 0.15


def test_it_hands_out_frames_no_older_than_the_interval_without_announced_asks(tmp_path, sources):
    clip = write_video(tmp_path / "camera.avi", frames=100, fps=FPS)
    source = paced(sources, clip, sample_interval_s=0.5, decode="grab").start()
    taken = take_every(source, 0.5, 3.0, announce=False)
    ages = [age for age, f in taken if f is not None]
    assert len(ages) >= len(taken) - 1
    assert max(ages) <= 0.5 + 2 / FPS
    assert source.frames_sampled <= 3.0 / 0.45 + 2


def test_it_decodes_only_the_keyframes_of_a_one_second_gop_and_ends_offline(gop_clip, sources):
    recorder = Recorder()
    source = paced(
        sources,
        gop_clip,
        loop=False,
        sample_interval_s=1.0,
        decode="keyframes",
        on_status=recorder,
    ).start()
    frames: list[Frame] = []
    while source.running:
        frame = source.latest(timeout=0.1)
        if frame is not None:
            frames.append(frame)
            assert source.status is SourceStatus.ONLINE
    last = source.latest(0)  # taken after the last wait, as the file ended
    frames += [last] if last is not None else []
    assert [f.index for f in frames] == [0, 25, 50, 75]  # the keyframes, and only them
    assert all(is_frame(f) for f in frames)
    assert source.decoding == "keyframes"
    assert source.frames_grabbed == 100 and source.frames_sampled == 4
    # The file ended: offline without an error (a file that never decoded would be failed).
    assert recorder.statuses == [SourceStatus.ONLINE, SourceStatus.OFFLINE]
    assert source.last_error == "" and not source.running


def test_it_keeps_keyframes_of_a_clip_with_b_frames_in_step(tmp_path, sources):
    # A reordering decoder would hand each keyframe out only once the next one came.
    clip = write_h264(tmp_path / "bframes.mp4", seconds=3.0, fps=FPS, bframes=2)
    source = paced(sources, clip, loop=False, sample_interval_s=1.0, decode="keyframes").start()
    first = source.latest(timeout=2.0)
    assert first is not None and first.index == 0 and is_frame(first)
    second = source.latest(timeout=1.5)
    assert second is not None and second.index == 25 and is_frame(second)
    assert second.time_s - first.time_s < 1.2  # within a frame or so of its own time


def test_it_picks_keyframes_when_the_interval_spans_the_gop_and_grabs_otherwise(gop_clip, sources):
    sparse = paced(sources, gop_clip, sample_interval_s=1.0, decode="auto").start()
    dense = paced(sources, gop_clip, sample_interval_s=0.4, decode="auto").start()
    wait_until(lambda: sparse.frames_grabbed > 60, 5.0, "three keyframes read", every=POLL)
    assert sparse.decoding == "keyframes"  # a 1 s GOP serves 1 s samples
    assert dense.decoding == "grab"  # but not 0.4 s ones: every frame decoded
    later = [dense.latest(timeout=1.0) for _ in range(4)]
    assert all(f is not None and is_frame(f) for f in later)
    assert any(f.index % 25 for f in later if f is not None)  # frames between keyframes


def test_it_switches_to_every_frame_when_a_watcher_shortens_the_interval(gop_clip, sources):
    source = paced(sources, gop_clip, sample_interval_s=1.0, decode="auto").start()
    wait_until(lambda: source.decoding == "keyframes", 5.0, "keyframes only", every=POLL)
    source.sample_interval_s = 0.25  # the live picture is watched: 4 a second
    wait_until(lambda: source.decoding == "grab", 2.0, "every frame again", every=POLL)
    sampled = source.frames_sampled
    time.sleep(1.0)
    assert source.frames_sampled - sampled >= 3
    frame = source.latest(timeout=0.5)
    assert frame is not None and is_frame(frame)


def test_it_reads_every_frame_without_an_interval_or_in_mode_all(gop_clip, sources):
    plain = paced(sources, gop_clip).start()
    full = paced(sources, gop_clip, sample_interval_s=1.0, decode="all").start()
    wait_until(lambda: full.frames_grabbed >= 30, 5.0, "30 frames", every=POLL)
    for source in (plain, full):
        assert source.decoding == "all"
        assert source.frames_sampled >= source.frames_grabbed - 1


def test_it_samples_an_mjpeg_stream_decoding_only_what_it_hands_out(sources):
    with MJPEGServer(fps=25) as server:
        options = {"open_timeout_s": 1.0, "read_timeout_s": 0.5, "backoff": FAST}
        source = StreamSource(server.url, sample_interval_s=0.2, **options)
        sources.append(source)
        source.start()
        assert source.latest(timeout=3.0) is not None
        # Every JPEG is a keyframe: the GOP is one frame, so only due frames are decoded.
        wait_until(lambda: source.decoding == "keyframes", 2.0, "keyframes only", every=POLL)
        time.sleep(1.0)
        assert source.frames_sampled <= source.frames_grabbed / 3
        # The contract holds on this path too: a dropped stream reconnects.
        server.stop()
        wait_until(lambda: source.status is not SourceStatus.ONLINE, 3.0, "drop", every=POLL)
        assert "ended or the connection dropped" in source.last_error
        server.start()
        wait_until(lambda: source.reconnects == 1, 5.0, "back online", every=POLL)
        assert source.status is SourceStatus.ONLINE and source.last_error == ""


def test_it_times_out_opening_and_reading_a_sampled_stream(sources):
    options = {"backoff": FAST, "sample_interval_s": 1.0}
    with StalledServer() as silent:
        never = StreamSource(silent.url, open_timeout_s=0.3, read_timeout_s=0.3, **options)
        sources.append(never)
        never.start()
        wait_until(lambda: never.last_error, 3.0, "an open timeout", every=POLL)
        assert "no answer within 0.3 s" in never.last_error
    with MJPEGServer(fps=50, stall_after=30) as stalling:
        stalled = StreamSource(stalling.url, open_timeout_s=1.0, read_timeout_s=0.3, **options)
        sources.append(stalled)
        stalled.start()
        assert stalled.latest(timeout=3.0) is not None
        started = time.monotonic()
        wait_until(lambda: stalled.status is not SourceStatus.ONLINE, 3.0, "stall", every=POLL)
        assert time.monotonic() - started < 1.5
        assert "no frame within 0.3 s" in stalled.last_error


def test_it_fails_a_file_that_never_decodes_on_the_keyframe_path(tmp_path, sources):
    clip = tmp_path / "broken.mp4"
    clip.write_bytes(write_h264(tmp_path / "good.mp4", seconds=1.0).read_bytes()[:2000])
    source = paced(sources, clip, sample_interval_s=1.0, decode="keyframes").start()
    wait_until(lambda: not source.running, 5.0, "the end", every=POLL)
    assert source.status is SourceStatus.FAILED and source.last_error


def test_it_refuses_an_unknown_decode_mode_and_a_bad_interval(gop_clip):
    with pytest.raises(SourceError, match="expected one of auto, all, grab, keyframes"):
        PacedFileSource(gop_clip, decode="often")
    with pytest.raises(SourceError, match="positive number of seconds"):
        PacedFileSource(gop_clip, sample_interval_s=0)


def test_it_samples_just_before_an_announced_ask_and_otherwise_every_interval():
    sampler = Sampler(1.0)
    sampler.cadence_s = 0.04
    assert sampler.due(0.0)  # the first frame at once
    sampler.sampled(0.0)
    assert not sampler.due(0.9) and sampler.due(0.96)  # an interval, less one frame
    sampler.take_at = 1.5  # the consumer asks at 1.5: sample within a lead before it
    assert not sampler.due(1.3) and sampler.due(1.5 - sampler.lead())
    sampler.sampled(1.44)
    assert sampler.take_at is None
    sampler.take_at = 5.0  # far off (a watcher made the interval short): the fallback first
    assert sampler.due(1.44 + 0.97)


def test_it_counts_a_gop_as_short_enough_within_rounding():
    assert keyframes_suffice(1.001, 1.0)  # 30 frames at 29.97 fps
    assert not keyframes_suffice(1.2, 1.0)
    assert not keyframes_suffice(None, 1.0) and not keyframes_suffice(0.5, None)


@pytest.mark.usefixtures("tiny_settings")
def test_it_decodes_only_the_keyframes_analyze_stream_samples(gop_clip, sources):
    # A source given no sampling interval of its own takes analyze_stream's rate: at one
    # score a second, a 1 s GOP's keyframes are all it decodes.
    source = paced(sources, gop_clip)
    items = list(analyze_stream(source, ["a quiet street"], ["a fire"], 1.0, max_frames=2))
    assert [item["status"] for item in items] == ["Success", "Success"]
    assert source.sample_interval_s == 1.0 and source.decoding == "keyframes"
    assert source.frames_sampled <= 3 < source.frames_grabbed
