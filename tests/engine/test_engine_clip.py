"""Incident clips: H.264 MP4 a browser plays, written atomically, from frames or a file range."""

from __future__ import annotations

import av
import numpy as np
import pytest

from detection.engine.clip import ClipWriter, clip_size, read_range, write_file_clip
from detection.engine.errors import MediaError
from tests.support.media import scene


def probe(path):
    """(codec, pixel format, width, height, frames, duration s, first frame time) via PyAV."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        times = [frame.time for frame in container.decode(stream)]
        ctx = stream.codec_context
        return ctx.name, ctx.pix_fmt, ctx.width, ctx.height, len(times), container.duration / 1e6


def test_it_keeps_clips_at_most_640_wide_with_even_sides():
    assert clip_size(1280, 720) == (640, 360)
    assert clip_size(768, 576) == (640, 480)
    assert clip_size(321, 241) == (320, 240)
    assert clip_size(1920, 1081) == (640, 360)


def test_it_writes_an_h264_mp4_a_browser_plays_and_only_once_complete(tmp_path):
    path = tmp_path / "clips" / "incident-1.mp4"
    writer = ClipWriter(path, fps=5)
    base = scene(721, 1280, seed=2)
    for i in range(50):  # 10 s at 5 fps, 1280x721 in
        writer.add(np.roll(base, 8 * i, axis=1), i / 5)
        assert not path.exists()  # nothing under the final name while writing
    stats = writer.finish()
    assert path.exists() and not writer.partial.exists()
    codec, pix_fmt, width, height, frames, duration = probe(path)
    assert (codec, pix_fmt, width, height, frames) == ("h264", "yuv420p", 640, 360, 50)
    assert duration == pytest.approx(10.0, abs=0.5)
    assert stats.frames == 50 and stats.seconds == pytest.approx(10.0)
    assert stats.bytes == path.stat().st_size
    # +faststart: the index (moov) comes before the media data (mdat).
    head = path.read_bytes()[:4096]
    assert head.find(b"moov") != -1 and head.find(b"moov") < max(head.find(b"mdat"), 4096)


def test_it_keeps_the_real_spacing_of_irregular_frames_and_drops_out_of_order_ones(tmp_path):
    writer = ClipWriter(tmp_path / "c.mp4", fps=1)
    for t in (100.0, 101.1, 101.1, 100.5, 102.0, 104.0):
        writer.add(scene(120, 160, t=t), t)
    stats = writer.finish()
    assert stats.frames == 4
    with av.open(str(tmp_path / "c.mp4")) as container:
        times = [round(f.time, 2) for f in container.decode(video=0)]
    assert times == [0.0, 1.1, 2.0, 4.0]


def test_it_stops_taking_frames_at_the_cap(tmp_path):
    writer = ClipWriter(tmp_path / "c.mp4", fps=2, max_seconds=3)
    taken = [writer.add(scene(64, 64, t=i / 2), i / 2) for i in range(20)]
    assert taken == [True] * 7 + [False] * 13 and writer.full
    assert writer.finish().frames == 7


def test_it_leaves_no_file_without_frames_or_after_abort(tmp_path):
    empty = ClipWriter(tmp_path / "a.mp4", fps=5)
    assert empty.finish() is None and not (tmp_path / "a.mp4").exists()
    aborted = ClipWriter(tmp_path / "b.mp4", fps=5)
    aborted.add(scene(64, 64), 0.0)
    aborted.abort()
    assert list(tmp_path.iterdir()) == []


def test_it_cuts_a_range_from_a_file_with_its_own_times(make_video, tmp_path):
    source = make_video("long.avi", frames=300, fps=10.0)  # 30 s
    times = [t for t, _ in read_range(source, 12.0, 18.0, 5.0)]
    assert times[0] == pytest.approx(12.0) and times[-1] == pytest.approx(18.0)
    assert np.allclose(np.diff(times), 0.2)
    stats = write_file_clip(source, tmp_path / "c.mp4", 12.0 - 5, 18.0 + 5, sampling_fps=1.0)
    *_, frames, duration = probe(tmp_path / "c.mp4")
    assert frames == stats.frames == 81  # 7..23 s at 5 fps
    assert duration == pytest.approx(16.0, abs=0.5)


def test_it_clamps_the_range_to_the_file_and_never_exceeds_the_source_rate(make_video, tmp_path):
    source = make_video("short.avi", frames=40, fps=4.0)  # 10 s at 4 fps
    stats = write_file_clip(source, tmp_path / "c.mp4", -5.0, 15.0, sampling_fps=8.0)
    assert stats.frames == 40 and stats.seconds == pytest.approx(10.0)


def test_it_says_clearly_when_a_source_cannot_be_read(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(MediaError, match=r"bad\.mp4"):
        write_file_clip(bad, tmp_path / "c.mp4", 0, 10, 1.0)
    assert not (tmp_path / "c.mp4").exists() and not (tmp_path / "c.mp4.part").exists()
