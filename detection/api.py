"""The programmatic API: score an image or a whole video in one call.

    from detection.api import analyze_image, analyze_video, compute_anomaly_scores

Results are plain dictionaries shaped like the prototype's (`status`, `error_message`,
`data`, `metadata`). Bad input (a missing, empty, corrupt or non-video file, an empty
prompt, an impossible sampling rate or threshold, weights that cannot be loaded) comes back
as `{"status": "Error", "error_message": ...}`, never as an exception.

Outside a Django project, the settings module `portal.settings` is set up on first use so
the same environment variables (DETECTION_MODEL, DETECTION_PRETRAINED, ...) apply.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2

from detection.engine.sources import (
    LiveSource,
    SourceError,
    SourceStatus,
    StreamSource,
    WebcamSource,
)

from .engine import (
    PROTOTYPE_LOGIT_SCALE,
    EngineError,
    MediaError,
    ModelSpec,
    Scorer,
    VideoReader,
    VideoStats,
    compute_anomaly_scores,
    load_image,
    load_model,
    score_video,
    validate_sampling_fps,
)
from .engine.detector import AUTO, Detector, parse_learn_seconds, parse_mode
from .engine.examples import read_examples
from .engine.images import ImageInput
from .engine.pipeline import Stopwatch, run_metadata
from .engine.prompt_help import sound_warnings
from .engine.prompts import Prompts, normalize_prompts
from .engine.schedule import Ticker
from .engine.video import DEFAULT_BLACK_LEVEL, is_black

__all__ = [
    "PROTOTYPE_LOGIT_SCALE",
    "analyze_image",
    "analyze_stream",
    "analyze_video",
    "compute_anomaly_scores",
]

DEFAULT_THRESHOLD = 0.6
Threshold = float | str  # a number in (0, 1), or "auto"
Examples = Sequence[str | Path]
Progress = Callable[[int, int], None]  # (frames decoded, frames expected or 0 if unknown)


def _configured() -> tuple[ModelSpec, int, float | None]:
    from django.conf import settings

    if not settings.configured:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
        import django

        django.setup()
    from . import conf

    return conf.model_spec(), conf.batch_size(), conf.logit_scale()


def _check_threshold(threshold: Threshold, *, auto: bool = False) -> Threshold:
    if auto and threshold == AUTO:
        return AUTO
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise EngineError(f"threshold {threshold!r} is not a number") from None
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        raise EngineError(f"threshold must lie strictly between 0 and 1, got {threshold!r}")
    return value


def _error(exc: BaseException) -> dict[str, Any]:
    return {"status": "Error", "error_message": str(exc), "data": [], "metadata": {}}


def _label(score: float, threshold: float, learning: bool = False) -> str:
    if learning:
        return "Learning"
    return "Anomaly" if score >= threshold else "Normal"


def _detector(
    scorer: Scorer,
    mode: str,
    learn_seconds: float,
    threshold: Threshold,
    normal_examples: Examples,
    anomaly_examples: Examples,
    batch_size: int,
) -> Detector:
    """A detector with the caller's examples embedded (examples need a normality mode)."""
    from . import conf

    detector = Detector(
        scorer,
        parse_mode(mode),
        parse_learn_seconds(learn_seconds),
        threshold,
        crops=conf.normality_crops(),
    )
    if (normal_examples or anomaly_examples) and not detector.uses_normality:
        raise EngineError(
            "examples are compared image to image: use mode normality or combined "
            f"(mode is {detector.mode.value})"
        )
    if detector.uses_normality:
        normal = detector.embed(read_examples(normal_examples), batch_size)
        anomalies = detector.embed(read_examples(anomaly_examples), batch_size)
        detector.set_examples(normal, anomalies)
        if detector.learn_seconds == 0 and not len(normal):
            raise EngineError(
                f"mode {detector.mode.value} needs a normal to compare with: give learning "
                "seconds or normal examples"
            )
    return detector


def _check_examples(*groups: Examples) -> None:
    for paths in groups:
        for path in paths:
            if not Path(path).is_file():
                raise MediaError(f"{path}: example file not found")


