"""The detector (prompts, normality, combined; learning; automatic threshold) and the
one-pass region features, on the tiny CLIP."""

from __future__ import annotations

import numpy as np
import pytest

from detection.engine import EngineError, ModelSpec, Scorer, load_model
from detection.engine.detector import AUTO, Detector, Mode, parse_learn_seconds, parse_mode
from detection.engine.features import (
    N_VIEWS,
    _region_slices,
    embed_frames,
    encode_views,
    fit_normality,
    uses_tokens,
)
from detection.engine.limits import MODES
from detection.engine.normality import AUTO_THRESHOLD
from detection.engine.preprocess import to_tensor
from detection.engine.scoring import encode_images
from tests.support.media import covered, scene


@pytest.fixture(scope="module")
def loaded(tiny_model):
    return load_model(ModelSpec(str(tiny_model.config), str(tiny_model.checkpoint), "cpu", "fp32"))


@pytest.fixture
def scorer(loaded):
    return Scorer(loaded, ["a quiet street"], ["a fire"])


def frames(seconds: float, fps: float = 2.0, seed: int = 1) -> list[np.ndarray]:
    return [scene(seed=seed, t=t) for t in np.arange(0, seconds, 1 / fps)]


def run(detector: Detector, images: list[np.ndarray], times: list[float]):
    inputs = [detector.prepare(image) for image in images]
    return detector.decide(times, *detector.encode(inputs))


def test_it_names_the_same_modes_as_the_portal():
    assert tuple(m.value for m in Mode) == MODES
    assert parse_mode("combined") is Mode.COMBINED
    with pytest.raises(EngineError, match="mode must be one of prompts, normality, combined"):
        parse_mode("magic")
    with pytest.raises(EngineError, match="learning seconds must lie between 0 and 86400"):
        parse_learn_seconds(-1)


def test_it_reads_the_pooled_embedding_off_the_same_pass_as_the_regions(loaded):
    # The region features come from open_clip's forward pass step by step: its first view
    # must be exactly what encode_image gives for the same input.
    assert uses_tokens(loaded)
    batch = to_tensor([fit_normality(scene(seed=s), loaded.preprocess) for s in (1, 2)], loaded)
    views = encode_views(loaded, batch)
    assert views.shape == (2, N_VIEWS, loaded.model.visual.output_dim)
    pooled = encode_images(loaded, batch).numpy()
    np.testing.assert_allclose(views[:, 0], pooled, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(views, axis=-1), 1.0, atol=1e-5)


def test_it_shares_the_middle_row_of_an_odd_token_grid():
    assert _region_slices(7) == [slice(0, 4), slice(3, 7)]
    assert _region_slices(14) == [slice(0, 7), slice(7, 14)]


def test_it_keeps_the_prototype_score_bit_for_bit_in_prompts_mode(scorer):
    images = frames(3)
    points = run(Detector(scorer), images, [i * 0.5 for i in range(len(images))])
    expected = scorer.score_frames(images)
    assert [p.score for p in points] == expected.score.tolist()
    assert all(p.novelty is None and not p.learning for p in points)


def test_it_learns_first_and_derives_the_prompt_threshold_from_it(scorer):
    images = frames(8)
    times = [i * 0.5 for i in range(len(images))]
    detector = Detector(scorer, Mode.PROMPTS, learn_seconds=5, threshold=AUTO)
    points = run(detector, images, times)
    assert [p.learning for p in points] == [t < 5 for t in times]
    learned = [p.prompt_score for p in points if p.learning]
    expected = min(0.95, max(0.5, float(np.quantile(learned, 0.99)) + 0.05))
    assert detector.auto_threshold == pytest.approx(expected)
    assert detector.threshold_in_use == pytest.approx(expected)
    assert detector.describe()["learned_frames"] == 10


def test_it_says_when_an_automatic_prompt_threshold_had_nothing_to_learn_from(scorer):
    detector = Detector(scorer, Mode.PROMPTS, threshold=AUTO)
    assert detector.threshold_in_use == 0.6
    assert "nothing was learned" in detector.warnings[0]


