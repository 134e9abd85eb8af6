from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from detection.api import analyze_image, analyze_video, compute_anomaly_scores
from tests.support.media import scene

NORMAL = ["a quiet street", "an empty corridor"]
ANOMALY = ["a fire", "a person lying on the floor"]

pytestmark = pytest.mark.usefixtures("tiny_settings")

METADATA_KEYS = {
    "total_frames",
    "total_seconds",
    "max_anomaly_score",
    "max_anomaly_time",
    "average_score",
    "min_score",
    "max_score",
    "std_score",
    "anomaly_threshold",
    "is_anomaly_detected",
    "random_weights",
    "header_mismatch",
    "ended_early",
    "fps",
    "frames_scored",
}


def test_it_analyzes_a_video_into_the_prototype_dictionary(make_video):
    path = make_video("street.mp4", frames=45, fps=15.0)
    result = analyze_video(path, NORMAL, ANOMALY, sampling_rate_fps=2.0)
    assert result["status"] == "Success" and result["error_message"] is None
    data, meta = result["data"], result["metadata"]
    assert [d["frame_index"] for d in data] == [0, 8, 15, 23, 30, 38]
    assert [d["time_s"] for d in data] == pytest.approx([i / 15 for i in (0, 8, 15, 23, 30, 38)])
    assert METADATA_KEYS <= meta.keys()
    scores = np.array([d["score"] for d in data])
    assert meta["total_frames"] == 45 and meta["total_seconds"] == pytest.approx(3.0)
    assert meta["max_anomaly_score"] == pytest.approx(scores.max())
    assert meta["max_anomaly_time"] == data[int(scores.argmax())]["time_s"]
    assert meta["average_score"] == pytest.approx(scores.mean())
    assert meta["std_score"] == pytest.approx(scores.std())
    assert meta["min_score"] == pytest.approx(scores.min())
    assert meta["anomaly_threshold"] == 0.6
    assert meta["is_anomaly_detected"] == bool(scores.max() >= 0.6)
    assert meta["random_weights"] is False
    for d in data:
        assert d["score"] == pytest.approx(
            float(compute_anomaly_scores(d["normal"], d["anomaly"], meta["logit_scale"]))
        )
        assert d["label"] == ("Anomaly" if d["score"] >= 0.6 else "Normal")


def test_it_scores_a_video_frame_as_it_scores_the_same_image(make_video, tmp_path):
    path = make_video("lossless.avi", frames=10, fps=10.0, codec="FFV1")
    video = analyze_video(path, NORMAL, ANOMALY, sampling_rate_fps=1.0)
    cv2.imwrite(str(tmp_path / "first.png"), scene(240, 320, seed=1, t=0.0))
    image = analyze_image(tmp_path / "first.png", NORMAL, ANOMALY)
    assert video["data"][0]["score"] == pytest.approx(image["score"], abs=1e-6)
    assert video["data"][0]["normal"] == pytest.approx(image["normal"], abs=1e-6)


def test_it_uses_the_prototype_scale_when_asked(make_video, settings):
    path = make_video("street.avi", frames=10)
    settings.DETECTION_LOGIT_SCALE = 100.0
    result = analyze_video(path, NORMAL, ANOMALY)
    assert result["metadata"]["logit_scale"] == 100.0
    one = analyze_video(path, NORMAL, ANOMALY, logit_scale=7.0)
    assert one["metadata"]["logit_scale"] == 7.0
    d = one["data"][0]
    assert d["score"] == pytest.approx(
        float(compute_anomaly_scores(d["normal"], d["anomaly"], 7.0))
    )


def test_it_flags_random_weights(make_video, settings):
    settings.DETECTION_PRETRAINED = "none"
    result = analyze_video(make_video("x.avi", frames=5), NORMAL, ANOMALY)
    assert result["metadata"]["random_weights"] is True
    assert analyze_image(scene(), NORMAL, ANOMALY)["random_weights"] is True


def test_it_describes_what_decoding_found(make_video):
    path = make_video("cut.avi", frames=40, fps=10.0, black=(0,))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    meta = analyze_video(path, NORMAL, ANOMALY)["metadata"]
    assert meta["header_frames"] == 40 and meta["total_frames"] < 40
    assert meta["ended_early"] and meta["header_mismatch"]
    assert meta["black_frames_skipped"] == 1
    assert any("truncated" in w for w in meta["warnings"])
    # Exactly what happens, in the container's own terms (the portal's upload refuses it).
    assert any(
        w.startswith("the file is truncated: it ends at byte")
        and w.endswith("only the frames present are analysed")
        for w in meta["warnings"]
    ), meta["warnings"]


