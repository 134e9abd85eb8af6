"""Measuring a configuration on labelled videos: frame-level ROC-AUC, AP, best F1 and the
flag rates at the threshold in use (`manage.py evaluate`; docs/quality.md).

Each video is sampled at `fps` and each sampled frame is embedded once: every prompt set
being compared gets its own `Detector` (fresh per video: learning is per camera), and all of
them decide on the same encoded features. A frame is anomalous when its time falls in one
of the video's labelled intervals (labels.py); learning frames are left out of every
number, as they are never anomalies.

Numbers come per video and pooled over all videos (the frames of every video in one
ranking), and per kind of anomaly where the labels name kinds (that kind's frames against
every normal frame). AUC, AP and F1 need both classes: where a video has one only, they
are None and `note` says why.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics
from .detector import Detector, Inputs, Mode
from .errors import EngineError, PromptError
from .labels import LabelledVideo, Labels
from .loader import LoadedModel
from .pipeline import prefetch
from .prompts import normalize_prompts
from .scoring import Scorer
from .video import VideoReader, VideoStats

Progress = Callable[[str, VideoStats], None]  # (video name, its decoding so far)
MAX_PROMPT_SETS = 32


# --- prompt sets -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptSet:
    name: str
    normal: tuple[str, ...]
    anomaly: tuple[str, ...]


def prompt_set(name: str, normal: Sequence[str] | str, anomaly: Sequence[str] | str) -> PromptSet:
    return PromptSet(
        name,
        normalize_prompts(normal, f"{name!r} normal"),
        normalize_prompts(anomaly, f"{name!r} anomaly"),
    )


def read_prompt_sets(path: str | Path) -> list[PromptSet]:
    """Named prompt sets from a JSON file, in the file's order:

        {"street": {"normal": ["a quiet street"], "anomaly": ["a car crash", "a fire"]},
         "generic": {"normal": "a normal scene", "anomaly": "an accident"}}

    A class is a list of prompts or one string (one prompt per line), as in the API.
    """
    path = Path(path)
    if not path.is_file():
        raise PromptError(f"{path}: prompts file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError:
        raise PromptError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise PromptError(f"{path}, line {exc.lineno}: not JSON: {exc.msg}") from None
    if not isinstance(data, dict) or not data:
        raise PromptError(
            f'{path}: expected a JSON object of named sets, {{"name": {{"normal": [...], '
            f'"anomaly": [...]}}}}'
        )
    if len(data) > MAX_PROMPT_SETS:
        raise PromptError(f"{path}: {len(data)} prompt sets; at most {MAX_PROMPT_SETS}")
    sets = []
    for name, body in data.items():
        if not name.strip():
            raise PromptError(f"{path}: a prompt set has an empty name")
        if not isinstance(body, dict) or set(body) != {"normal", "anomaly"}:
            raise PromptError(
                f"{path}: set {name!r} must hold exactly the keys 'normal' and 'anomaly'"
            )
        try:
            sets.append(prompt_set(name, body["normal"], body["anomaly"]))
        except PromptError as exc:
            raise PromptError(f"{path}: {exc}") from None
    return sets


# --- scoring ---------------------------------------------------------------------------------


@dataclass
class Series:
    """One video's frames as one prompt set's detector judged them (learning frames kept
    apart: they count nowhere)."""

    times: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    labels: list[bool] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    learning_frames: int = 0
    threshold: float = 0.0  # the detector's threshold in use at the end of the video
    auto_threshold: float | None = None

    @property
    def flagged(self) -> np.ndarray:
        return np.asarray(self.scores, np.float64) >= self.threshold


@dataclass
class VideoRun:
    video: LabelledVideo
    series: dict[str, Series]  # per prompt set
    stats: VideoStats


@dataclass
class Evaluation:
    labels: Labels
    sets: list[PromptSet]
    mode: Mode
    learn_seconds: float
    fps: float
    threshold: float | str
    skip_black: bool
    model: dict[str, Any]
    runs: list[VideoRun] = field(default_factory=list)
    frames_encoded: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        """The JSON document `manage.py evaluate --json` prints (docs/quality.md)."""
        sets = {s.name: self._set_report(s) for s in self.sets}
        first = sets[self.sets[0].name]
        return {
            "labels": {
                "path": str(self.labels.path),
                "format": self.labels.format,
                "videos": len(self.labels.videos),
            },
            "mode": self.mode.value,
            "learn_seconds": self.learn_seconds,
            "fps": self.fps,
            "threshold": self.threshold,
            "skip_black_frames": self.skip_black,
            **self.model,
            "set": self.sets[0].name,
            "overall": first["overall"],
            "videos": first["videos"],
            "kinds": first["kinds"],
            "sets": sets,
            "frames_encoded": self.frames_encoded,
            "seconds": round(self.seconds, 3),
            "warnings": list(self.warnings),
        }

    def _set_report(self, prompts: PromptSet) -> dict[str, Any]:
        series = [(run, run.series[prompts.name]) for run in self.runs]
        videos = []
        for run, s in series:
            block = measure(s.labels, s.scores, s.flagged)
            videos.append(
                {
                    "video": run.video.name,
                    **block,
                    "learning_frames": s.learning_frames,
                    "threshold": s.threshold,
                    "auto_threshold": s.auto_threshold,
                    "fps": run.stats.fps,
                    "anomalous_intervals": len(run.video.intervals),
                }
            )
        labels = np.concatenate([np.asarray(s.labels, bool) for _, s in series] or [[]])
        scores = np.concatenate([np.asarray(s.scores, float) for _, s in series] or [[]])
        flagged = np.concatenate([s.flagged for _, s in series] or [[]]).astype(bool)
        kinds = [k for _, s in series for k in s.kinds]
        thresholds = {s.threshold for _, s in series if s.scores}
        overall = {
            **measure(labels, scores, flagged),
            "learning_frames": sum(s.learning_frames for _, s in series),
            # Prompts mode learns an automatic threshold per video: then no single one.
            "threshold": thresholds.pop() if len(thresholds) == 1 else None,
            "videos": len(series),
        }
        by_kind = {}
        for kind in sorted({k for k in kinds if k}):
            pick = np.array([not lab or k == kind for lab, k in zip(labels, kinds, strict=True)])
            by_kind[kind] = {
                **measure(labels[pick], scores[pick], flagged[pick]),
                "threshold": overall["threshold"],
            }
        return {
            "normal": list(prompts.normal),
            "anomaly": list(prompts.anomaly),
            "overall": overall,
            "videos": videos,
            "kinds": by_kind,
        }


def measure(
    labels: Sequence[bool] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    flagged: Sequence[bool] | np.ndarray,
) -> dict[str, Any]:
    """Frame-level numbers for one set of judged frames."""
    y = np.asarray(labels, bool)
    s = np.asarray(scores, np.float64)
    f = np.asarray(flagged, bool)
    positives, negatives = int(y.sum()), int((~y).sum())
    out: dict[str, Any] = {
        "frames": len(y),
        "anomalous_frames": positives,
        "normal_frames": negatives,
        "auc": None,
        "ap": None,
        "best_threshold": None,
        "f1": None,
        "precision": None,
        "recall": None,
        # At the threshold in use: the share of anomalous frames flagged (recall) and of
        # normal frames flagged (the false-alarm rate).
        "anomalous_flagged": float(f[y].mean()) if positives else None,
        "normal_flagged": float(f[~y].mean()) if negatives else None,
        "note": None,
    }
    if positives and negatives:
        best = metrics.best_f1(y, s)
        out.update(
            auc=metrics.roc_auc(y, s),
            ap=metrics.average_precision(y, s),
            best_threshold=best.threshold,
            f1=best.f1,
            precision=best.precision,
            recall=best.recall,
        )
    elif not len(y):
        out["note"] = "no frame judged (all learning, or none sampled)"
    else:
        only = "anomalous" if positives else "normal"
        out["note"] = f"only {only} frames: AUC, AP and F1 need both classes (undefined)"
    return out


def _batches(
    frames: Iterator[Any], detector: Detector, batch_size: int
) -> Iterator[list[tuple[float, Inputs]]]:
    batch: list[tuple[float, Inputs]] = []
    for frame in frames:
        # Fitted to the model in the decoder thread, as the pipeline does.
        batch.append((frame.time_s, detector.prepare(frame.image)))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def evaluate(
    labels: Labels,
    loaded: LoadedModel,
    prompt_sets: Sequence[PromptSet],
    *,
    mode: Mode | str = Mode.PROMPTS,
    learn_seconds: float = 0.0,
    fps: float = 1.0,
    threshold: float | str = "auto",
    batch_size: int = 16,
    skip_black: bool = False,
    logit_scale: float | None = None,
    crops: bool | None = None,
    on_progress: Progress | None = None,
) -> Evaluation:
    """Score every labelled video under every prompt set; frames are encoded once.

    `crops`: the normality views embedded one by one (`Detector.crops`, the setting
    DETECTION_NORMALITY_VIEWS=crops) rather than read off one pass's patch tokens.
    """
    if not prompt_sets:
        raise PromptError("no prompt set to evaluate")
    names = [p.name for p in prompt_sets]
    if len(set(names)) != len(names):
        raise PromptError(f"prompt set names must differ: {', '.join(names)}")
    if batch_size < 1:
        raise EngineError(f"batch size must be at least 1, got {batch_size}")
    scorers = [Scorer(loaded, p.normal, p.anomaly, logit_scale) for p in prompt_sets]
    # Checks the mode, learning time and threshold before any video is read.
    probe = Detector(scorers[0], mode, learn_seconds, threshold, crops=crops)
    if probe.uses_normality and probe.learn_seconds == 0:
        raise EngineError(
            f"mode {probe.mode.value} compares frames with a learned normal: "
            "give learning seconds (--learn-seconds)"
        )
    result = Evaluation(
        labels,
        list(prompt_sets),
        probe.mode,
        probe.learn_seconds,
        fps,
        threshold,
        skip_black,
        {**loaded.describe(), **_views(probe)},
    )
    started = time.perf_counter()
    for video in labels.videos:
        detectors = [
            Detector(scorer, probe.mode, probe.learn_seconds, threshold, crops=crops)
            for scorer in scorers
        ]
        run = _run_video(video, detectors, names, fps, batch_size, skip_black, on_progress)
        result.runs.append(run)
        result.frames_encoded += run.stats.frames_sampled
        result.warnings += _video_warnings(run, probe.learn_seconds)
        for detector in detectors:
            result.warnings += [w for w in detector.warnings if w not in result.warnings]
    result.seconds = time.perf_counter() - started
    return result


def _views(detector: Detector) -> dict[str, str]:
    if not detector.uses_normality:
        return {}
    return {"normality_views": "crops" if detector.uses_crops else "regions"}


def _run_video(
    video: LabelledVideo,
    detectors: list[Detector],
    names: list[str],
    fps: float,
    batch_size: int,
    skip_black: bool,
    on_progress: Progress | None,
) -> VideoRun:
    series = {name: Series() for name in names}
    lead = detectors[0]  # every detector needs the same passes: one encodes for all

    def progress(stats: VideoStats) -> None:
        if on_progress is not None:
            on_progress(video.name, stats)

    with VideoReader(video.path) as reader:
        frames = reader.frames(fps, skip_black=skip_black, on_progress=progress)
        for batch in prefetch(_batches(frames, lead, batch_size)):
            times = [t for t, _ in batch]
            features, views = lead.encode([inputs for _, inputs in batch])
            intervals = [video.interval_at(t) for t in times]
            for name, detector in zip(names, detectors, strict=True):
                points = detector.decide(times, features, views)
                _record(series[name], times, points, intervals)
        stats = reader.stats
    for name, detector in zip(names, detectors, strict=True):
        detector.finish_learning()
        series[name].threshold = detector.threshold_in_use
        series[name].auto_threshold = detector.auto_threshold
    return VideoRun(video, series, stats)


def _record(series: Series, times: list[float], points: list[Any], intervals: list[Any]) -> None:
    for t, point, interval in zip(times, points, intervals, strict=True):
        if point.learning:
            series.learning_frames += 1
            continue
        series.times.append(t)
        series.scores.append(point.score)
        series.labels.append(interval is not None)
        series.kinds.append(interval.kind if interval is not None else "")


def _video_warnings(run: VideoRun, learn_seconds: float) -> list[str]:
    name, out = run.video.name, []
    if run.stats.frames_sampled == 0:
        out.append(f"{name}: no frame sampled (all black, or too short)")
        return out
    series = next(iter(run.series.values()))
    if not series.scores:
        out.append(
            f"{name}: every sampled frame fell in the learning period ({learn_seconds:g} s); "
            "nothing was judged"
        )
    if learn_seconds and any(i.start_s < learn_seconds for i in run.video.intervals):
        out.append(
            f"{name}: an anomalous interval starts within the learning period "
            f"({learn_seconds:g} s): those frames are learned as normal and not counted"
        )
    out += [f"{name}: {w}" for w in run.stats.warnings]
    return out
