"""Login attempts are limited (django-axes): guessing a password from one address stops after
DJANGO_LOGIN_FAILURE_LIMIT failures, for the portal's login page and the admin's alike,
without locking the same user out from another address."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from tests.support.factories import UserFactory

pytestmark = pytest.mark.django_db

PASSWORD = "pw-for-tests-123"  # tests/support/factories.py
LOGIN = reverse("login")
ADMIN_LOGIN = reverse("admin:login")


def attempt(client: Client, url: str, username: str, password: str, address: str):
    return client.post(url, {"username": username, "password": password}, REMOTE_ADDR=address)


def logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


@pytest.mark.parametrize("url", [LOGIN, ADMIN_LOGIN], ids=["portal", "admin"])
def test_it_locks_a_user_name_out_from_one_address_after_the_failure_limit(settings, url):
    settings.AXES_FAILURE_LIMIT = 3
    UserFactory(username="operator", is_staff=True)
    guesser = Client()
    for _ in range(3):
        response = attempt(guesser, url, "operator", "wrong", "203.0.113.7")
        assert not logged_in(guesser)
    # Even the right password is refused now, with a page that says why.
    response = attempt(guesser, url, "operator", PASSWORD, "203.0.113.7")
    assert response.status_code == 429
    assert "Too many failed logins" in response.content.decode()
    assert not logged_in(guesser)

    # The real operator, elsewhere, still logs in.
    operator = Client()
    response = attempt(operator, url, "operator", PASSWORD, "198.51.100.20")
    assert response.status_code == 302 and logged_in(operator)


def test_it_forgets_failures_after_a_successful_login(settings):
    settings.AXES_FAILURE_LIMIT = 3
    UserFactory(username="typo")
    client = Client()
    for _ in range(2):
        attempt(client, LOGIN, "typo", "wrong", "203.0.113.8")
    attempt(client, LOGIN, "typo", PASSWORD, "203.0.113.8")
    assert logged_in(client)
    client.logout()
    for _ in range(2):
        attempt(client, LOGIN, "typo", "wrong", "203.0.113.8")
    attempt(client, LOGIN, "typo", PASSWORD, "203.0.113.8")
    assert logged_in(client), "two failures after a success must not lock (the count was reset)"


def test_it_lets_an_administrator_lift_a_lock_at_once(settings):
    settings.AXES_FAILURE_LIMIT = 2
    UserFactory(username="locked")
    client = Client()
    for _ in range(2):
        attempt(client, LOGIN, "locked", "wrong", "203.0.113.9")
    assert attempt(client, LOGIN, "locked", PASSWORD, "203.0.113.9").status_code == 429
    call_command("axes_reset_username", "locked")
    attempt(client, LOGIN, "locked", PASSWORD, "203.0.113.9")
    assert logged_in(client)
