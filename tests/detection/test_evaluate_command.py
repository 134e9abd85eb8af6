"""`manage.py evaluate LABELS --videos DIR`, run in process as an operator runs it."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import CommandError, call_command

from bench.splice import build_synthetic
from detection.engine.detector import Detector

pytestmark = pytest.mark.usefixtures("tiny_settings")


def run(*args: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `manage.py evaluate ARGS`, as manage.py reports a
    CommandError: one "CommandError: <message>" line and its return code."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("evaluate", *args, stdout=out, stderr=err)
    except CommandError as error:
        err.write(f"{type(error).__name__}: {error}\n")
        return error.returncode, out.getvalue(), err.getvalue()
    return 0, out.getvalue(), err.getvalue()


@pytest.fixture
def clips(tmp_path):
    """A folder with a planted 24 s clip (5 fps) and its labels.csv."""
    made = build_synthetic(tmp_path / "clips")
    return made.labels, made.labels.parent


def test_it_prints_the_numbers_as_json_with_progress_on_stderr(clips):
    labels, folder = clips
    status, out, err = run(
        str(labels), "--videos", str(folder), "--mode", "normality", "--learn-seconds", "8",
        "--fps", "2", "--json",
    )  # fmt: skip
    assert status == 0, err
    report = json.loads(out)
    assert report["overall"]["auc"] >= 0.95
    assert set(report["overall"]) >= {
        "auc", "ap", "best_threshold", "f1", "precision", "recall", "threshold",
        "anomalous_flagged", "normal_flagged", "frames", "learning_frames",
    }  # fmt: skip
    assert report["videos"][0]["video"] == "planted.avi"
    assert report["labels"]["format"] == "csv" and report["mode"] == "normality"
    assert list(report["sets"]) == ["prompts"] and report["threshold"] == "auto"
    assert "evaluating" in err  # the tqdm bar


def test_it_prints_a_readable_table(clips):
    labels, folder = clips
    status, out, err = run(
        str(labels), "--videos", str(folder), "--normal", "a path", "--anomaly", "a fall",
        "--learn-seconds", "8", "--fps", "1", "--threshold", "0.6",
    )  # fmt: skip
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("csv labels, 1 videos; mode prompts, learning 8 s, 1 frame/s")
    assert "prompt set 'prompts'" in lines
    assert any(line.startswith("planted.avi ") for line in lines)
    assert any(line.startswith("covered lens ") for line in lines)
    pooled = next(line for line in lines if line.startswith("all videos"))
    assert "0.600" in pooled  # the threshold in use


def test_it_compares_prompt_sets_from_a_file_on_frames_encoded_once(clips, tmp_path, monkeypatch):
    labels, folder = clips
    sets = tmp_path / "sets.json"
    sets.write_text(
        json.dumps(
            {
                "campus": {"normal": ["a quiet path"], "anomaly": ["a fall", "a fight"]},
                "generic": {"normal": "a normal scene", "anomaly": "an accident"},
            }
        )
    )
    encoded: list[int] = []  # frames through the model's forward passes
    original = Detector.encode

    def encode(self, inputs):
        encoded.append(len(inputs))
        return original(self, inputs)

    monkeypatch.setattr(Detector, "encode", encode)
    status, out, err = run(
        str(labels), "--videos", str(folder), "--prompts-file", str(sets), "--mode", "combined",
        "--learn-seconds", "8", "--fps", "2", "--json",
    )  # fmt: skip
    assert status == 0, err
    report = json.loads(out)
    assert list(report["sets"]) == ["campus", "generic"]
    assert report["overall"] == report["sets"]["campus"]["overall"]
    assert sum(encoded) == report["frames_encoded"] == 48  # once, not once per set
    status, out, _ = run(
        str(labels), "--videos", str(folder), "--prompts-file", str(sets), "--learn-seconds", "8",
    )  # fmt: skip
    assert "prompt set 'campus'" in out and "prompt set 'generic'" in out


def _bad_inputs(labels, folder, tmp_path):
    missing = tmp_path / "missing.csv"
    missing.write_text("video,start_s,end_s\nplanted.avi,1,2\nnot-there.avi,,\n")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{")
    return [
        ([str(tmp_path / "nope.csv")], "labels file not found"),
        ([str(missing)], "missing.csv, line 3: video 'not-there.avi' is not in"),
        ([str(labels), "--fps", "0"], "--fps must be a positive number, got 0"),
        ([str(labels), "--threshold", "2"], "--threshold must lie strictly between 0 and 1"),
        ([str(labels), "--learn-seconds", "x"], "--learn-seconds 'x' is not a number"),
        ([str(labels), "--seed", "-1"], "--seed must be zero or more"),
        ([str(labels), "--mode", "normality"], "give learning seconds (--learn-seconds)"),
        ([str(labels), "--anomaly", " "], "--anomaly prompt is empty"),
        ([str(labels), "--prompts-file", str(bad_json)], "bad.json, line 1: not JSON"),
        (
            [str(labels), "--prompts-file", str(bad_json), "--normal", "x"],
            "give --prompts-file or --normal/--anomaly, not both",
        ),
    ]


def test_it_exits_2_with_one_line_on_bad_input(clips, tmp_path):
    labels, folder = clips
    for args, reason in _bad_inputs(labels, folder, tmp_path):
        status, out, err = run(*args, "--videos", str(folder))
        assert status == 2, (args, err)
        assert err.startswith("CommandError: ") and reason in err, (args, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert out == ""
    status, _, err = run(str(labels), "--videos", str(tmp_path / "nowhere"))
    assert status == 2 and "videos folder not found" in err
