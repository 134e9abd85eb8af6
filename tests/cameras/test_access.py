"""Who sees what: `visible_cameras` and every page and export, for every kind of user."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse

from cameras import access
from cameras.access import visible_camera_pairs, visible_cameras
from detection.access import visible_analyses, visible_analysis_pairs, visible_incidents
from tests.support.factories import (
    AnalysisFactory,
    CameraFactory,
    FrameScoreFactory,
    GroupFactory,
    IncidentFactory,
    UserFactory,
)
from tests.support.sessions import login

pytestmark = pytest.mark.django_db

# Who sees the shared camera (and, for operators and superusers, every camera).
SEES = ["viewer", "group_viewer", "operator", "superuser"]
# Logged in, but the camera is not theirs: 404 on pages, absent from the dashboard.
HIDDEN = ["stranger"]
# Not logged in as far as Django is concerned: sent to the login page.
LOGGED_OUT = ["inactive", "anonymous"]
ROLES = SEES + HIDDEN + LOGGED_OUT


@pytest.fixture
def world(viewer, stranger):
    """A camera shared with one user and one group, a second camera shared with nobody."""
    watchers = GroupFactory(name="watchers")
    users = {
        "viewer": viewer,
        "group_viewer": UserFactory(username="group_viewer", groups=[watchers]),
        "operator": UserFactory(username="operator", groups=[Group.objects.get(name="operators")]),
        "superuser": UserFactory(username="root", is_superuser=True, is_staff=True),
        "stranger": stranger,
        "inactive": UserFactory(username="inactive", is_active=False),
        "anonymous": None,
    }
    # The inactive user was a viewer once: deactivation alone must lock them out.
    shared = CameraFactory(
        name="Loading dock",
        viewers=[users["viewer"], users["inactive"]],
        viewer_groups=[watchers],
    )
    private = CameraFactory(name="Vault")
    analysis = AnalysisFactory(camera=shared, name="Dock watch")
    FrameScoreFactory(analysis=analysis, frame_index=0, score=0.2)
    IncidentFactory(analysis=analysis)
    private_analysis = AnalysisFactory(camera=private, name="Vault watch")
    return {
        "users": users,
        "shared": shared,
        "private": private,
        "analysis": analysis,
        "private_analysis": private_analysis,
    }


# --- The rule itself ----------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_it_applies_the_one_rule_to_cameras_analyses_and_incidents(world, role):
    user = world["users"][role]
    if user is None:
        from django.contrib.auth.models import AnonymousUser

        user = AnonymousUser()
    cameras = set(visible_cameras(user))
    analyses = set(visible_analyses(user))
    incidents = set(visible_incidents(user))
    if role in ("operator", "superuser"):
        assert cameras == {world["shared"], world["private"]}
        assert analyses == {world["analysis"], world["private_analysis"]}
    elif role in ("viewer", "group_viewer"):
        assert cameras == {world["shared"]}
        assert analyses == {world["analysis"]}
    else:
        assert cameras == set()
        assert analyses == set()
    assert incidents == (set(world["analysis"].incidents.all()) if role in SEES else set())


def test_it_lists_a_camera_shared_twice_once(world):
    both = world["users"]["group_viewer"]
    world["shared"].viewers.add(both)
    assert list(visible_cameras(both)) == [world["shared"]]
    assert visible_cameras(both).count() == 1


def test_it_stops_showing_a_camera_when_the_user_leaves_the_group(world):
    user = world["users"]["group_viewer"]
    user.groups.clear()
    assert not visible_cameras(user).exists()


def test_it_answers_many_users_at_once_exactly_as_it_answers_each(world, monkeypatch):
    # The batched form (the live sockets' re-check) against the rule, for every kind of
    # user, camera and analysis: shared, private, missing; and a user who is both a direct
    # and a group viewer, so a pair matched twice still counts once.
    monkeypatch.setattr(access, "IN_CHUNK", 2)  # several chunks of users and cameras
    world["shared"].viewers.add(world["users"]["group_viewer"])
    users = [u for u in world["users"].values() if u is not None] + [None]
    cameras = [world["shared"].pk, world["private"].pk, 10**9]
    analyses = [world["analysis"].pk, world["private_analysis"].pk, 10**9]
    asked = [(user, pk) for user in users for pk in cameras]
    expected = _by_the_rule(asked, visible_cameras)
    assert visible_camera_pairs(asked) == expected
    assert visible_camera_pairs(iter(asked)) == expected  # any iterable, read once
    assert len(expected) == 1 + 1 + 2 + 2  # viewer, group viewer, operator, superuser
    asked = [(user, pk) for user in users for pk in analyses]
    assert visible_analysis_pairs(asked) == _by_the_rule(asked, visible_analyses)


def _by_the_rule(asked, visible) -> set:
    """The (user pk, object pk) pairs the rule allows, asked user by user."""
    return {
        (user.pk, pk)
        for user, pk in asked
        if user is not None and visible(user).filter(pk=pk).exists()
    }


def test_it_answers_any_number_of_users_in_the_same_few_queries(
    world, django_assert_max_num_queries
):
    viewers = [UserFactory() for _ in range(30)]
    world["shared"].viewers.add(*viewers)
    asked = [(user, world["analysis"].pk) for user in [*viewers, world["users"]["stranger"]]]
    with django_assert_max_num_queries(6):  # analyses, operators, cameras, two kinds of share
        seen = visible_analysis_pairs(asked)
    assert seen == {(user.pk, world["analysis"].pk) for user in viewers}


# --- Pages and exports ----------------------------------------------------------------------


def _urls(analysis) -> dict[str, str]:
    return {
        "analysis": reverse("detection:analysis", args=[analysis.pk]),
        "csv": reverse("detection:scores_csv", args=[analysis.pk]),
        "json": reverse("detection:scores_json", args=[analysis.pk]),
    }


@pytest.mark.parametrize("page", ["analysis", "csv", "json"])
@pytest.mark.parametrize("role", ROLES)
def test_it_guards_the_shared_analysis_page_and_exports(client, world, role, page):
    url = _urls(world["analysis"])[page]
    response = login(client, world["users"][role]).get(url)
    if role in SEES:
        assert response.status_code == 200
        if page == "analysis":
            assert b"Dock watch" in response.content
        else:
            body = b"".join(response.streaming_content).decode()
            assert "0.2" in body  # the one stored score
            assert f"analysis-{world['analysis'].pk}-scores" in response["Content-Disposition"]
    elif role in HIDDEN:
        assert response.status_code == 404
    else:
        assert response.status_code == 302
        assert response["Location"] == f"{reverse('login')}?next={url}"


@pytest.mark.parametrize("page", ["analysis", "csv", "json"])
@pytest.mark.parametrize("role", ROLES)
def test_it_guards_the_private_analysis_page_and_exports(client, world, role, page):
    url = _urls(world["private_analysis"])[page]
    response = login(client, world["users"][role]).get(url)
    if role in ("operator", "superuser"):
        assert response.status_code == 200
    elif role in LOGGED_OUT:
        assert response.status_code == 302
        assert response["Location"].startswith(f"{reverse('login')}?next=")
    else:
        # Viewers of another camera and strangers alike: indistinguishable from missing.
        assert response.status_code == 404


@pytest.mark.parametrize("page", ["analysis", "csv", "json"])
def test_it_answers_a_missing_analysis_like_a_hidden_one(client, world, page):
    client.force_login(world["users"]["superuser"])
    missing = AnalysisFactory.build(pk=world["private_analysis"].pk + 1000)
    hidden_for_viewer = _urls(world["private_analysis"])[page]
    assert client.get(_urls(missing)[page]).status_code == 404
    client.force_login(world["users"]["viewer"])
    assert client.get(hidden_for_viewer).status_code == 404


@pytest.mark.parametrize("role", ROLES)
def test_it_shows_exactly_the_visible_cameras_on_the_dashboard(client, world, role):
    response = login(client, world["users"][role]).get(reverse("dashboard"))
    if role in LOGGED_OUT:
        assert response.status_code == 302
        assert response["Location"] == f"{reverse('login')}?next=/"
        return
    assert response.status_code == 200
    content = response.content.decode()
    shown = {c.name for c in response.context["cameras"]}
    if role in ("operator", "superuser"):
        assert shown == {"Loading dock", "Vault"}
        assert "Vault watch" in content
    elif role in ("viewer", "group_viewer"):
        assert shown == {"Loading dock"}
        assert "Dock watch" in content
        assert "Vault" not in content
    else:
        assert shown == set()
        assert "Loading dock" not in content
        assert "No cameras yet" in content


def test_it_shows_a_camera_shared_through_a_user_and_a_group_once(client, world):
    user = world["users"]["group_viewer"]
    world["shared"].viewers.add(user)
    client.force_login(user)
    response = client.get(reverse("dashboard"))
    assert [c.name for c in response.context["cameras"]] == ["Loading dock"]
    assert response.content.decode().count('id="camera-') == 1


def test_it_offers_the_admin_only_to_staff_who_may_add_cameras(client, world):
    add_url = reverse("admin:cameras_camera_add")
    client.force_login(world["users"]["superuser"])
    assert add_url in client.get(reverse("dashboard")).content.decode()
    client.force_login(world["users"]["viewer"])
    assert add_url not in client.get(reverse("dashboard")).content.decode()
