"""/image/: score one uploaded image against prompts and show the result on the page."""

from __future__ import annotations

import base64
import io
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile, TemporaryUploadedFile
from django.test import Client
from django.urls import reverse
from PIL import Image

from detection.web import kept_images
from tests.support.html import parse
from tests.support.media import scene
from tests.support.sessions import client_for

URL = "/image/"
MIB = 1024 * 1024
FORM = {
    "normal_prompts": "a quiet street\nan empty road",
    "anomaly_prompts": "a car crash\na fire",
    "threshold": "0.6",
}


@pytest.fixture(autouse=True)
def own_media_root(settings, tmp_path: Path) -> None:
    """Kept images go under MEDIA_ROOT: each test has its own, never the repository's."""
    settings.MEDIA_ROOT = tmp_path / "media"


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


def kept_files(settings) -> list[Path]:
    return sorted((Path(settings.MEDIA_ROOT) / kept_images.FOLDER).glob("*"))


def kept_token(response) -> str:
    return parse(response.content.decode()).one("input", name="kept").attrs["value"]


def rescore(client: Client, token: str, **fields: str):
    """Submit the form without a file, as the page does after a result."""
    return client.post(URL, {**FORM, "kept": token, **fields})


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
    # Kept, as uploaded, for this session only: one file under a generated name.
    [kept] = kept_files(tiny_settings)
    assert kept.read_bytes() == png(rgb_scene(1000, 600))
    assert "street" not in kept.name


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


# --- the kept image: scored again with new prompts, without choosing the file again ---


@pytest.mark.django_db
def test_it_scores_the_kept_image_again_with_new_prompts_and_no_file(logged_in, tiny_settings):
    first = post(logged_in, "street.png", png(rgb_scene(320, 240)))
    before = assert_result_shown(first, 320, 240)
    assert "street.png" in first.content.decode()  # the page says which image it keeps

    swapped = {"normal_prompts": FORM["anomaly_prompts"], "anomaly_prompts": FORM["normal_prompts"]}
    again = rescore(logged_in, kept_token(first), **swapped)

    after = assert_result_shown(again, 320, 240)
    assert after["score"] == pytest.approx(1.0 - before["score"], abs=1e-4)  # same image
    assert preview_size(again) == (320, 240)
    assert kept_token(again)  # and again, as often as wanted
    assert len(kept_files(tiny_settings)) == 1


@pytest.mark.django_db
def test_it_offers_the_kept_image_on_a_fresh_page_of_the_same_session(logged_in, tiny_settings):
    post(logged_in, "street.png", png(rgb_scene(64, 48)))

    page = logged_in.get(URL)

    assert "street.png" in page.content.decode() and "64 \u00d7 48" in page.content.decode()
    assert_result_shown(rescore(logged_in, kept_token(page)), 64, 48)


@pytest.mark.django_db
def test_it_keeps_a_new_image_even_when_a_prompt_was_wrong(logged_in, tiny_settings):
    wrong = post(logged_in, "street.png", png(rgb_scene(64, 48)), normal_prompts=" ")
    assert wrong.context["form"].errors == {
        "normal_prompts": ["Write at least one prompt (one per line)."]
    }

    assert_result_shown(rescore(logged_in, kept_token(wrong)), 64, 48)


@pytest.mark.django_db
def test_it_keeps_one_image_per_session_and_says_when_a_page_s_image_was_replaced(
    logged_in, tiny_settings
):
    first = post(logged_in, "one.png", png(rgb_scene(64, 48)))
    second = post(logged_in, "two.png", png(rgb_scene(80, 60)))

    assert [p.read_bytes() for p in kept_files(tiny_settings)] == [png(rgb_scene(80, 60))]
    stale = rescore(logged_in, kept_token(first))
    assert stale.context["result"] is None
    [error] = stale.context["form"].errors["image"]
    assert "replaced by a newer upload" in error and "choose the image file again" in error
    assert_result_shown(rescore(logged_in, kept_token(second)), 80, 60)