def test_it_reports_progress(make_video):
    seen = []
    analyze_video(
        make_video("p.avi", frames=60),
        NORMAL,
        ANOMALY,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen[-1] == (60, 60)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt_normal": "  "}, "normal prompt is empty"),
        ({"prompt_anomaly": []}, "anomaly prompt is empty"),
        ({"sampling_rate_fps": 0}, "sampling rate must be a positive number"),
        ({"sampling_rate_fps": -2}, "sampling rate must be a positive number"),
        ({"threshold": 1.5}, "threshold must lie strictly between 0 and 1"),
    ],
)
def test_it_returns_errors_for_bad_arguments(make_video, kwargs, message):
    args = {
        "video_path": make_video("ok.avi"),
        "prompt_normal": NORMAL,
        "prompt_anomaly": ANOMALY,
        **kwargs,
    }
    result = analyze_video(**args)
    assert result["status"] == "Error"
    assert message in result["error_message"]
    assert result["data"] == []


def test_it_returns_errors_for_bad_files(tmp_path):
    empty = tmp_path / "empty.mov"
    empty.write_bytes(b"")
    result = analyze_video(empty, NORMAL, ANOMALY)
    assert result == {
        "status": "Error",
        "data": [],
        "metadata": {},
        "error_message": f"{empty}: the file is empty (0 bytes)",
    }
    assert (
        "video file not found"
        in analyze_video(tmp_path / "x.mp4", NORMAL, ANOMALY)["error_message"]
    )


def test_it_returns_an_error_for_weights_that_cannot_load(make_video, settings, tmp_path):
    settings.DETECTION_PRETRAINED = str(tmp_path / "missing.pt")
    result = analyze_video(make_video("ok.avi"), NORMAL, ANOMALY)
    assert result["status"] == "Error"
    assert "checkpoint file not found" in result["error_message"]


# --- analyze_image -----------------------------------------------------------------------


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_it_analyzes_an_image():
    result = analyze_image(scene(), NORMAL, ANOMALY, threshold=0.5)
    assert result["status"] == "Success"
    assert {"normal", "anomaly", "score", "label"} <= result.keys()
    assert -1 <= result["normal"] <= 1 and -1 <= result["anomaly"] <= 1
    assert result["score"] == pytest.approx(
        float(compute_anomaly_scores(result["normal"], result["anomaly"], result["logit_scale"]))
    )
    assert result["label"] == ("Anomaly" if result["score"] >= 0.5 else "Normal")


def test_it_reads_images_by_content_whatever_their_mode_or_name(tmp_path):
    rgb = Image.fromarray(scene()[:, :, ::-1].copy())
    expected = analyze_image(rgb, NORMAL, ANOMALY)["score"]
    # A PNG called .jpg, a JPEG called .mp4: read by content.
    (tmp_path / "png.jpg").write_bytes(encode(rgb, "PNG"))
    assert analyze_image(tmp_path / "png.jpg", NORMAL, ANOMALY)["score"] == pytest.approx(expected)
    (tmp_path / "jpeg.mp4").write_bytes(encode(rgb, "JPEG"))
    assert analyze_image(tmp_path / "jpeg.mp4", NORMAL, ANOMALY)["status"] == "Success"
    # RGBA drops its alpha channel (as open_clip does); palettes and grey expand to RGB.
    rgba = rgb.copy()
    rgba.putalpha(128)
    assert analyze_image(encode(rgba, "PNG"), NORMAL, ANOMALY)["score"] == pytest.approx(expected)
    for mode in ("L", "P", "I;16"):
        result = analyze_image(encode(rgb.convert("L").convert(mode), "PNG"), NORMAL, ANOMALY)
        assert result["status"] == "Success", mode
    grey = analyze_image(np.asarray(rgb.convert("L")), NORMAL, ANOMALY)
    assert grey["score"] == pytest.approx(
        analyze_image(rgb.convert("L"), NORMAL, ANOMALY)["score"], abs=1e-6
    )


def test_it_returns_errors_for_bad_images(tmp_path):
    (tmp_path / "text.png").write_text("not an image at all")
    assert analyze_image(tmp_path / "text.png", NORMAL, ANOMALY)["error_message"] == (
        f"{tmp_path / 'text.png'}: not an image format that can be read"
    )
    truncated = encode(Image.fromarray(scene()), "PNG")[:300]
    (tmp_path / "cut.png").write_bytes(truncated)
    assert (
        "corrupt or truncated"
        in analyze_image(tmp_path / "cut.png", NORMAL, ANOMALY)["error_message"]
    )
    assert (
        "image file not found"
        in analyze_image(tmp_path / "no.png", NORMAL, ANOMALY)["error_message"]
    )
    assert "empty" in analyze_image(scene(), "", ANOMALY)["error_message"]


def test_it_localizes_the_most_anomalous_cell_when_anomalous():
    result = analyze_image(scene(), NORMAL, ANOMALY, threshold=0.01, localize=True)
    box = result["box"]
    assert result["label"] == "Anomaly"
    assert 0 <= box["x0"] < box["x1"] <= 320 and 0 <= box["y0"] < box["y1"] <= 240
    assert (box["x1"] - box["x0"], box["y1"] - box["y0"]) == (80, 60)
