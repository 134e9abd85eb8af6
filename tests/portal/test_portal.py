from __future__ import annotations

import pytest
from channels.testing import HttpCommunicator, WebsocketCommunicator
from django.test import override_settings
from django.urls import reverse

BANNER = "Random weights: scores are meaningless (DETECTION_PRETRAINED=none)"


def test_it_sends_anonymous_users_from_the_dashboard_to_the_login_page(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next=/"


def test_it_serves_the_login_page(client):
    response = client.get("/accounts/login/")
    assert response.status_code == 200
    content = response.content.decode()
    assert 'name="csrfmiddlewaretoken"' in content
    assert 'name="password"' in content
    assert "/static/css/app.css" in content


def test_it_serves_the_admin_login_page(client):
    response = client.get("/admin/login/")
    assert response.status_code == 200
    assert b"clipwatch administration" in response.content


@pytest.mark.django_db
def test_it_logs_a_user_in_and_shows_the_empty_dashboard(client, django_user_model):
    django_user_model.objects.create_user("olga", password="a-long-Passphrase-42")
    response = client.post(
        "/accounts/login/",
        {"username": "olga", "password": "a-long-Passphrase-42"},
        follow=True,
    )
    assert response.redirect_chain == [("/", 302)]
    content = response.content.decode()
    assert "No cameras yet" in content
    assert "olga" in content
    # Logout is a POST form: Django 5 no longer accepts GET /accounts/logout/.
    assert f'method="post" action="{reverse("logout")}"' in content
    assert BANNER not in content


@pytest.mark.django_db
def test_it_logs_out_with_a_post(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("olga"))
    response = client.post(reverse("logout"))
    assert response.status_code == 302
    assert client.get("/").status_code == 302


@pytest.mark.django_db
@override_settings(DETECTION_PRETRAINED="none")
def test_it_shows_the_random_weights_banner_on_every_page(client, django_user_model):
    assert BANNER in client.get("/accounts/login/").content.decode()
    client.force_login(django_user_model.objects.create_user("olga"))
    assert BANNER in client.get("/").content.decode()


# --- ASGI -----------------------------------------------------------------------------

_ORIGIN = [(b"origin", b"http://localhost"), (b"host", b"localhost")]


async def test_it_serves_http_through_the_asgi_application():
    from portal.asgi import application

    communicator = HttpCommunicator(application, "GET", "/accounts/login/", headers=_ORIGIN)
    response = await communicator.get_response()
    assert response["status"] == 200


async def test_it_closes_a_websocket_to_an_unknown_path():
    from portal.asgi import application

    communicator = WebsocketCommunicator(application, "/ws/nowhere/", headers=_ORIGIN)
    connected, _ = await communicator.connect()
    assert connected is False
    await communicator.wait()


async def test_it_refuses_a_websocket_from_a_foreign_origin():
    from portal.asgi import application

    communicator = WebsocketCommunicator(
        application,
        "/ws/nowhere/",
        headers=[(b"origin", b"https://evil.example"), (b"host", b"localhost")],
    )
    connected, _ = await communicator.connect()
    assert connected is False
    await communicator.wait()


@pytest.mark.django_db
def test_it_links_a_favicon_and_redirects_favicon_ico_to_it(client):
    page = client.get(reverse("login")).content.decode()
    assert 'rel="icon" href="/static/favicon.svg"' in page
    response = client.get("/favicon.ico")
    assert response.status_code == 302 and response["Location"] == "/static/favicon.svg"