def analyze_image(
    image: ImageInput,
    normal_prompts: Prompts,
    anomaly_prompts: Prompts,
    *,
    threshold: Threshold = DEFAULT_THRESHOLD,
    logit_scale: float | None = None,
    localize: bool = False,
    spec: ModelSpec | None = None,
    mode: str = "prompts",
    normal_examples: Examples = (),
    anomaly_examples: Examples = (),
) -> dict[str, Any]:
    """Score one image (path, bytes, PIL image or BGR array; format read from content).

    Returns `{"status", "normal", "anomaly", "score", "label", ...}`: raw cosine similarities
    to each prompt ensemble, the probability of anomaly and Normal/Anomaly at `threshold`.
    With `mode` normality or combined, the image is compared with the normal examples
    (images or clips) and any anomaly examples; `prompt_score` and `novelty` say what went
    into `score`.
    """
    try:
        threshold = _check_threshold(threshold, auto=True)
        parse_mode(mode)
        _check_examples(normal_examples, anomaly_examples)
        default_spec, default_batch, default_scale = _configured()
        frame = load_image(image)
        loaded = load_model(spec or default_spec)
        scorer = Scorer(
            loaded,
            normal_prompts,
            anomaly_prompts,
            logit_scale if logit_scale is not None else default_scale,
        )
        detector = _detector(
            scorer, mode, 0.0, threshold, normal_examples, anomaly_examples, default_batch
        )
        point = detector.decide([0.0], *detector.encode([detector.prepare(frame)]))[0]
        score = point.score
        threshold = detector.threshold_in_use
        out: dict[str, Any] = {
            "status": "Success",
            "error_message": None,
            "normal": point.normal,
            "anomaly": point.anomaly,
            "score": score,
            "prompt_score": point.prompt_score,
            "novelty": point.novelty,
            "label": _label(score, threshold),
            "threshold": threshold,
            **detector.describe(),
            "warnings": [
                *sound_warnings(scorer.normal_prompts, scorer.anomaly_prompts),
                *detector.warnings,
            ],
            "logit_scale": scorer.logit_scale,
            "width": int(frame.shape[1]),
            "height": int(frame.shape[0]),
            "normal_prompts": list(scorer.normal_prompts),
            "anomaly_prompts": list(scorer.anomaly_prompts),
            **loaded.describe(),
        }
        if isinstance(image, (str, Path)):
            out["path"] = str(image)
        if localize and score >= threshold:
            box = scorer.localize(frame)
            out["box"] = {
                "x0": box.x0,
                "y0": box.y0,
                "x1": box.x1,
                "y1": box.y1,
                "score": box.score,
            }
        return out
    except EngineError as exc:
        return _error(exc)
    except cv2.error as exc:
        return _error(MediaError(f"OpenCV could not process the image: {exc.msg or exc}"))


