"""The admin flow of issue 14 (item 9) in headless Chromium: from a camera's page to a
running analysis, with the defaults of the common case.

A superuser opens a camera in the admin, follows "Add analysis" (the camera is chosen
already), types the prompts, saves with "Start now" as it comes (ticked), and the analysis is
queued for a worker; the add form for a camera starts as webcam 0. Real daphne, the real
admin pages, a real browser with a real session cookie.
"""

from __future__ import annotations

import signal

import pytest

from cameras.models import Camera
from detection.models import Analysis
from tests.support.factories import CameraFactory, UserFactory
from tests.support.processes import start_daphne, stop
from tests.support.sessions import session_key
from tests.support.streams import free_port, wait_for_port
from tests.support.waiting import wait_until
from tests.web.test_browser import log_in, new_browser

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.browser,
    pytest.mark.slow,
]

TIMEOUT = 30


@pytest.fixture
def admin_site(tmp_path, subprocess_env):
    port = free_port()
    server = start_daphne(subprocess_env, port, tmp_path / "daphne.log")
    try:
        wait_for_port(port)
    except AssertionError:
        stop(server, signal.SIGKILL)
        raise
    driver = new_browser(tmp_path / "profile")
    admin = UserFactory(username="boss", is_staff=True, is_superuser=True)
    base = f"http://127.0.0.1:{port}"
    log_in(driver, base, session_key(admin))
    try:
        yield driver, base
    finally:
        driver.quit()
        stop(server)


def test_it_adds_a_running_analysis_from_the_camera_page(admin_site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver, base = admin_site
    camera = CameraFactory(name="Loading bay", kind=Camera.Kind.WEBCAM, source="0")
    CameraFactory(name="Other")

    driver.get(f"{base}/admin/cameras/camera/{camera.pk}/change/")
    driver.find_element(By.LINK_TEXT, "Add analysis").click()
    wait_until(
        lambda: "/admin/detection/analysis/add/" in driver.current_url, TIMEOUT, "the add form"
    )
    chosen = Select(driver.find_element(By.NAME, "camera")).first_selected_option
    assert chosen.text == "Loading bay"
    start_now = driver.find_element(By.NAME, "start_now")
    assert start_now.is_selected()  # the common case: start when saved

    driver.find_element(By.NAME, "name").send_keys("Intruders")
    driver.find_element(By.NAME, "normal_prompts").send_keys("an empty loading bay")
    driver.find_element(By.NAME, "anomaly_prompts").send_keys("a person climbing the fence")
    driver.find_element(By.NAME, "_save").click()

    analysis = wait_until(
        lambda: Analysis.objects.filter(name="Intruders").first(), TIMEOUT, "the saved analysis"
    )
    assert analysis.camera_id == camera.pk
    assert analysis.status == Analysis.Status.QUEUED  # a worker picks it up: no Draft step
    wait_until(lambda: "Queued" in driver.page_source, TIMEOUT, "the admin's message")


def test_it_starts_the_camera_add_form_as_webcam_zero(admin_site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver, base = admin_site
    driver.get(f"{base}/admin/cameras/camera/add/")
    kind = Select(driver.find_element(By.NAME, "kind")).first_selected_option
    assert kind.get_attribute("value") == Camera.Kind.WEBCAM
    assert driver.find_element(By.NAME, "source").get_attribute("value") == "0"