@pytest.mark.django_db
def test_it_never_scores_another_user_s_image(logged_in, tiny_settings, stranger):
    token = kept_token(post(logged_in, "private.png", png(rgb_scene(64, 48))))

    response = rescore(client_for(stranger), token)

    assert response.status_code == 200
    assert response.context["result"] is None and response.context["preview"] is None
    assert "choose the image file again" in response.context["form"].errors["image"][0]
    assert "private.png" not in response.content.decode()
    assert len(kept_files(tiny_settings)) == 1  # the owner's image is untouched


@pytest.mark.django_db
def test_it_refuses_a_forged_reference(logged_in, tiny_settings):
    post(logged_in, "street.png", png(rgb_scene(64, 48)))
    name = kept_files(tiny_settings)[0].name

    response = rescore(logged_in, f'{{"name":"{name}"}}')

    assert response.context["form"].errors == {
        "image": ["The page's reference to your image is not valid: choose the image file again."]
    }


@pytest.mark.django_db
def test_it_says_the_kept_image_expired_after_an_hour(logged_in, tiny_settings, monkeypatch):
    token = kept_token(post(logged_in, "street.png", png(rgb_scene(64, 48))))
    later = time.time() + kept_images.KEEP_SECONDS + 60
    monkeypatch.setattr("django.core.signing.time.time", lambda: later)

    response = rescore(logged_in, token)

    [error] = response.context["form"].errors["image"]
    assert error.startswith("The image kept from your last upload is gone")
    assert response.context["result"] is None


@pytest.mark.django_db
def test_it_says_the_kept_image_is_gone_when_its_file_was_removed(logged_in, tiny_settings):
    token = kept_token(post(logged_in, "street.png", png(rgb_scene(64, 48))))
    kept_files(tiny_settings)[0].unlink()

    response = rescore(logged_in, token)

    [error] = response.context["form"].errors["image"]
    assert "is gone" in error and "choose the image file again" in error
    assert "kept" not in response.context or response.context["kept"] is None


@pytest.mark.django_db
def test_it_removes_images_unused_for_an_hour_on_the_next_upload(
    logged_in, tiny_settings, stranger
):
    post(client_for(stranger), "old.png", png(rgb_scene(64, 48)))
    [old] = kept_files(tiny_settings)
    an_hour_ago = time.time() - kept_images.KEEP_SECONDS - 1
    os.utime(old, (an_hour_ago, an_hour_ago))

    post(logged_in, "new.png", png(rgb_scene(80, 60)))

    assert [p.read_bytes() for p in kept_files(tiny_settings)] == [png(rgb_scene(80, 60))]


@pytest.mark.django_db
def test_it_asks_for_an_image_when_there_is_neither_a_file_nor_a_kept_one(logged_in):
    response = logged_in.post(URL, FORM)

    assert response.context["form"].errors == {"image": ["This field is required."]}


# --- in a real browser ------------------------------------------------------------------

# Click "Score the image" and, while the request is in flight, read what the page shows.
SUBMIT_AND_READ_BUSY = """
const done = arguments[arguments.length - 1];
const form = document.getElementById("image-form");
const button = form.querySelector('[data-role="submit"]');
const busy = form.querySelector('[data-role="busy"]');
button.click();
setTimeout(() => done({
  ariaBusy: form.getAttribute("aria-busy"),
  disabled: button.disabled,
  shown: !busy.hidden && busy.offsetParent !== null,
  text: busy.textContent.replace(/\\s+/g, " ").trim(),
}), 300);
"""

