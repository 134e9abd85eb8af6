"""One analysis's decision per frame: prompts, a learned normal, or both.

- `prompts`: the prototype's score (softmax over the prompt ensembles), bit for bit.
- `normality`: the calibrated novelty of the frame against the camera's learned normal
  (normality.py), from the normalised, uncropped frame and its quadrants (features.py).
- `combined`: the larger of the two (normality.fuse says why).

The first `learn_seconds` of a video or stream are learning: their frames fill the memory
(normality, combined) and give the prompt scores' own normal range (the automatic
threshold), and they never count as anomalies. Every point keeps what went into it:
`prompt_score`, `novelty` (the calibrated novelty, 0.5 at its automatic threshold), the
final `score`, and whether it was `learning`.

The automatic threshold (`threshold="auto"`):
- normality: 0.5, where calibrated novelty puts "MARGIN spreads beyond the learned normal's
  99th percentile" (normality.Calibration);
- prompts: the learning frames' 99th-percentile prompt score plus PROMPT_MARGIN, within
  [0.5, 0.95]: a camera whose ordinary frames already score 0.7 against the prompts (the
  drift that makes fixed thresholds fail) gets a threshold above that;
- combined: the larger of the two.
With nothing learned, prompts fall back to DEFAULT_THRESHOLD and say so in `warnings`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import torch

from .errors import EngineError
from .features import embed_frames, encode_fitted, prepare, uses_tokens
from .limits import MAX_LEARN_SECONDS
from .limits import MODES as _MODES
from .normality import AUTO_THRESHOLD, NormalityModel
from .preprocess import fit_frame, to_tensor
from .scoring import Scorer, encode_images

DEFAULT_THRESHOLD = 0.6
PROMPT_MARGIN = 0.05
MAX_AUTO = 0.95


class Mode(StrEnum):
    PROMPTS = "prompts"
    NORMALITY = "normality"
    COMBINED = "combined"


MODES = _MODES  # the portal's choices read them from limits (no torch import there)
AUTO = "auto"


def parse_mode(value: object) -> Mode:
    try:
        return Mode(str(value))
    except ValueError:
        raise EngineError(f"mode must be one of {', '.join(MODES)}, got {value!r}") from None


def parse_learn_seconds(value: object) -> float:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise EngineError(f"learning seconds {value!r} is not a number") from None
    if not (0.0 <= seconds <= MAX_LEARN_SECONDS):
        raise EngineError(
            f"learning seconds must lie between 0 and {MAX_LEARN_SECONDS:.0f}, got {value!r}"
        )
    return seconds


@dataclass(frozen=True)
class Point:
    score: float
    prompt_score: float | None
    novelty: float | None
    normal: float  # cosine similarity to the normal prompts
    anomaly: float  # ... and to the anomaly prompts
    learning: bool


@dataclass
class Inputs:
    """A frame prepared in the decoder thread for whichever passes the detector needs."""

    prompt: np.ndarray | None
    normality: np.ndarray | None


@dataclass
class Detector:
    scorer: Scorer
    mode: Mode = Mode.PROMPTS
    learn_seconds: float = 0.0
    threshold: float | str = DEFAULT_THRESHOLD
    # Normality views embedded one by one (five passes) rather than from one pass's tokens.
    crops: bool | None = None
    # Learned from the first `learn_seconds`, then frozen; examples are added on top.
    learned: NormalityModel = field(default_factory=NormalityModel)
    learned_prompt_scores: list[float] = field(default_factory=list)
    learning_done: bool = False
    # Where the learning period starts (seconds): 0, or where a resumed run relearns.
    learn_offset: float = 0.0
    warnings: list[str] = field(default_factory=list)
    _buffer: list[np.ndarray] = field(default_factory=list)
    _examples: tuple[np.ndarray, np.ndarray] | None = None
    _model: NormalityModel | None = None
    _relearn: bool = False

    def __post_init__(self) -> None:
        self.mode = parse_mode(self.mode)
        self.learn_seconds = parse_learn_seconds(self.learn_seconds)
        if self.learn_seconds == 0:
            self.learning_done = True

    # --- what to compute -------------------------------------------------------------

    @property
    def uses_normality(self) -> bool:
        return self.mode is not Mode.PROMPTS

    @property
    def uses_prompt_pass(self) -> bool:
        # Normality mode reads its (informative) prompt score off the normality pass.
        return self.mode is not Mode.NORMALITY

    def prepare(self, frame_bgr: np.ndarray) -> Inputs:
        loaded = self.scorer.loaded
        return Inputs(
            fit_frame(frame_bgr, loaded.preprocess) if self.uses_prompt_pass else None,
            prepare(loaded, frame_bgr, self.crops) if self.uses_normality else None,
        )

    def encode(self, inputs: Sequence[Inputs]) -> tuple[torch.Tensor | None, np.ndarray | None]:
        """The forward passes for a batch of one detector's frames."""
        loaded = self.scorer.loaded
        features = views = None
        if self.uses_prompt_pass:
            features = encode_images(loaded, to_tensor([i.prompt for i in inputs], loaded))
        if self.uses_normality:
            views = encode_fitted(loaded, [i.normality for i in inputs])
        return features, views

    @property
    def uses_crops(self) -> bool:
        return bool(self.crops) or not uses_tokens(self.scorer.loaded)

    @property
    def feature_key(self) -> str:
        """Which embeddings this detector compares: the model, its weights, the views.
        Embeddings under another key cannot be compared with these."""
        spec = self.scorer.loaded.spec
        return f"{spec.name}|{spec.pretrained}|{'crops' if self.uses_crops else 'regions'}"

    def embed(self, frames_bgr: Sequence[np.ndarray], batch_size: int = 16) -> np.ndarray:
        """Normality features of frames (examples), exactly as this detector embeds."""
        return embed_frames(self.scorer.loaded, frames_bgr, batch_size, crops=self.crops)

    # --- deciding --------------------------------------------------------------------

    def is_learning(self, time_s: float) -> bool:
        return not self.learning_done and time_s < self.learn_offset + self.learn_seconds

    def relearn_from_next_frame(self) -> None:
        """A run resumed after its learning frames, with what they taught lost (a worker
        died before saving it): learn `learn_seconds` again from the next frame on."""
        if self.learn_seconds > 0 and not self.learning_done:
            self._relearn = True

    def decide(
        self,
        times: Sequence[float],
        features: torch.Tensor | None,
        views: np.ndarray | None,
    ) -> list[Point]:
        """Points for a batch of frames in time order (features from `encode`)."""
        if features is None:
            if views is None:
                raise ValueError("decide() needs features, views or both")
            features = torch.from_numpy(np.ascontiguousarray(views[:, 0]))
        if len(features) != len(times):
            raise ValueError(f"{len(times)} times for {len(features)} frames")
        prompt = self.scorer.score_features(features)
        if self._relearn and times:
            self.learn_offset, self._relearn = float(times[0]), False
        learning = [self.is_learning(t) for t in times]
        for k in np.flatnonzero(learning):
            self.learned_prompt_scores.append(float(prompt.score[k]))
            if views is not None:
                self._buffer.append(views[k])
        deciding = [k for k, flag in enumerate(learning) if not flag]
        novelty: dict[int, float] = {}
        if deciding:
            self.finish_learning()  # a no-op unless the learning period just ended
            if views is not None:
                scores = self.normality.score(views[deciding])
                novelty = {k: float(s) for k, s in zip(deciding, scores, strict=True)}
        points = []
        for k, is_learning in enumerate(learning):
            prompt_score = float(prompt.score[k])
            frame_novelty = novelty.get(k)
            if is_learning:
                score = 0.0 if self.mode is Mode.NORMALITY else prompt_score
            elif frame_novelty is None:
                score = prompt_score
            elif self.mode is Mode.NORMALITY:
                score = frame_novelty
            else:
                score = max(prompt_score, frame_novelty)
            points.append(
                Point(
                    float(score),
                    prompt_score,
                    frame_novelty,
                    float(prompt.normal[k]),
                    float(prompt.anomaly[k]),
                    is_learning,
                )
            )
        return points

    def finish_learning(self) -> None:
        """Close the learning period: learn the buffered frames (also at the end of a file
        shorter than the learning time)."""
        if self.learning_done:
            return
        self.learning_done = True
        if self._buffer:
            self.learned.learn(np.stack(self._buffer))
            self._buffer = []
        self._model = None
        if self.uses_normality and not self.has_normal:
            raise EngineError(
                "normality mode learned nothing: the learning period held no scorable frame "
                "and there are no normal examples"
            )

    # --- the memory ------------------------------------------------------------------

    @property
    def has_normal(self) -> bool:
        return self.learned.learned > 0 or (
            self._examples is not None and len(self._examples[0]) > 0
        )

    @property
    def normality(self) -> NormalityModel:
        """The learned memory plus the operator's examples (rebuilt when those change)."""
        if self._model is None:
            self._model = self._build()
        return self._model

    def _build(self) -> NormalityModel:
        if self._examples is None or not any(len(e) for e in self._examples):
            model = self.learned
        else:
            normal, anomalies = self._examples
            model = NormalityModel()
            for view, memory in enumerate(model.normal):
                memory.vectors = self.learned.normal[view].vectors.copy()
            if len(normal):
                model.learn(normal)
            elif self.learned.learned:
                model.calibrations = list(self.learned.calibrations)
            if len(anomalies):
                model.learn_anomalies(anomalies)
        if not model.calibrations:
            raise EngineError(
                "normality mode has nothing to compare with: give it learning seconds or "
                "normal examples"
            )
        return model

    def set_examples(self, normal: np.ndarray, anomalies: np.ndarray) -> None:
        """Operator examples (views arrays (n, views, dim)): normal ones join the memory,
        anomalies form the second memory. Takes effect from the next frame."""
        self._examples = (_views(normal), _views(anomalies))
        self._model = None

    # --- thresholds ------------------------------------------------------------------

    @property
    def auto_threshold(self) -> float | None:
        """The automatic threshold, once known (see the module docstring)."""
        prompt_auto = None
        if self.learned_prompt_scores and self.learning_done:
            high = float(np.quantile(self.learned_prompt_scores, 0.99)) + PROMPT_MARGIN
            prompt_auto = min(MAX_AUTO, max(AUTO_THRESHOLD, high))
        if self.mode is Mode.PROMPTS:
            return prompt_auto
        if self.mode is Mode.NORMALITY:
            return AUTO_THRESHOLD
        return max(AUTO_THRESHOLD, prompt_auto or AUTO_THRESHOLD)

    @property
    def threshold_in_use(self) -> float:
        if self.threshold != AUTO:
            return float(self.threshold)
        auto = self.auto_threshold
        if auto is not None:
            return auto
        if self.learning_done and self.mode is Mode.PROMPTS:
            warning = (
                f"automatic threshold: nothing was learned (learning seconds 0), "
                f"so the default {DEFAULT_THRESHOLD} is used"
            )
            if warning not in self.warnings:
                self.warnings.append(warning)
        return DEFAULT_THRESHOLD

    def describe(self) -> dict[str, object]:
        return {
            "mode": self.mode.value,
            "learn_seconds": self.learn_seconds,
            "learned_frames": len(self.learned_prompt_scores),
            "anomaly_threshold": self.threshold_in_use,
            "auto_threshold": self.auto_threshold,
            "threshold_mode": AUTO if self.threshold == AUTO else "fixed",
            **(
                {"normality_views": "crops" if self.uses_crops else "regions"}
                if self.uses_normality
                else {}
            ),
        }

    # --- persistence -----------------------------------------------------------------

    def learned_state(self) -> bytes:
        """What the learning period produced, to resume without relearning (npz bytes)."""
        arrays = {f"view{v}": m.vectors for v, m in enumerate(self.learned.normal)}
        arrays["prompt_scores"] = np.asarray(self.learned_prompt_scores, np.float32)
        out = io.BytesIO()
        np.savez_compressed(out, **arrays)
        return out.getvalue()

    def restore_learned(self, data: bytes) -> None:
        with np.load(io.BytesIO(data)) as arrays:
            for view, memory in enumerate(self.learned.normal):
                memory.vectors = arrays[f"view{view}"].astype(np.float32)
            self.learned_prompt_scores = [float(s) for s in arrays["prompt_scores"]]
        if self.learned.learned:
            self.learned.recalibrate()
        self.learning_done = True
        self._buffer = []
        self._model = None


def _views(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, np.float32)
    return array.reshape(0, 0, 0) if array.size == 0 else array
