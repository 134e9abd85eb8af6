from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from detection.engine import MediaError, VideoReader
from detection.engine.media import container_kind
from tests.support.media import CONTAINERS, scene


def sampled(path, fps, **kw):
    with VideoReader(path) as reader:
        frames = list(reader.frames(fps, **kw))
        return frames, reader.stats


@pytest.mark.parametrize("ext", sorted(CONTAINERS))
def test_it_reads_every_container_this_machine_writes(make_video, ext):
    path = make_video(f"clip.{ext}", frames=30, fps=10.0)
    frames, stats = sampled(path, 1.0)
    assert [f.index for f in frames] == [0, 10, 20]
    assert [f.time_s for f in frames] == [0.0, 1.0, 2.0]
    assert stats.frames_decoded == 30
    assert stats.total_seconds == pytest.approx(3.0)
    assert stats.fps == pytest.approx(10.0) and stats.fps_source == "header"
    assert frames[0].image.shape == (240, 320, 3)
    assert not stats.header_mismatch and not stats.ended_early and stats.warnings == []


def test_it_samples_non_integer_rates_without_drift(make_video):
    path = make_video("ntsc.avi", frames=100, fps=29.97)
    frames, _ = sampled(path, 1.0)
    assert [f.index for f in frames] == [0, 30, 60, 90]
    assert frames[3].time_s == pytest.approx(90 / 29.97)


def test_it_scores_every_frame_when_sampling_faster_than_the_video(make_video):
    frames, _ = sampled(make_video("slow.avi", frames=7, fps=5.0), 30.0)
    assert [f.index for f in frames] == list(range(7))


def test_it_samples_fractional_rates(make_video):
    frames, _ = sampled(make_video("long.avi", frames=45, fps=10.0), 0.5)
    assert [f.index for f in frames] == [0, 20, 40]


def test_it_resumes_after_a_given_frame(make_video):
    path = make_video("resume.avi", frames=50, fps=10.0)
    frames, stats = sampled(path, 1.0, start_index=21)
    assert [f.index for f in frames] == [30, 40]
    assert stats.frames_decoded == 50


def test_it_skips_black_frames_and_counts_them(make_video):
    path = make_video("dark.avi", frames=30, fps=10.0, black=(10, 11, 12))
    frames, stats = sampled(path, 1.0)
    assert [f.index for f in frames] == [0, 20]
    assert stats.black_frames_skipped == 1
    kept, _ = sampled(path, 1.0, skip_black=False)
    assert [f.index for f in kept] == [0, 10, 20]


def test_it_counts_what_decodes_when_the_file_is_truncated(make_video):
    path = make_video("cut.avi", frames=40, fps=10.0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the AVI header still announces 40 frames
    frames, stats = sampled(path, 1.0)
    assert stats.header_frames == 40
    assert 5 < stats.frames_decoded < 40
    assert stats.ended_early and stats.header_mismatch
    assert len(frames) == math.ceil(stats.frames_decoded / 10)
    # What the container declares says it exactly; decoding adds the frame counts.
    assert stats.warnings[0].startswith("the file is truncated: it ends at byte")
    assert stats.warnings[1].startswith(
        f"the header announces 40 frames but {stats.frames_decoded}"
    )


def test_it_keeps_real_frames_bit_for_bit(make_video):
    path = make_video("lossless.avi", frames=3, fps=10.0, codec="FFV1")
    frames, _ = sampled(path, 10.0)
    np.testing.assert_array_equal(frames[1].image, scene(240, 320, seed=1, t=0.1))


# --- Broken input: each gets its own exact reason ---------------------------------------


def test_it_refuses_a_missing_file(tmp_path):
    with pytest.raises(MediaError, match=r"nope\.mp4: video file not found"):
        VideoReader(tmp_path / "nope.mp4")


def test_it_refuses_an_empty_file(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(MediaError, match=r"empty\.mp4: the file is empty \(0 bytes\)"):
        VideoReader(tmp_path / "empty.mp4")


def test_it_refuses_random_bytes(tmp_path):
    path = tmp_path / "noise.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    with pytest.raises(MediaError, match=r"noise\.mp4: not an MP4/MOV, AVI or Matroska/WebM file"):
        VideoReader(path)


def test_it_refuses_an_image_renamed_to_mp4(tmp_path):
    path = tmp_path / "photo.mp4"
    _, jpeg = cv2.imencode(".jpg", scene())
    path.write_bytes(jpeg.tobytes())
    with pytest.raises(MediaError, match=r"photo\.mp4: this is a JPEG image, not a video"):
        VideoReader(path)


def test_it_refuses_an_mp4_without_its_index(make_video):
    path = make_video("moovless.mp4", frames=30)
    data = path.read_bytes()
    path.write_bytes(data[: data.rfind(b"moov") - 4])  # OpenCV writes the moov box last
    with pytest.raises(MediaError, match=r"moovless\.mp4: cannot be opened as a video"):
        VideoReader(path)


def test_it_refuses_a_playlist_disguised_as_a_video(tmp_path, make_video):
    target = make_video("real.avi")
    path = tmp_path / "playlist.mp4"
    path.write_text(f"#EXTM3U\n#EXTINF:10,\nfile://{target}\n")
    with pytest.raises(MediaError, match="playlist or manifest, not a video file"):
        VideoReader(path)


def test_it_refuses_an_unsupported_extension(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(MediaError, match=r"unsupported extension '\.txt'"):
        VideoReader(path)


@pytest.mark.parametrize("rate", [0, -1, float("nan"), float("inf"), 1000, "fast"])
def test_it_refuses_impossible_sampling_rates(make_video, rate):
    with (
        VideoReader(make_video("ok.avi")) as reader,
        pytest.raises(MediaError, match="sampling rate"),
    ):
        list(reader.frames(rate))


HIDDEN_PROTOCOLS = {
    # Each of these makes FFmpeg open something else: another local file, or the network.
    "hls": lambda target: f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{target}\n",
    "hls-url": lambda target: "#EXTM3U\n#EXTINF:10,\nhttp://127.0.0.1:9/a.ts\n",
    "dash": lambda target: f'<?xml version="1.0"?>\n<MPD><BaseURL>{target}</BaseURL></MPD>\n',
    "concat": lambda target: f"ffconcat version 1.0\nfile '{target}'\n",
    "sdp": lambda target: (
        "v=0\no=- 0 0 IN IP4 127.0.0.1\nc=IN IP4 127.0.0.1\nm=video 9 RTP/AVP 96\n"
    ),
    "text": lambda target: f"{target}\n",
}


@pytest.mark.parametrize("ext", [".mp4", ".mov", ".avi", ".mkv", ".webm"])
@pytest.mark.parametrize("kind", list(HIDDEN_PROTOCOLS))
def test_it_never_follows_a_file_that_points_elsewhere(tmp_path, make_video, kind, ext):
    # The target is a perfectly readable video: were the playlist followed, reading would
    # succeed, so the refusal proves it was not.
    target = make_video("target.avi", frames=10)
    path = tmp_path / f"disguised{ext}"
    path.write_text(HIDDEN_PROTOCOLS[kind](target))
    with pytest.raises(MediaError, match=r"playlist or manifest|not an MP4/MOV, AVI or Matroska"):
        VideoReader(path)


def test_it_reads_the_real_containers_it_allows(make_video):
    for ext, kind in ((".mp4", "MP4/QuickTime"), (".avi", "AVI"), (".mkv", "Matroska/WebM")):
        path = make_video(f"real{ext}", frames=3)
        assert container_kind(path.read_bytes()[:64]) == kind
        assert VideoReader(path).stats is not None
