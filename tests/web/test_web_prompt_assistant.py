"""The prompt helpers in the portal: POST /prompts/suggest/, the "Suggest prompts" boxes, and
warnings about prompts that describe sound on the forms, the analysis page and the admin."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.contrib.messages import get_messages
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from PIL import Image

from detection.models import Analysis
from detection.web.forms import PromptsForm
from tests.support.chat import ChatServer
from tests.support.factories import AnalysisFactory, UserFactory
from tests.support.html import Element, parse
from tests.support.media import scene
from tests.support.sessions import login, session_key

pytestmark = pytest.mark.django_db

URL = reverse("detection:suggest_prompts")
SCRIPT = "/static/js/assistant.js"
SOUND = 'anomaly prompt "a gunshot sound" describes sound ("sound")'
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(autouse=True)
def offline(settings):
    """No endpoint unless a test sets one: the templates."""
    settings.PROMPT_ASSISTANT_URL = None
    settings.PROMPT_ASSISTANT_MODEL = ""
    settings.PROMPT_ASSISTANT_API_KEY = None
    settings.PROMPT_ASSISTANT_TIMEOUT = 10.0


def warnings_on(page: Element) -> list[str]:
    return [li.text for li in page.find_all("li", class_="warning")]


def scripts(page: Element) -> list[str]:
    return [script["src"] for script in page.find_all("script", src=True)]


# --- POST /prompts/suggest/ -------------------------------------------------------------------


def test_it_asks_anonymous_users_to_log_in(client):
    response = client.post(URL, {"phrase": "fire"})
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next={URL}"


def test_it_refuses_a_post_without_the_csrf_token(viewer):
    client = login(Client(enforce_csrf_checks=True), viewer)
    assert client.post(URL, {"phrase": "fire"}).status_code == 403

    page = parse(client.get(reverse("detection:upload")).content.decode())
    box = page.one("form", data_assistant=True)
    token = box.one("input", name="csrfmiddlewaretoken")["value"]
    response = client.post(URL, {"phrase": "fire", "csrfmiddlewaretoken": token})
    assert response.status_code == 200


def test_it_answers_only_posts(logged_in):
    assert logged_in.get(URL, {"phrase": "fire"}).status_code == 405


def test_it_answers_template_suggestions_as_json(logged_in):
    response = logged_in.post(URL, {"phrase": "someone falling", "scene": "a warehouse aisle"})
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    data = response.json()
    assert set(data) == {"normal", "anomaly", "source", "warnings"}
    assert data["source"] == "templates"
    assert data["warnings"] == []
    assert "a CCTV camera frame of someone falling in a warehouse aisle" in data["anomaly"]
    assert "a CCTV camera frame of a warehouse aisle on an ordinary day" in data["normal"]


@pytest.mark.parametrize(
    ("form", "field", "message"),
    [
        ({}, "phrase", "Describe the anomaly in a few words"),
        ({"phrase": "   "}, "phrase", "Describe the anomaly in a few words"),
        ({"phrase": "..."}, "phrase", "Describe the anomaly in a few words"),
        ({"phrase": "x" * 201}, "phrase", "at most 200 characters"),
        ({"phrase": "fire", "scene": "y" * 201}, "scene", "at most 200 characters"),
    ],
)
def test_it_answers_400_with_the_form_errors(logged_in, form, field, message):
    response = logged_in.post(URL, form)
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert list(errors) == [field]
    assert message in errors[field][0]


def test_it_asks_the_configured_endpoint(logged_in, settings):
    answer = {"normal": ["an empty aisle"], "anomaly": ["a person lying in the aisle"]}
    with ChatServer(json.dumps(answer)) as server:
        settings.PROMPT_ASSISTANT_URL = server.base_url
        settings.PROMPT_ASSISTANT_MODEL = "llama3.2"
        settings.PROMPT_ASSISTANT_API_KEY = "sk-local"
        response = logged_in.post(URL, {"phrase": "someone falling"})
    assert response.json() == {**answer, "source": "llm", "warnings": []}
    [request] = server.requests
    assert request.body["model"] == "llama3.2"
    assert request.headers["authorization"] == "Bearer sk-local"


def test_it_falls_back_to_templates_when_the_endpoint_is_refused(logged_in, settings):
    settings.PROMPT_ASSISTANT_URL = "http://169.254.169.254/v1"
    settings.PROMPT_ASSISTANT_MODEL = "llama3.2"
    response = logged_in.post(URL, {"phrase": "fire"})
    assert response.status_code == 200
    data = response.json()
    assert data["source"] == "templates"
    assert "a CCTV camera frame of fire" in data["anomaly"]
    [warning] = data["warnings"]
    assert "a cloud metadata address" in warning


# --- the boxes ------------------------------------------------------------------------------


@pytest.mark.parametrize("page_name", ["detection:upload", "detection:image"])
def test_it_offers_the_suggest_box_on_the_upload_and_image_pages(logged_in, page_name):
    page = parse(logged_in.get(reverse(page_name)).content.decode())
    box = page.one("form", data_assistant=True)
    assert (box["action"], box["method"]) == (URL, "post")
    assert box.one("input", name="phrase")["maxlength"] == "200"
    box.one("input", name="scene")
    box.one("input", name="csrfmiddlewaretoken")
    for field in ("normal", "anomaly"):
        page.one("textarea", id=box[f"data-{field}"])  # the fields the script fills
    assert SCRIPT in scripts(page)
    assert page.find_all("script", src=False) == []  # no inline script


def test_it_offers_the_suggest_box_in_the_admin_analysis_forms(admin_client):
    analysis = AnalysisFactory()
    for url in (
        reverse("admin:detection_analysis_add"),
        reverse("admin:detection_analysis_change", args=[analysis.pk]),
    ):
        page = parse(admin_client.get(url).content.decode())
        box = page.one("form", data_assistant=True)
        assert box["action"] == URL
        page.one("textarea", id=box["data-normal"])
        page.one("textarea", id=box["data-anomaly"])
        assert SCRIPT in scripts(page)


# --- warnings about sound -------------------------------------------------------------------


def test_it_keeps_a_form_whose_prompts_describe_sound_valid_and_warns():
    prompts = {"normal_prompts": "a quiet street", "anomaly_prompts": "a fire\na gunshot sound"}
    form = PromptsForm({**prompts, "threshold": "0.6"})
    assert form.is_valid()
    [warning] = form.warnings
    assert warning.startswith(SOUND)

    quiet = PromptsForm(
        {"normal_prompts": "a street", "anomaly_prompts": "a fire", "threshold": "0.6"}
    )
    assert quiet.is_valid() and quiet.warnings == []


def png_of_a_scene() -> bytes:
    out = io.BytesIO()
    Image.fromarray(scene(240, 320, seed=3)[:, :, ::-1]).save(out, format="PNG")
    return out.getvalue()


def test_it_scores_an_image_and_shows_the_warnings_above_the_result(logged_in, tiny_settings):
    response = logged_in.post(
        reverse("detection:image"),
        {
            "image": SimpleUploadedFile("street.png", png_of_a_scene()),
            "normal_prompts": "a quiet street",
            "anomaly_prompts": "a gunshot sound\na car crash",
            "threshold": "0.6",
        },
    )
    assert response.status_code == 200
    assert response.context["result"] is not None  # scored all the same
    page = parse(response.content.decode())
    [warning] = warnings_on(page)
    assert warning.startswith(SOUND)
    order = [
        e for e in page.elements() if "prompt-warnings" in e.classes or e.get("id") == "result"
    ]
    assert [e.tag for e in order] == ["ul", "section"]  # the warnings come first


def test_it_shows_the_warnings_on_an_upload_that_needs_fixing(logged_in):
    response = logged_in.post(
        reverse("detection:upload"),
        {"normal_prompts": "a street", "anomaly_prompts": "a gunshot sound", "sampling_fps": "1"},
    )
    assert response.status_code == 200  # no video: not uploaded
    assert [w for w in warnings_on(parse(response.content.decode())) if w.startswith(SOUND)]


def test_it_queues_an_upload_with_sound_prompts_and_notes_it_on_the_analysis_page(
    logged_in, media, make_video
):
    clip = make_video("clip.mp4", frames=10)
    response = logged_in.post(
        reverse("detection:upload"),
        {
            "video": SimpleUploadedFile("clip.mp4", clip.read_bytes()),
            "normal_prompts": "an empty loading dock",
            "anomaly_prompts": "a gunshot sound\na fire",
            "sampling_fps": "1",
            "threshold": "0.6",
        },
    )
    assert response.status_code == 302
    analysis = Analysis.objects.get()
    assert analysis.status == Analysis.Status.QUEUED

    page = parse(logged_in.get(analysis.get_absolute_url()).content.decode())
    prompts = page.one("section", class_="prompts")
    [warning] = [li.text for li in prompts.find_all("li", class_="warning")]
    assert warning.startswith(SOUND)


def test_it_has_no_note_on_the_analysis_page_of_visual_prompts(logged_in, analysis):
    page = parse(logged_in.get(analysis.get_absolute_url()).content.decode())
    assert page.one("section", class_="prompts").find_all("li", class_="warning") == []


def admin_form(response) -> dict[str, object]:
    """What a browser posts back from the analysis change page, unchanged."""
    form = response.context["adminform"].form
    data: dict[str, object] = {}
    for name in form.fields:
        value = form[name].value()
        if isinstance(value, bool):
            if value:
                data[name] = "on"
        elif value is not None:
            data[name] = value
    return data


def test_it_warns_in_the_admin_when_an_analysis_with_sound_prompts_is_saved(admin_client):
    analysis = AnalysisFactory()
    url = reverse("admin:detection_analysis_change", args=[analysis.pk])
    page = admin_client.get(url)
    assert parse(page.content.decode()).find_all("ul", class_="prompt-warnings") == []

    data = {**admin_form(page), "anomaly_prompts": "a gunshot sound\na fire", "_continue": "1"}
    saved = admin_client.post(url, data)
    assert saved.status_code == 302  # saved all the same
    analysis.refresh_from_db()
    assert analysis.anomaly_prompts == "a gunshot sound\na fire"
    [warning] = [str(m) for m in get_messages(saved.wsgi_request) if m.level_tag == "warning"]
    assert warning.startswith(SOUND)

    # The page after "Save and continue editing" says it once (the message, capitalised by
    # the admin's template), ...
    after = parse(admin_client.get(url).content.decode())
    assert [w for w in warnings_on(after) if w.lower().startswith(SOUND.lower())] == [
        warning[0].upper() + warning[1:]
    ]
    # ... a later visit says it on the page itself.
    again = parse(admin_client.get(url).content.decode())
    assert [w.text for w in again.one("ul", class_="prompt-warnings").find_all("li")] == [warning]


# --- the box in a browser -------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_it_fills_the_prompt_fields_from_the_box_in_a_browser(live_server, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    if not (CHROMEDRIVER.exists() and CHROMIUM.exists()):
        pytest.skip(f"no headless browser: {CHROMEDRIVER} or {CHROMIUM} is missing")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    # Nothing but the test server resolves: the browser cannot reach anything else.
    options.add_argument("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    base = live_server.url.replace("localhost", "127.0.0.1")  # the one name that resolves
    try:
        driver.get(f"{base}/accounts/login/")  # the cookie's domain is the page's
        key = session_key(UserFactory(username="operator"))
        driver.add_cookie({"name": "sessionid", "value": key, "path": "/"})
        driver.get(f"{base}{reverse('detection:image')}")
        driver.find_element(By.ID, "assistant-phrase").send_keys("people screaming")
        driver.find_element(By.ID, "assistant-scene").send_keys("a parking lot")
        driver.find_element(By.CSS_SELECTOR, "form[data-assistant] button").click()

        anomaly = driver.find_element(By.ID, "id_anomaly_prompts")
        WebDriverWait(driver, 10).until(lambda d: "parking lot" in anomaly.get_property("value"))
        lines = anomaly.get_property("value").splitlines()
        assert lines[0] == "a CCTV camera frame of people screaming in a parking lot"
        normal = driver.find_element(By.ID, "id_normal_prompts").get_property("value")
        assert "a CCTV camera frame of a parking lot on an ordinary day" in normal.splitlines()
        box = driver.find_element(By.CSS_SELECTOR, "form[data-assistant]")
        assert "Suggested from templates" in box.text
        warning = box.find_element(By.CSS_SELECTOR, "li.warning").text
        assert warning.startswith('the phrase "people screaming" describes sound')
    finally:
        driver.quit()