def test_it_flags_a_covered_lens_after_learning_and_fuses_in_combined_mode(scorer):
    learn, later = frames(15), frames(5, seed=1)
    darkened = [covered(f) for f in later]
    for mode in (Mode.NORMALITY, Mode.COMBINED):
        detector = Detector(scorer, mode, learn_seconds=15, threshold=AUTO)
        run(detector, learn, [i * 0.5 for i in range(len(learn))])
        points = run(detector, later + darkened, [20 + i * 0.5 for i in range(20)])
        assert detector.learning_done
        # Combined: also above the learning frames' prompt scores (random weights: high).
        learned = detector.learned_prompt_scores
        prompt_auto = min(0.95, float(np.quantile(learned, 0.99)) + 0.05)
        assert detector.threshold_in_use == pytest.approx(
            AUTO_THRESHOLD if mode is Mode.NORMALITY else max(AUTO_THRESHOLD, prompt_auto)
        )
        assert all(p.novelty is not None and not p.learning for p in points)
        assert all(p.novelty >= 0.5 for p in points[10:])
        if mode is Mode.NORMALITY:
            assert [p.score for p in points] == [p.novelty for p in points]
        else:
            assert [p.score for p in points] == [max(p.prompt_score, p.novelty) for p in points]


def test_it_refuses_normality_with_nothing_learned(scorer):
    detector = Detector(scorer, Mode.NORMALITY, learn_seconds=5)
    with pytest.raises(EngineError, match="learned nothing"):
        detector.finish_learning()
    with pytest.raises(EngineError, match="learning seconds or normal examples"):
        run(Detector(scorer, Mode.NORMALITY), frames(1), [0.0, 0.5])


def test_it_restores_what_it_learned_and_scores_the_same(scorer):
    learn, later = frames(10), frames(3, seed=2)
    first = Detector(scorer, Mode.NORMALITY, learn_seconds=10)
    run(first, learn, [i * 0.5 for i in range(len(learn))])
    expected = [p.score for p in run(first, later, [30, 31, 32, 33, 34, 35])]
    second = Detector(scorer, Mode.NORMALITY, learn_seconds=10)
    second.restore_learned(first.learned_state())
    assert second.learning_done
    assert [p.score for p in run(second, later, [30, 31, 32, 33, 34, 35])] == pytest.approx(
        expected, abs=1e-6
    )


def test_it_uses_examples_for_both_memories(scorer):
    detector = Detector(scorer, Mode.NORMALITY)
    normal = detector.embed(frames(10))
    dark = covered(scene(seed=1))
    detector.set_examples(normal, np.zeros((0, 0, 0), np.float32))
    before = run(detector, [dark], [0.0])[0].score
    detector.set_examples(normal, detector.embed([dark]))
    after = run(detector, [dark], [0.0])[0].score
    assert after >= before and after > 0.9


def test_it_relearns_from_where_a_resumed_run_starts(scorer):
    detector = Detector(scorer, Mode.NORMALITY, learn_seconds=3)
    detector.relearn_from_next_frame()
    points = run(detector, frames(4), [40 + i * 0.5 for i in range(8)])
    assert [p.learning for p in points] == [True] * 6 + [False] * 2


def test_it_embeds_crops_when_asked_and_says_which(loaded, scorer):
    image = scene(seed=3)
    regions = embed_frames(loaded, [image])
    crops = embed_frames(loaded, [image], crops=True)
    assert regions.shape == crops.shape and not np.allclose(regions, crops)
    assert Detector(scorer, Mode.NORMALITY, crops=True).feature_key.endswith("|crops")
    assert Detector(scorer, Mode.NORMALITY).describe()["normality_views"] == "regions"


def test_it_refuses_times_that_do_not_match_the_frames(scorer):
    detector = Detector(scorer)
    with pytest.raises(ValueError, match="2 times for 1 frames"):
        detector.decide([0.0, 1.0], *detector.encode([detector.prepare(scene())]))
