from __future__ import annotations

import re
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

pytestmark = pytest.mark.django_db

_PASSWORD = re.compile(r"with password: (\S+)")


def _ensure_admin(*args: str) -> str:
    out = StringIO()
    call_command("ensure_admin", *args, stdout=out)
    return out.getvalue()


def _printed_password(output: str) -> str:
    match = _PASSWORD.search(output)
    assert match, output
    return match.group(1)


@pytest.fixture(autouse=True)
def _no_password_from_env(monkeypatch):
    monkeypatch.delenv("DJANGO_SUPERUSER_PASSWORD", raising=False)


def test_it_creates_one_superuser_with_the_printed_random_password():
    output = _ensure_admin()
    password = _printed_password(output)
    [user] = get_user_model().objects.all()
    assert user.username == "admin"
    assert user.is_superuser and user.is_staff
    assert user.check_password(password)
    assert len(password) >= 20
    # Shown once: exactly one line carries it.
    assert output.count(password) == 1


def test_it_does_nothing_when_a_superuser_exists():
    password = _printed_password(_ensure_admin())
    output = _ensure_admin()
    assert "already exists (admin)" in output
    assert _PASSWORD.search(output) is None
    [user] = get_user_model().objects.all()
    assert user.check_password(password)


def test_it_generates_a_different_password_on_each_fresh_database():
    first = _printed_password(_ensure_admin())
    get_user_model().objects.all().delete()
    second = _printed_password(_ensure_admin())
    assert first != second


def test_it_honours_the_username_option():
    _ensure_admin("--username", "root", "--email", "ops@example.com")
    [user] = get_user_model().objects.all()
    assert (user.username, user.email, user.is_superuser) == ("root", "ops@example.com", True)


def test_it_uses_the_password_from_the_environment_without_printing_it(monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "correct-Horse-battery-97")
    output = _ensure_admin()
    assert "correct-Horse-battery-97" not in output
    assert "DJANGO_SUPERUSER_PASSWORD" in output
    assert get_user_model().objects.get().check_password("correct-Horse-battery-97")


def test_it_rejects_a_weak_password_from_the_environment(monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "admin")
    with pytest.raises(CommandError, match="DJANGO_SUPERUSER_PASSWORD is rejected"):
        _ensure_admin()
    assert not get_user_model().objects.exists()


def test_it_refuses_to_touch_an_existing_non_superuser_of_that_name():
    get_user_model().objects.create_user("admin", password="x")
    with pytest.raises(CommandError, match="exists but is not a superuser"):
        _ensure_admin()
    assert not get_user_model().objects.filter(is_superuser=True).exists()
