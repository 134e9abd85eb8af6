"""Ground truth for `manage.py evaluate` (detection/engine/labels.py): three formats read by
content, frame numbers turned into seconds with each video's own rate, and every mistake
named by file, line and reason."""

from __future__ import annotations

import pytest

from detection.engine.errors import MediaError
from detection.engine.labels import (
    CSV,
    UCF_CRIME,
    XD_VIOLENCE,
    Interval,
    LabelsError,
    detect_format,
    load_labels,
)
from tests.support.media import write_video


@pytest.fixture
def videos(tmp_path):
    """A videos folder: a.avi and b.avi (10 fps), c.mp4 (25 fps) in a class subfolder."""
    folder = tmp_path / "videos"
    (folder / "Abuse").mkdir(parents=True)
    small = (64, 48)  # only the rate and the frame count matter here
    write_video(folder / "a.avi", frames=30, fps=10.0, size=small)
    write_video(folder / "b.avi", frames=30, fps=10.0, size=small)
    write_video(folder / "Abuse" / "c.mp4", frames=50, fps=25.0, size=small)
    return folder


def write(tmp_path, text: str | bytes, name: str = "labels.txt"):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_it_reads_a_csv_with_a_loose_header_a_bom_and_normal_videos(tmp_path, videos):
    path = write(
        tmp_path,
        "\ufeff Video , START_S,End_s ,Kind,notes\n"
        "a.avi,0.5,1.5,fall,first\n"
        "a.avi, 2 , 2.5 ,,\n"
        "\n"
        "b.avi,,,,\n",
        "gt.dat",  # the name does not matter: the content says CSV
    )
    labels = load_labels(path, videos)
    assert labels.format == CSV
    assert labels.as_dict() == {"a.avi": [(0.5, 1.5), (2.0, 2.5)], "b.avi": []}
    a = labels.videos[0]
    assert a.intervals[0].kind == "fall" and a.fps == 10.0 and a.path == videos / "a.avi"
    assert a.interval_at(1.49) is a.intervals[0]
    assert a.interval_at(1.5) is None  # half-open: the end is normal
    assert a.interval_at(0.5) is a.intervals[0]


def test_it_reads_ucf_crime_frames_as_seconds_with_each_videos_own_rate(tmp_path, videos):
    path = write(
        tmp_path,
        "a.avi  Fighting  10  19  25  29\n"
        "c.mp4  Abuse  5  9  -1  -1\n"  # found in its class folder, at 25 fps
        "b.avi  Normal  -1  -1  -1  -1\n",
    )
    labels = load_labels(path, videos)
    assert labels.format == UCF_CRIME
    # Frames 10..19 inclusive at 10 fps: [1.0 s, 2.0 s).
    assert labels.as_dict() == {
        "a.avi": [(1.0, 2.0), (2.5, 3.0)],
        "c.mp4": [(0.2, 0.4)],
        "b.avi": [],
    }
    assert [i.kind for i in labels.videos[0].intervals] == ["Fighting", "Fighting"]
    assert labels.videos[1].path == videos / "Abuse" / "c.mp4"


def test_it_reads_xd_violences_list_with_names_without_extensions(tmp_path, videos):
    path = write(tmp_path, "# XD-Violence\na 0 4 20 29\nc.mp4 25 49\nb\n")
    labels = load_labels(path, videos)
    assert labels.format == XD_VIOLENCE
    assert labels.as_dict() == {"a": [(0.0, 0.5), (2.0, 3.0)], "c.mp4": [(1.0, 2.0)], "b": []}


@pytest.mark.parametrize(
    ("text", "fmt"),
    [
        ("video,start_s,end_s\n", CSV),
        ("x.mp4 Abuse 1 2 -1 -1\n", UCF_CRIME),
        ("x 1 2\n", XD_VIOLENCE),
        ("\n# only a name\nx\n", XD_VIOLENCE),
        ("x is not anything\n", None),
        ("", None),
    ],
)
def test_it_recognises_the_format_by_content(text, fmt):
    assert detect_format(text) == fmt