def analyze_video(
    video_path: str | Path,
    prompt_normal: Prompts,
    prompt_anomaly: Prompts,
    sampling_rate_fps: float = 1.0,
    *,
    threshold: Threshold = DEFAULT_THRESHOLD,
    skip_black_frames: bool = True,
    black_level: float = DEFAULT_BLACK_LEVEL,
    batch_size: int | None = None,
    logit_scale: float | None = None,
    spec: ModelSpec | None = None,
    progress: Progress | None = None,
    mode: str = "prompts",
    learn_seconds: float = 0.0,
    normal_examples: Examples = (),
    anomaly_examples: Examples = (),
) -> dict[str, Any]:
    """Score a video file at `sampling_rate_fps`; the prototype's result dictionary.

    `data` holds one item per scored frame: `time_s`, `frame_index`, `score` (probability of
    anomaly), `normal`/`anomaly` (raw cosine similarities) and `label`. `metadata` holds the
    prototype's statistics plus what decoding found (`header_mismatch`, `ended_early`, ...).

    `mode` (prompts, normality, combined), `learn_seconds` (the first seconds are learned as
    normal, never anomalies: `learning` is true on their points), `normal_examples` and
    `anomaly_examples` (image or clip paths) and `threshold="auto"` teach it the camera's
    normal: see detection/engine/detector.py. Points gain `prompt_score` and `novelty`;
    metadata gains `mode`, `learned_frames`, `anomaly_threshold` (the one used) and
    `auto_threshold`.
    """
    clock = Stopwatch()
    try:
        threshold = _check_threshold(threshold, auto=True)
        parse_mode(mode)
        parse_learn_seconds(learn_seconds)
        _check_examples(normal_examples, anomaly_examples)
        default_spec, default_batch, default_scale = _configured()
        validate_sampling_fps(sampling_rate_fps)
        batch_size = int(batch_size or default_batch)
        if batch_size < 1:
            raise EngineError(f"batch size must be at least 1, got {batch_size}")
        with VideoReader(video_path) as reader:
            # Probe the file before the (slow) model load, so bad input fails fast.
            loaded = load_model(spec or default_spec)
            scorer = Scorer(
                loaded,
                prompt_normal,
                prompt_anomaly,
                logit_scale if logit_scale is not None else default_scale,
            )
            detector = _detector(
                scorer,
                mode,
                learn_seconds,
                threshold,
                normal_examples,
                anomaly_examples,
                batch_size,
            )

            def report(stats: VideoStats) -> None:
                if progress is not None:
                    progress(stats.frames_decoded, stats.header_frames)

            frames = [
                f
                for batch in score_video(
                    reader,
                    detector,
                    sampling_rate_fps,
                    batch_size=batch_size,
                    skip_black=skip_black_frames,
                    black_level=black_level,
                    on_progress=report,
                )
                for f in batch
            ]
            stats = reader.stats
    except EngineError as exc:
        return _error(exc)
    except cv2.error as exc:
        return _error(MediaError(f"{video_path}: OpenCV could not decode the video: {exc.msg}"))

    seconds = clock.seconds
    threshold = detector.threshold_in_use
    if frames and all(f.learning for f in frames):
        detector.warnings.append(
            f"the video ended within the learning period ({detector.learn_seconds:g} s): "
            "every frame was learned as normal, none was judged"
        )
    data = [
        {
            "time_s": f.time_s,
            "frame_index": f.frame_index,
            "score": f.score,
            "prompt_score": f.prompt_score,
            "novelty": f.novelty,
            "learning": f.learning,
            "normal": f.normal,
            "anomaly": f.anomaly,
            "label": _label(f.score, threshold, f.learning),
        }
        for f in frames
    ]
    metadata: dict[str, Any] = {
        **run_metadata(stats, frames, threshold, scorer),
        **detector.describe(),
        "warnings": [
            *sound_warnings(scorer.normal_prompts, scorer.anomaly_prompts),
            *stats.warnings,
            *detector.warnings,
        ],
        "sampling_rate_fps": float(sampling_rate_fps),
        "skip_black_frames": skip_black_frames,
        "batch_size": batch_size,
        "processing_seconds": seconds,
        "scored_frames_per_second": len(frames) / seconds if seconds > 0 else None,
    }
    return {"status": "Success", "error_message": None, "data": data, "metadata": metadata}


