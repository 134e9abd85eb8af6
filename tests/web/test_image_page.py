"""/image/: score one uploaded image against prompts and show the result on the page."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile, TemporaryUploadedFile
from django.test import Client
from django.urls import reverse
from PIL import Image

from tests.support.html import parse
from tests.support.media import scene

URL = "/image/"
MIB = 1024 * 1024
FORM = {
    "normal_prompts": "a quiet street\nan empty road",
    "anomaly_prompts": "a car crash\na fire",
    "threshold": "0.6",
}


@pytest.fixture
def no_disk(settings, tmp_path: Path, monkeypatch) -> list[str]:
    """Record any upload Django would write to a temporary file (there should be none)."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path)
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1024  # the default handlers would spill to disk
    written: list[str] = []
    original = TemporaryUploadedFile.__init__

    def spy(self, name, *args, **kwargs):
        written.append(name)
        original(self, name, *args, **kwargs)

    monkeypatch.setattr(TemporaryUploadedFile, "__init__", spy)
    return written


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def rgb_scene(width: int = 1000, height: int = 600) -> Image.Image:
    return Image.fromarray(scene(height, width, seed=3)[:, :, ::-1])


def post(client: Client, filename: str, content: bytes, **fields: str):
    return client.post(URL, {"image": SimpleUploadedFile(filename, content), **FORM, **fields})


def preview_size(response) -> tuple[int, int]:
    url = response.context["preview"]
    assert url.startswith("data:image/jpeg;base64,")
    jpeg = np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8)
    image = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
    assert image is not None
    return image.shape[1], image.shape[0]


def assert_result_shown(response, width: int, height: int) -> dict:
    assert response.status_code == 200
    assert response.context["form"].errors == {}
    result = response.context["result"]
    assert result["status"] == "Success"
    assert 0.0 <= result["score"] <= 1.0
    assert -1.0 <= result["normal"] <= 1.0 and -1.0 <= result["anomaly"] <= 1.0
    assert (result["width"], result["height"]) == (width, height)
    assert result["label"] == ("Anomaly" if result["score"] >= 0.6 else "Normal")
    page = response.content.decode()
    html = parse(page)
    scores = [td.text for td in html.find_all("td") if td.attrs == {"class": "score"}]
    assert f"{result['score']:.4f}" in scores
    badge = "badge-anomaly" if result["label"] == "Anomaly" else "badge-normal"
    badges = [(span["class"], span.text) for span in html.find_all("span", class_="badge")]
    assert (f"badge {badge}", result["label"]) in badges
    assert "Cosine similarity to normal prompts" in page
    assert "Cosine similarity to anomaly prompts" in page
    assert "Random weights are in use" not in page
    return result


def test_it_sends_anonymous_users_to_the_login_page(client):
    for response in (client.get(URL), client.post(URL, FORM)):
        assert response.status_code == 302
        assert response["Location"] == f"{reverse('login')}?next={URL}"


@pytest.mark.django_db
def test_it_shows_an_empty_form(logged_in):
    response = logged_in.get(URL)

    assert response.status_code == 200
    page = response.content.decode()
    assert 'enctype="multipart/form-data"' in page
    assert 'name="csrfmiddlewaretoken"' in page
    assert response.context["result"] is None


@pytest.mark.django_db
def test_it_scores_a_png_in_memory_and_shows_a_small_preview(logged_in, tiny_settings, no_disk):
    response = post(logged_in, "street.png", png(rgb_scene(1000, 600)))

    assert_result_shown(response, 1000, 600)
    assert preview_size(response) == (480, 288)
    assert no_disk == []  # never written to a temporary file
    assert not Path(tiny_settings.MEDIA_ROOT).exists()


@pytest.mark.django_db
def test_it_scores_an_rgba_png(logged_in, tiny_settings, no_disk):
    image = rgb_scene(320, 240).convert("RGBA")
    image.putalpha(128)

    response = post(logged_in, "overlay.png", png(image))

    assert_result_shown(response, 320, 240)
    assert preview_size(response) == (320, 240)  # small images are not enlarged


@pytest.mark.django_db
def test_it_reads_a_greyscale_jpeg_named_png_by_its_content(logged_in, tiny_settings, no_disk):
    out = io.BytesIO()
    rgb_scene(640, 480).convert("L").save(out, format="JPEG")

    response = post(logged_in, "mislabelled.png", out.getvalue())

    assert_result_shown(response, 640, 480)


@pytest.mark.django_db
def test_it_refuses_a_text_file(logged_in, tiny_settings, no_disk):
    response = post(logged_in, "notes.png", b"this is not an image\n")

    assert response.status_code == 200
    assert response.context["form"].errors == {"image": ["not an image format that can be read"]}
    assert response.context["result"] is None
    assert "image</a>: not an image format that can be read" in response.content.decode()


@pytest.mark.django_db
def test_it_refuses_an_image_over_20_mb(logged_in, tiny_settings, no_disk):
    response = post(logged_in, "huge.png", b"\x89PNG\r\n\x1a\n" + b"\0" * (20 * MIB))

    assert response.context["form"].errors == {
        "image": ["the file is larger than the upload limit of 20 MB"]
    }
    assert no_disk == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("normal_prompts", " \n ", "Write at least one prompt (one per line)."),
        ("threshold", "1.5", "Must lie strictly between 0 and 1 (got 1.5)."),
    ],
)
def test_it_reports_bad_fields(logged_in, tiny_settings, field, value, message):
    response = post(logged_in, "street.png", png(rgb_scene(64, 64)), **{field: value})

    assert response.context["form"].errors == {field: [message]}
    assert response.context["result"] is None


@pytest.mark.django_db
def test_it_localises_an_anomalous_image(logged_in, tiny_settings):
    data = png(rgb_scene(320, 240))
    fields = {**FORM, "threshold": "0.5", "localize": "on"}
    response = post(logged_in, "street.png", data, **fields)
    if response.context["result"]["label"] == "Normal":
        # Swap the prompts: the same image is then anomalous (score -> 1 - score).
        fields |= {
            "normal_prompts": FORM["anomaly_prompts"],
            "anomaly_prompts": FORM["normal_prompts"],
        }
        response = post(logged_in, "street.png", data, **fields)

    result = response.context["result"]
    assert result["label"] == "Anomaly"
    box = result["box"]
    assert 0 <= box["x0"] < box["x1"] <= 320 and 0 <= box["y0"] < box["y1"] <= 240
    assert "Most anomalous cell" in response.content.decode()


@pytest.mark.django_db
def test_it_warns_when_random_weights_are_in_use(logged_in, tiny_settings):
    tiny_settings.DETECTION_PRETRAINED = "none"

    response = post(logged_in, "street.png", png(rgb_scene(64, 64)))

    assert response.context["result"]["random_weights"] is True
    assert "Random weights are in use" in response.content.decode()