BAD = [
    ("video,start_s,end_s\na.avi,1,2\nmissing.avi,1,2\n", "line 3: video 'missing.avi' is not in"),
    ("video,start_s,end_s\na.avi,2,1\n", "line 2: end_s 1 is not after start_s 2"),
    ("video,start_s,end_s\na.avi,one,2\n", "line 2: start_s 'one' is not a number"),
    ("video,start_s,end_s\na.avi,1,inf\n", "line 2: end_s 'inf' is not a finite number"),
    ("video,start_s,end_s\na.avi,-1,2\n", "line 2: start_s -1 is negative"),
    ("video,start_s,end_s\na.avi,1,\n", "line 2: give both start_s and end_s, or neither"),
    ("video,start_s,end_s\n,1,2\n", "line 2: the video name is empty"),
    ("name,from,to\na.avi,1,2\n", "line 1: the header must name the columns video,start_s,end_s"),
    ("video,start_s,end_s\n", "names no video"),
    ("a.avi Fight 10 5 -1 -1\n", "line 1: end frame 5 is before start frame 10"),
    ("a.avi Fight 1 2 -1\n", "line 1: frame numbers come in start/end pairs"),
    ("a.avi Fight 1 -1 -1 -1\n", "line 1: -1 marks no interval only as a pair"),
    ("a.avi Fight 1.5 3 -1 -1\n", "line 1: start frame '1.5' is not a frame number"),
    ("a.avi Fight 1 2 -1 -1\nb.avi Normal x -1 -1 -1\n", "line 2: start frame 'x' is not"),
    ("a.avi Fight 1 2 -1 -1\na.avi Fight 3 4 -1 -1\n", "line 2: a.avi is listed twice"),
    ("a 1 2\nb Fight 3 4\n", "line 2: expected 'name start1 end1 ...' (XD-Violence)"),
    ("a.avi Fight 1 2 -1 -1\nb.avi 1 2 3 4\n", "line 2: expected 'name class start1 end1"),
    ("video,start_s,end_s\n/etc/a.avi,1,2\n", "line 2: video '/etc/a.avi' must be a name relative"),
    ("video,start_s,end_s\n../videos/a.avi,1,2\n", "must be a name relative to --videos"),
    ("just some words\n", "not a labels file"),
    ("", "not a labels file"),
    (b"\x00\x01binary", "a binary file, not a labels file"),
    (b"video,start_s,end_s\n\xff\xfe,1,2\n", "not UTF-8 text"),
]


@pytest.mark.parametrize(("text", "reason"), BAD)
def test_it_names_the_file_the_line_and_the_reason(tmp_path, videos, text, reason):
    path = write(tmp_path, text)
    with pytest.raises(LabelsError) as caught:
        load_labels(path, videos)
    assert str(caught.value).startswith(str(path))
    assert reason in str(caught.value)
    assert isinstance(caught.value, MediaError)  # the commands' one-line bad input


def test_it_refuses_an_unreadable_video_at_the_line_naming_it(tmp_path, videos):
    (videos / "junk.avi").write_bytes(b"not a video at all" * 10)
    path = write(tmp_path, "video,start_s,end_s\na.avi,,\njunk.avi,1,2\n")
    with pytest.raises(LabelsError, match=r"line 3: .*junk.avi: not an MP4/MOV, AVI"):
        load_labels(path, videos)


def test_it_refuses_a_name_found_twice_below_the_folder(tmp_path, videos):
    (videos / "Other").mkdir()
    write_video(videos / "Other" / "c.mp4", frames=5, size=(64, 48))
    path = write(tmp_path, "c.mp4 Abuse 1 2 -1 -1\n")
    with pytest.raises(LabelsError, match=r"line 1: video 'c\.mp4' is ambiguous"):
        load_labels(path, videos)


def test_it_refuses_missing_files_and_folders(tmp_path, videos):
    with pytest.raises(LabelsError, match="labels file not found"):
        load_labels(tmp_path / "nope.csv", videos)
    path = write(tmp_path, "a 1 2\n")
    with pytest.raises(LabelsError, match="videos folder not found"):
        load_labels(path, tmp_path / "nowhere")


def test_it_keeps_intervals_half_open():
    interval = Interval(1.0, 2.0)
    assert [interval.contains(t) for t in (0.99, 1.0, 1.99, 2.0)] == [False, True, True, False]
