"""Measuring a configuration on labelled clips (detection/engine/evaluation.py), with the tiny
CLIP on a small planted clip (bench/splice.py's synthetic one)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.splice import KINDS, build_synthetic
from detection.engine import ModelSpec, load_model
from detection.engine.detector import Detector
from detection.engine.errors import EngineError, PromptError
from detection.engine.evaluation import evaluate, measure, prompt_set, read_prompt_sets
from detection.engine.labels import load_labels

CAMPUS = prompt_set("campus", ["a quiet path"], ["a fall", "a fight"])
GENERIC = prompt_set("generic", "a normal scene", "an accident")


@pytest.fixture
def loaded(tiny_model):
    return load_model(ModelSpec(str(tiny_model.config), str(tiny_model.checkpoint), "cpu", "fp32"))


@pytest.fixture
def planted(tmp_path):
    """24 s at 5 fps: 8 s to learn, then 2 s of original footage and 2 s of each departure."""
    made = build_synthetic(tmp_path / "clips")
    return load_labels(made.labels, tmp_path / "clips")


@pytest.fixture
def count_encoded(monkeypatch):
    """How many frames went through `Detector.encode` (the model's forward passes)."""
    seen: list[int] = []
    original = Detector.encode

    def encode(self, inputs):
        seen.append(len(inputs))
        return original(self, inputs)

    monkeypatch.setattr(Detector, "encode", encode)
    return seen


def test_it_separates_planted_departures_from_the_learned_normal(loaded, planted):
    result = evaluate(
        planted, loaded, [CAMPUS], mode="normality", learn_seconds=8, fps=2, batch_size=8
    )
    report = result.report()
    overall = report["overall"]
    # 48 frames sampled, the first 16 (8 s) learned and left out; 4 departures of 2 s.
    assert (overall["frames"], overall["learning_frames"]) == (32, 16)
    assert (overall["anomalous_frames"], overall["normal_frames"]) == (16, 16)
    assert overall["auc"] >= 0.95 and overall["ap"] >= 0.9, overall
    assert overall["threshold"] == 0.5  # the normality mode's automatic threshold
    assert overall["anomalous_flagged"] >= 0.7 and overall["normal_flagged"] <= 0.1, overall
    assert set(report["kinds"]) == set(KINDS)
    for kind, block in report["kinds"].items():
        assert (block["anomalous_frames"], block["normal_frames"]) == (4, 16), kind
    video = report["videos"][0]
    assert video["video"] == "planted.avi" and video["auc"] == overall["auc"]
    assert report["overall"] is report["sets"]["campus"]["overall"]
    assert report["warnings"] == []
    json.dumps(report)  # plain JSON types only


@pytest.mark.parametrize(("crops", "views"), [(None, "regions"), (True, "crops")])
def test_it_encodes_each_frame_once_for_every_prompt_set(
    loaded, planted, count_encoded, crops, views
):
    result = evaluate(
        planted,
        loaded,
        [CAMPUS, GENERIC],
        mode="combined",
        learn_seconds=8,
        fps=2,
        batch_size=8,
        threshold=0.6,
        crops=crops,
    )
    report = result.report()
    assert sum(count_encoded) == 48 == report["frames_encoded"]  # not 96
    assert report["normality_views"] == views
    assert list(report["sets"]) == ["campus", "generic"] and report["set"] == "campus"
    campus, generic = (report["sets"][name] for name in ("campus", "generic"))
    assert campus["anomaly"] == ["a fall", "a fight"] and generic["normal"] == ["a normal scene"]
    assert campus["overall"]["frames"] == generic["overall"]["frames"] == 32
    assert campus["overall"]["threshold"] == 0.6
    # Each set decided with its own prompts on the shared features.
    campus_series = result.runs[0].series["campus"].scores
    generic_series = result.runs[0].series["generic"].scores
    assert campus_series != generic_series


def test_it_learns_afresh_for_every_video(loaded, planted, count_encoded):
    planted.videos.append(planted.videos[0])  # the same clip twice: the same numbers twice
    report = evaluate(
        planted, loaded, [CAMPUS], mode="normality", learn_seconds=8, fps=2, batch_size=8
    ).report()
    first, second = report["videos"]
    assert first["learning_frames"] == second["learning_frames"] == 16
    assert first["auc"] == pytest.approx(second["auc"])
    assert report["overall"]["frames"] == 64 and sum(count_encoded) == 96


def test_it_reports_undefined_auc_for_a_video_with_one_class(loaded, tmp_path):
    made = build_synthetic(tmp_path / "clips", kinds=())  # no departure at all
    labels = load_labels(made.labels, tmp_path / "clips")
    report = evaluate(labels, loaded, [CAMPUS], mode="prompts", fps=1).report()
    video = report["videos"][0]
    assert video["auc"] is None and video["ap"] is None and video["f1"] is None
    assert "only normal frames" in video["note"]
    assert video["anomalous_flagged"] is None and video["normal_flagged"] is not None
    # Nothing learned: the automatic threshold falls back to the default, and says so.
    assert video["threshold"] == 0.6
    assert any("nothing was learned" in w for w in report["warnings"])


def test_it_warns_when_a_video_is_all_learning_or_an_anomaly_is_learned(loaded, planted):
    report = evaluate(planted, loaded, [CAMPUS], mode="normality", learn_seconds=12, fps=1).report()
    assert any("starts within the learning period (12 s)" in w for w in report["warnings"])
    report = evaluate(planted, loaded, [CAMPUS], mode="normality", learn_seconds=60, fps=1).report()
    assert report["overall"]["frames"] == 0 and report["overall"]["auc"] is None
    assert any("every sampled frame fell in the learning period" in w for w in report["warnings"])


def test_it_refuses_a_normality_mode_without_learning_and_duplicate_set_names(loaded, planted):
    with pytest.raises(EngineError, match="give learning seconds"):
        evaluate(planted, loaded, [CAMPUS], mode="normality", learn_seconds=0)
    with pytest.raises(PromptError, match="names must differ"):
        evaluate(planted, loaded, [CAMPUS, CAMPUS])
    with pytest.raises(EngineError, match="mode must be one of"):
        evaluate(planted, loaded, [CAMPUS], mode="nonsense")


def test_it_measures_auc_ap_best_f1_and_flag_rates():
    labels = [0, 0, 0, 1, 1]
    scores = [0.1, 0.4, 0.35, 0.8, 0.3]
    block = measure(labels, scores, np.asarray(scores) >= 0.35)
    assert block["auc"] == pytest.approx(4 / 6)
    # F1 ties at 0.8 (precision 1, recall 1/2) and 0.3: the higher threshold is kept.
    assert block["best_threshold"] == 0.8 and block["f1"] == pytest.approx(2 / 3)
    assert (block["precision"], block["recall"]) == (1.0, 0.5)
    assert block["anomalous_flagged"] == 0.5 and block["normal_flagged"] == pytest.approx(2 / 3)
    assert measure([], [], [])["note"].startswith("no frame judged")


def test_it_reads_named_prompt_sets_in_order(tmp_path):
    path = tmp_path / "sets.json"
    path.write_text(
        json.dumps(
            {
                "street": {"normal": ["a quiet street"], "anomaly": ["a crash", "a fire"]},
                "generic": {"normal": "a normal scene\nan ordinary day", "anomaly": "danger"},
            }
        )
    )
    sets = read_prompt_sets(path)
    assert [s.name for s in sets] == ["street", "generic"]
    assert sets[1].normal == ("a normal scene", "an ordinary day")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"a": {"normal": ["x"],\n "anomaly": ["y"]', "line 2: not JSON"),
        ("[1, 2]", "expected a JSON object of named sets"),
        ("{}", "expected a JSON object of named sets"),
        ('{"a": {"normal": ["x"]}}', "set 'a' must hold exactly the keys"),
        ('{"a": {"normal": ["x"], "anomaly": ["  "]}}', "'a' anomaly prompt is empty"),
        ('{"a": {"normal": [3], "anomaly": ["y"]}}', "'a' normal prompts must be text"),
    ],
)
def test_it_refuses_a_bad_prompts_file_with_a_reason(tmp_path, text, reason):
    path = tmp_path / "sets.json"
    path.write_text(text)
    with pytest.raises(PromptError) as caught:
        read_prompt_sets(path)
    assert str(caught.value).startswith(str(path)) and reason in str(caught.value)
