"""Learning the normal through the API and the CLI (analyze_video, analyze_image)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from detection.api import analyze_image, analyze_video
from tests.detection.test_cli import run_in_process
from tests.support.media import covered, scene, write_tampered_video

pytestmark = pytest.mark.usefixtures("tiny_settings")

LEARN_S, NORMAL_S, COVERED_S = 10, 4, 4


@pytest.fixture
def tampered(tmp_path):
    return write_tampered_video(tmp_path / "tampered.avi", LEARN_S, NORMAL_S, COVERED_S, fps=4)


def test_it_learns_then_judges_a_video_and_says_what_went_into_each_score(tampered):
    result = analyze_video(
        tampered,
        ["a street"],
        ["a fire"],
        2.0,
        mode="normality",
        learn_seconds=LEARN_S,
        threshold="auto",
    )
    assert result["status"] == "Success", result["error_message"]
    data, meta = result["data"], result["metadata"]
    assert [d["learning"] for d in data] == [d["time_s"] < LEARN_S for d in data]
    assert {d["label"] for d in data if d["learning"]} == {"Learning"}
    judged = [d for d in data if not d["learning"]]
    assert all(d["score"] == d["novelty"] and d["prompt_score"] is not None for d in judged)
    start = LEARN_S + NORMAL_S
    planted = [d for d in judged if start <= d["time_s"] < start + COVERED_S]
    assert {d["label"] for d in planted} == {"Anomaly"}
    normal = [d for d in judged if d not in planted]
    assert np.mean([d["label"] == "Anomaly" for d in normal]) <= 0.1
    assert meta["mode"] == "normality" and meta["learned_frames"] == LEARN_S * 2
    assert meta["anomaly_threshold"] == meta["auto_threshold"] == 0.5
    # The statistics leave the learning frames out.
    assert meta["max_anomaly_time"] >= LEARN_S
    assert meta["frames_above_threshold"] == sum(d["label"] == "Anomaly" for d in data)


def test_it_keeps_prompts_mode_as_it_was(tampered):
    plain = analyze_video(tampered, ["a street"], ["a fire"], 2.0)
    assert plain["metadata"]["mode"] == "prompts"
    assert plain["metadata"]["learned_frames"] == 0
    assert all(d["novelty"] is None and not d["learning"] for d in plain["data"])
    assert all(d["prompt_score"] == d["score"] for d in plain["data"])


def test_it_compares_with_normal_and_anomaly_examples(tmp_path, tampered):
    normal_clip = write_tampered_video(tmp_path / "normal.avi", 10, 0, 0, fps=2)
    dark = tmp_path / "dark.png"
    cv2.imwrite(str(dark), covered(scene(seed=1)))
    result = analyze_video(
        tampered,
        ["a street"],
        ["a fire"],
        1.0,
        mode="combined",
        normal_examples=[normal_clip],
        anomaly_examples=[dark],
    )
    assert result["status"] == "Success", result["error_message"]
    start = LEARN_S + NORMAL_S
    planted = [d for d in result["data"] if start <= d["time_s"] < start + COVERED_S]
    assert all(d["novelty"] > 0.9 for d in planted)
    image = analyze_image(
        covered(scene(seed=1)),
        ["a street"],
        ["a fire"],
        mode="normality",
        normal_examples=[normal_clip],
        threshold="auto",
    )
    assert image["status"] == "Success", image["error_message"]
    assert image["label"] == "Anomaly" and image["threshold"] == 0.5


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"mode": "magic"}, "mode must be one of prompts, normality, combined"),
        ({"mode": "normality"}, "needs a normal to compare with"),
        ({"normal_examples": ["x.png"]}, "x.png: example file not found"),
        ({"learn_seconds": -3}, "learning seconds must lie between 0 and 86400"),
        ({"threshold": "sometimes"}, "threshold 'sometimes' is not a number"),
    ],
)
def test_it_refuses_bad_learning_options_with_a_reason(tampered, kwargs, reason):
    result = analyze_video(tampered, ["a street"], ["a fire"], 1.0, **kwargs)
    assert result["status"] == "Error"
    assert reason in result["error_message"]


def test_it_refuses_examples_in_prompts_mode(tmp_path, tampered):
    image = tmp_path / "n.png"
    cv2.imwrite(str(image), scene())
    result = analyze_video(tampered, ["a street"], ["a fire"], 1.0, normal_examples=[image])
    assert (
        result["status"] == "Error" and "use mode normality or combined" in result["error_message"]
    )


def test_it_warns_about_prompts_that_describe_sound(tampered):
    result = analyze_video(tampered, ["a street"], ["a loud gunshot sound"], 1.0)
    assert result["status"] == "Success"
    assert any("describes sound" in w for w in result["metadata"]["warnings"])


def test_it_takes_the_learning_flags_on_the_command_line(tampered, tmp_path):
    example = tmp_path / "normal.png"
    cv2.imwrite(str(example), scene(seed=1))
    status, out, err = run_in_process(
        "analyze_video",
        str(tampered),
        "--fps",
        "2",
        "--mode",
        "normality",
        "--learn-seconds",
        str(LEARN_S),
        "--threshold",
        "auto",
        "--normal-example",
        str(example),
        "--anomaly",
        "a siren sound",
        "--json",
    )
    assert status == 0, err
    result = json.loads(out)
    assert result["metadata"]["mode"] == "normality"
    assert result["metadata"]["threshold_mode"] == "auto"
    assert {"prompt_score", "novelty", "learning"} <= set(result["data"][0])
    assert "describes sound" in err  # warnings reach stderr as well as the metadata


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--mode", "normality"], "needs a normal to compare with"),
        (["--learn-seconds", "soon"], "--learn-seconds 'soon' is not a number"),
        (
            ["--threshold", "auto", "--mode", "normality", "--normal-example", "nope.png"],
            "nope.png: example file not found",
        ),
    ],
)
def test_it_exits_2_for_bad_learning_flags(tampered, args, reason):
    status, out, err = run_in_process("analyze_video", str(tampered), *args)
    assert status == 2 and out == ""
    assert reason in err and "Traceback" not in err
