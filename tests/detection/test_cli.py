"""`manage.py analyze_image` / `analyze_video`, run as an operator runs them.

Each `manage.py` process imports torch and the project (seconds each), so bad input is
checked in process: `run_in_process` calls the command as `manage.py` does and reports what
`manage.py` would (exit status, stdout, stderr). One case runs the real `manage.py` to hold
that path to the same promise: exit status 2, one line on stderr, no traceback.
"""

from __future__ import annotations

import io
import json

import cv2
import pytest
from django.core.management import CommandError, call_command

from tests.support.media import scene
from tests.support.processes import manage

BAD_INPUT = [
    ("empty", ["--fps", "1"], "the file is empty (0 bytes)"),
    ("noise", [], "not an MP4/MOV, AVI or Matroska/WebM file"),
    ("ok", ["--fps", "0"], "--fps must be a positive number, got 0"),
    ("ok", ["--fps", "abc"], "--fps 'abc' is not a number"),
    ("ok", ["--anomaly", "   "], "--anomaly prompt is empty"),
    ("missing", [], "video file not found"),
]


def run_in_process(*args: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `manage.py ARGS`, with the command run in process.

    What `manage.py` adds around a command (Django's `BaseCommand.run_from_argv`): a
    CommandError is printed as one "CommandError: <message>" on stderr and its return code
    is the exit status. Anything else propagates and fails the test, as a traceback would.
    """
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command(*args, stdout=out, stderr=err)
    except CommandError as error:
        err.write(f"{type(error).__name__}: {error}\n")
        return error.returncode, out.getvalue(), err.getvalue()
    except SystemExit as stopped:
        return int(stopped.code or 0), out.getvalue(), err.getvalue()
    return 0, out.getvalue(), err.getvalue()


def bad_input_file(setup: str, tmp_path, make_video):
    path = tmp_path / "input.mp4"
    if setup == "empty":
        path.write_bytes(b"")
    elif setup == "noise":
        path.write_bytes(bytes(range(256)) * 100)
    elif setup == "ok":
        path = make_video("ok.avi", frames=5)
    return path


@pytest.mark.slow
def test_it_prints_a_video_analysis_as_json_with_progress_on_stderr(make_video, tiny_model):
    path = make_video("street.mkv", frames=40, fps=10.0)
    out = manage(
        "analyze_video",
        str(path),
        "--normal",
        "a street",
        "--normal",
        "a road",
        "--anomaly",
        "a fire",
        "--fps",
        "2",
        "--json",
        # Debug logging on: the portal logs to stdout, this command must move it aside.
        env={**tiny_model.env, "DJANGO_LOG_LEVEL": "DEBUG"},
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)  # stdout holds the JSON and nothing else
    assert " DEBUG detection." in out.stderr or " INFO detection." in out.stderr, out.stderr
    assert result["status"] == "Success"
    assert [d["frame_index"] for d in result["data"]] == [0, 5, 10, 15, 20, 25, 30, 35]
    assert result["metadata"]["normal_prompts"] == ["a street", "a road"]
    assert result["metadata"]["total_frames"] == 40
    assert "decoding" in out.stderr and "40/40" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_it_prints_an_image_analysis_as_json(tmp_path, tiny_model):
    path = tmp_path / "frame.webp"
    cv2.imwrite(str(path), scene())
    out = manage(
        "analyze_image",
        str(path),
        "--anomaly",
        "smoke",
        "--threshold",
        "0.3",
        "--json",
        env=tiny_model.env,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["label"] == ("Anomaly" if result["score"] >= 0.3 else "Normal")
    assert result["anomaly_prompts"] == ["smoke"]


@pytest.mark.usefixtures("tiny_settings")
@pytest.mark.parametrize(("setup", "args", "reason"), BAD_INPUT)
def test_it_exits_2_with_one_line_for_bad_input(tmp_path, make_video, setup, args, reason):
    path = bad_input_file(setup, tmp_path, make_video)
    returncode, stdout, stderr = run_in_process("analyze_video", str(path), *args)
    assert returncode == 2
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines == [f"CommandError: {lines[0].removeprefix('CommandError: ')}"]
    assert reason in lines[0]
    assert stdout == ""


@pytest.mark.slow
def test_it_exits_2_with_one_line_for_bad_input_from_a_real_manage_py(
    tmp_path, make_video, tiny_model
):
    setup, args, reason = BAD_INPUT[-1]  # the cheapest: no video to write
    path = bad_input_file(setup, tmp_path, make_video)
    out = manage("analyze_video", str(path), *args, env=tiny_model.env)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines == [f"CommandError: {lines[0].removeprefix('CommandError: ')}"]
    assert reason in lines[0]
    assert out.stdout == ""
    assert "Traceback" not in out.stderr


def test_it_exits_2_when_the_weights_are_missing(make_video, tiny_settings, tmp_path):
    tiny_settings.DETECTION_PRETRAINED = str(tmp_path / "gone.pt")
    returncode, _, stderr = run_in_process("analyze_video", str(make_video("ok.avi", frames=5)))
    assert returncode == 2
    assert "checkpoint file not found" in stderr and "Traceback" not in stderr


@pytest.mark.usefixtures("tiny_settings")
def test_it_prints_a_readable_table_without_json(make_video, capsys):
    call_command("analyze_video", str(make_video("t.avi", frames=30)), "--normal", "a street")
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["time_s", "frame", "score", "label"]
    assert "3 frames scored of 30 decoded (3.0 s)" in out


@pytest.mark.usefixtures("tiny_settings")
@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--threshold", "1"], "--threshold must lie strictly between 0 and 1"),
        (["--threshold", "x"], "--threshold 'x' is not a number"),
        (["--logit-scale", "-3"], "--logit-scale must be a positive number"),
        (["--batch-size", "0"], "--batch-size must be a positive number"),
    ],
)
def test_it_refuses_bad_numbers(make_video, args, reason):
    with pytest.raises(CommandError, match=reason) as err:
        call_command("analyze_video", str(make_video("n.avi", frames=5)), *args)
    assert err.value.returncode == 2


@pytest.mark.usefixtures("tiny_settings")
def test_it_refuses_an_image_that_is_not_one(tmp_path):
    path = tmp_path / "fake.jpg"
    path.write_bytes(b"GIF89a but not really")
    with pytest.raises(CommandError, match=r"fake\.jpg: not an image format that can be read"):
        call_command("analyze_image", str(path))