def _check_stream_limits(
    window_size: int, max_frames: int | None, duration_s: float | None
) -> None:
    for name, value in (("window size", window_size), ("max_frames", max_frames)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise EngineError(f"{name} must be a whole number of at least 1, got {value!r}")
    if duration_s is not None and not (
        isinstance(duration_s, (int, float)) and math.isfinite(duration_s) and duration_s > 0
    ):
        raise EngineError(f"duration must be a positive number of seconds, got {duration_s!r}")


def _live_source(source: object) -> LiveSource:
    if isinstance(source, int) and not isinstance(source, bool):
        return WebcamSource(source)
    if isinstance(source, str):
        return StreamSource(source)
    raise SourceError(f"a source is a LiveSource, a stream URL or a webcam index, not {source!r}")


def _next_frame(live: LiveSource, timeout: float) -> tuple[Any, bool]:
    """The newest frame (or None), and whether the source has given up for good."""
    frame = live.latest(timeout=timeout)
    if frame is not None:
        return frame, False
    gave_up = live.status in (SourceStatus.OFFLINE, SourceStatus.FAILED)
    return None, not live.running or (gave_up and bool(live.last_error))


def _stream_scores(
    live: LiveSource,
    scorer: Scorer,
    ticker: Ticker,
    *,
    threshold: float,
    window_size: int,
    max_frames: int | None,
    duration_s: float | None,
    black_level: float | None,
) -> Iterator[dict[str, Any]]:
    """analyze_stream's loop: the worker's schedule (the newest frame at each tick, never a
    burst to catch up) and black-frame test; one item per scored frame."""
    deadline = time.monotonic() + duration_s if duration_s is not None else math.inf
    window: deque[float] = deque(maxlen=window_size)
    scored = skipped = 0
    while max_frames is None or scored < max_frames:
        now = time.monotonic()
        if now >= deadline:
            return
        if not ticker.due(now):
            time.sleep(min(ticker.next_due, deadline) - now)
            continue
        frame, ended = _next_frame(live, min(0.5, deadline - now))
        if frame is None:
            if not ended:
                continue
            if live.last_error:
                why = f"{live.name} is {live.status.value}: {live.last_error}"
                yield _error(SourceError(why))
            return
        ticker.advance(time.monotonic())
        if black_level is not None and is_black(frame.image, black_level):
            skipped += 1
            continue
        try:
            result = scorer.score_frames([frame.image])
        except EngineError as exc:
            yield _error(exc)
            return
        except cv2.error as exc:
            yield _error(MediaError(f"OpenCV could not process a frame: {exc.msg or exc}"))
            return
        score = float(result.score[0])
        window.append(score)
        scored += 1
        yield {
            "status": "Success",
            "error_message": None,
            "time_s": frame.time_s,
            "frame_index": frame.index,
            "captured_at": frame.captured_at.isoformat(),
            "score": score,
            "normal": float(result.normal[0]),
            "anomaly": float(result.anomaly[0]),
            "label": _label(score, threshold),
            "threshold": threshold,
            "window": list(window),
            "source_status": live.status.value,
            "reconnects": live.reconnects,
            "black_frames_skipped": skipped,
            "random_weights": scorer.loaded.random_weights,
        }


def analyze_stream(
    source: LiveSource | str | int,
    prompt_normal: Prompts,
    prompt_anomaly: Prompts,
    sampling_rate_fps: float = 1.0,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    window_size: int = 60,
    max_frames: int | None = None,
    duration_s: float | None = None,
    skip_black_frames: bool = True,
    black_level: float = DEFAULT_BLACK_LEVEL,
    logit_scale: float | None = None,
    spec: ModelSpec | None = None,
) -> Iterator[dict[str, Any]]:
    """Score a live source's newest frame every 1 / `sampling_rate_fps` s; yield each score.

    `source`: a `detection.engine.sources.LiveSource` (started here if it is not yet), a stream URL
    (rtsp/rtsps/http/https) or a webcam device index. Each item holds `time_s` (seconds since
    the source started), `frame_index`, `captured_at` (ISO 8601, UTC), `score`, `normal`,
    `anomaly`, `label`, `window` (the last `window_size` scores, oldest first), `status`
    ("Success"), `source_status` and `random_weights`. Stale frames are never scored: a slow
    consumer gets the newest frame at each tick; black frames are skipped.

    Ends after `max_frames` scores or `duration_s` seconds, when the consumer closes the
    generator, when a file source ends, or when the source gives up (offline after its
    failed attempts, or failed). Bad input, unusable weights and a source that gives up
    yield one `{"status": "Error", "error_message": ...}` item. The source is always
    stopped at the end, including one the caller passed in.
    """
    live: LiveSource | None = source if isinstance(source, LiveSource) else None
    try:
        try:
            threshold = _check_threshold(threshold)
            rate = validate_sampling_fps(sampling_rate_fps)
            _check_stream_limits(window_size, max_frames, duration_s)
            # Prompts are checked before the (slow) model load, so bad input fails fast.
            normalize_prompts(prompt_normal, "normal")
            normalize_prompts(prompt_anomaly, "anomaly")
            live = live or _live_source(source)
            if live.sample_interval_s is None:
                # Told how often it is sampled, a source decodes only what is scored (only
                # keyframes, when they come often enough, in the `auto` decode mode).
                live.sample_interval_s = 1.0 / rate
            default_spec, _, default_scale = _configured()
            scorer = Scorer(
                load_model(spec or default_spec),
                prompt_normal,
                prompt_anomaly,
                logit_scale if logit_scale is not None else default_scale,
            )
        except (EngineError, SourceError) as exc:
            yield _error(exc)
            return

        if not live.started:
            live.start()
        yield from _stream_scores(
            live,
            scorer,
            Ticker(1.0 / rate, time.monotonic()),
            threshold=threshold,
            window_size=window_size,
            max_frames=max_frames,
            duration_s=duration_s,
            black_level=black_level if skip_black_frames else None,
        )
    finally:
        if live is not None:
            live.stop()
