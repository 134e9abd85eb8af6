"""An analysis's metadata as the results page shows it: human labels, a sensible order.

The worker stores a flat dict with the prototype's keys (detection.engine.pipeline
.run_metadata, Detector.describe, the upload's facts). Pages show each known key under a
label an operator understands ("Frames decoded", not frames_decoded), in the order below
(the outcome first, then the video, the run, the model); keys added later still show, under
their own name made readable, after the known ones. The exports keep the raw keys.
"""

from __future__ import annotations

import json
import math

# key: (label, unit shown after the value, or "")
LABELS: dict[str, tuple[str, str]] = {
    "is_anomaly_detected": ("Anomaly detected", ""),
    "max_anomaly_score": ("Peak score", ""),
    "max_anomaly_time": ("Peak at", "s"),
    "max_anomaly_frame_index": ("Peak frame", ""),
    "frames_above_threshold": ("Frames at or above the threshold", ""),
    "anomaly_threshold": ("Threshold in use", ""),
    "average_score": ("Average score", ""),
    "min_score": ("Lowest score", ""),
    "max_score": ("Highest score", ""),
    "std_score": ("Standard deviation of the scores", ""),
    "frames_scored": ("Frames scored", ""),
    "expected_frames": ("Frames expected at the sampling rate", ""),
    "total_frames": ("Frames decoded", ""),
    "total_seconds": ("Duration", "s"),
    "black_frames_skipped": ("Black frames skipped", ""),
    "sampling_rate_fps": ("Sampling rate", "frames/s"),
    "skip_black_frames": ("Skip black frames", ""),
    "uploaded_filename": ("Uploaded file", ""),
    "uploaded_bytes": ("Upload size", "bytes"),
    "width": ("Width", "px"),
    "height": ("Height", "px"),
    "codec": ("Codec", ""),
    "fps": ("Frame rate used for timestamps", "frames/s"),
    "fps_source": ("Frame rate from", ""),
    "header_fps": ("Frame rate in the header", "frames/s"),
    "header_frames": ("Frame count in the header", ""),
    "header_mismatch": ("Header count differs from the frames decoded", ""),
    "ended_early": ("Ended before the header's count", ""),
    "warnings": ("Warnings", ""),
    "mode": ("Scoring mode", ""),
    "learn_seconds": ("Learning period", "s"),
    "learned_frames": ("Frames learned as normal", ""),
    "auto_threshold": ("Automatic threshold", ""),
    "threshold_mode": ("Threshold", ""),
    "normality_views": ("Normality compares", ""),
    "phase": ("Phase", ""),
    "model": ("Model", ""),
    "pretrained": ("Weights", ""),
    "random_weights": ("Random weights (tests only)", ""),
    "device": ("Device", ""),
    "precision": ("Precision", ""),
    "logit_scale": ("Logit scale", ""),
    "normal_prompts": ("Normal prompts", ""),
    "anomaly_prompts": ("Anomaly prompts", ""),
}
ORDER = {key: position for position, key in enumerate(LABELS)}


def display_value(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return format(value, ".6g") if math.isfinite(value) else str(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "; ".join(value) if value else "none"
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def label(key: str) -> str:
    known = LABELS.get(key)
    if known:
        return known[0]
    text = key.replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def metadata_rows(metadata: object) -> list[tuple[str, str, str]]:
    """(label, value, key) rows; [] for anything but a dict (an old list, null)."""
    if not isinstance(metadata, dict):
        return []
    keys = sorted(map(str, metadata), key=lambda k: (ORDER.get(k, len(ORDER)), k))
    rows = []
    for key in keys:
        value = metadata[key]
        text = display_value(value)
        unit = LABELS.get(key, ("", ""))[1]
        if unit and value is not None and not isinstance(value, bool):
            text = f"{text} {unit}"
        rows.append((label(key), text, key))
    return rows