READ_RESULT = """
const result = document.getElementById("result");
if (!result) return null;
const img = result.querySelector("figure.preview img");
const form = document.getElementById("image-form");
const kept = document.querySelector('[data-role="kept"]');
return {
  score: result.querySelector("td.score").textContent.trim(),
  shown: !!img && img.complete && img.naturalWidth > 0,
  kept: kept ? kept.textContent.replace(/\\s+/g, " ").trim() : null,
  file: document.getElementById("id_image").value,
  busy: form.getAttribute("aria-busy"),
  disabled: form.querySelector('[data-role="submit"]').disabled,
  errors: Array.from(document.querySelectorAll(".errorlist li"), (li) => li.textContent),
};
"""


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_it_shows_scoring_keeps_the_image_and_rescores_it_with_new_prompts_in_a_browser(
    tmp_path, subprocess_env, viewer
):
    from tests.support.processes import start_daphne, stop
    from tests.support.sessions import session_key
    from tests.support.streams import free_port, wait_for_port
    from tests.support.waiting import wait_until
    from tests.web.test_browser import log_in, new_browser  # skips without a browser

    picture = tmp_path / "street.png"
    picture.write_bytes(png(rgb_scene(640, 360)))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_daphne(subprocess_env, port, tmp_path / "daphne.log")
    driver = None
    try:
        wait_for_port(port)
        driver = new_browser(tmp_path / "profile")
        log_in(driver, base, session_key(viewer))
        driver.get(f"{base}/image/")
        driver.find_element("id", "id_image").send_keys(str(picture))
        # The tiny model scores in well under a second: a slow link (1.5 s per request, for
        # the rest of the test) keeps each submission in flight long enough to see what the
        # page shows meanwhile (a CPU takes 8-18 s with ViT-B-16).
        driver.set_network_conditions(
            offline=False, latency=1500, download_throughput=-1, upload_throughput=-1
        )
        busy = driver.execute_async_script(SUBMIT_AND_READ_BUSY)
        assert busy["ariaBusy"] == "true" and busy["disabled"] is True, busy
        assert busy["shown"] and busy["text"].startswith("Scoring"), busy
        assert "8 to 18 s" in busy["text"], busy  # the expected wait, before any measure
        first = wait_until(
            lambda: driver.execute_script(READ_RESULT), 60, "the first result", every=0.2
        )

        assert first["shown"], first  # the image stays on the page with its result
        assert "street.png" in first["kept"] and "640 \u00d7 360" in first["kept"], first
        assert first["file"] == ""  # the browser emptied the input; the server kept the image
        assert (first["busy"], first["disabled"], first["errors"]) == ("false", False, []), first

        # New prompts, no file: the kept image is scored again.
        for name, text in (("normal_prompts", "a fire"), ("anomaly_prompts", "a quiet street")):
            field = driver.find_element("id", f"id_{name}")
            field.clear()
            field.send_keys(text)
        before = driver.find_element("css selector", "#result td.score")
        busy = driver.execute_async_script(SUBMIT_AND_READ_BUSY)
        assert busy["shown"] and "your last image took" in busy["text"], busy
        wait_until(lambda: _gone(before), 60, "the page to be replaced", every=0.2)
        second = wait_until(
            lambda: driver.execute_script(READ_RESULT), 60, "the second result", every=0.2
        )
        driver.delete_network_conditions()
        assert second["errors"] == [] and second["shown"], second
        assert second["score"] != first["score"], (first, second)  # the new prompts counted
        assert "street.png" in second["kept"], second
        shot = tmp_path / "image.png"
        driver.save_screenshot(str(shot))
        if os.environ.get("BROWSER_ARTIFACTS"):  # as test_browser.py: CI keeps it
            artifacts = Path(os.environ["BROWSER_ARTIFACTS"])
            artifacts.mkdir(parents=True, exist_ok=True)
            shot.replace(artifacts / "image.png")
    finally:
        if driver is not None:
            driver.quit()
        stop(server)


def _gone(element) -> bool:
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        element.is_displayed()
    except StaleElementReferenceException:
        return True
    return False


@pytest.mark.django_db
def test_it_still_offers_the_kept_image_after_a_refused_new_file(logged_in, tiny_settings):
    token = kept_token(post(logged_in, "street.png", png(rgb_scene(64, 48))))

    refused = logged_in.post(
        URL, {"image": SimpleUploadedFile("notes.png", b"not an image"), "kept": token, **FORM}
    )

    assert refused.context["form"].errors == {"image": ["not an image format that can be read"]}
    assert "street.png" in refused.content.decode()
    assert_result_shown(rescore(logged_in, kept_token(refused)), 64, 48)
