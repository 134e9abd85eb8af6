"""The admin applies the portal's access rule: staff see and edit only the cameras they may see.

Model permissions say what kind of object a staff member may change; the access rule
(`cameras.access.visible_cameras`) says which ones. Superusers and the operators group see
every camera, as on the portal's pages.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from cameras.access import OPERATORS_GROUP
from tests.support.factories import (
    AnalysisFactory,
    CameraFactory,
    GroupFactory,
    IncidentFactory,
    UserFactory,
)
from tests.support.sessions import client_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    """A staff member with every model permission of both apps, shared one camera of two."""
    staff = UserFactory(username="staff", is_staff=True)
    staff.user_permissions.set(
        Permission.objects.filter(content_type__app_label__in=("cameras", "detection"))
    )
    shared = CameraFactory(
        name="Shared gate", source="rtsp://user:secret-a@10.0.0.5/s", viewers=[staff]
    )
    hidden = CameraFactory(name="Hidden vault", source="rtsp://user:secret-b@10.0.0.6/s")
    mine, theirs = AnalysisFactory(camera=shared), AnalysisFactory(camera=hidden)
    return {
        "staff": staff,
        "shared": shared,
        "hidden": hidden,
        "analyses": (mine, theirs),
        "incidents": (IncidentFactory(analysis=mine), IncidentFactory(analysis=theirs)),
    }


def change_url(obj) -> str:
    return reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])


def changelist(obj) -> str:
    return reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_changelist")


def test_it_lists_only_the_cameras_analyses_and_incidents_shared_with_a_staff_member(world):
    client = client_for(world["staff"])
    pairs = [
        (world["shared"], world["hidden"]),
        world["analyses"],
        world["incidents"],
    ]
    for visible, hidden in pairs:
        page = client.get(changelist(visible)).content.decode()
        assert change_url(visible) in page
        assert change_url(hidden) not in page


def test_it_hides_the_change_form_and_credentials_of_a_camera_not_shared(world):
    client = client_for(world["staff"])
    assert "secret-a" in client.get(change_url(world["shared"])).content.decode()
    for hidden in (world["hidden"], world["analyses"][1], world["incidents"][1]):
        response = client.get(change_url(hidden), follow=True)
        page = response.content.decode()
        assert "exist. Perhaps it was deleted?" in page, f"{hidden!r} was shown"  # as if missing
        assert "secret-b" not in page


def test_it_offers_only_visible_cameras_when_adding_an_analysis(world):
    page = client_for(world["staff"]).get(reverse("admin:detection_analysis_add"))
    choices = page.context["adminform"].form.fields["camera"].queryset
    assert list(choices) == [world["shared"]]


def test_it_preselects_only_a_visible_camera_from_the_add_analysis_link(world):
    client = client_for(world["staff"])
    shared_page = client.get(change_url(world["shared"])).content.decode()
    add = reverse("admin:detection_analysis_add")
    assert f'href="{add}?camera={world["shared"].pk}"' in shared_page
    # A hidden camera's id in the link preselects nothing and shows nothing of it.
    page = client.get(f"{add}?camera={world['hidden'].pk}").content.decode()
    assert "Hidden vault" not in page
    assert f'value="{world["hidden"].pk}" selected' not in page


def test_it_shows_no_add_analysis_link_without_the_add_permission(world):
    staff = world["staff"]
    staff.user_permissions.remove(Permission.objects.get(codename="add_analysis"))
    page = client_for(staff).get(change_url(world["shared"])).content.decode()
    assert "Add analysis" not in page


def test_it_refuses_to_point_an_analysis_at_a_hidden_camera(world):
    mine = world["analyses"][0]
    client = client_for(world["staff"])
    form = client.get(change_url(mine)).context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and not isinstance(v, list)}
    response = client.post(change_url(mine), {**data, "camera": world["hidden"].pk})
    assert response.status_code == 200  # the form again, with an error
    assert "camera" in response.context["adminform"].form.errors
    mine.refresh_from_db()
    assert mine.camera == world["shared"]


def test_it_does_not_delete_hidden_objects_through_a_bulk_action(world):
    client = client_for(world["staff"])
    theirs = world["analyses"][1]
    client.post(
        changelist(theirs),
        {"action": "delete_selected", "_selected_action": [theirs.pk], "post": "yes"},
    )
    theirs.refresh_from_db()  # still there


@pytest.mark.parametrize("who", ["superuser", "operator"])
def test_it_shows_every_camera_to_superusers_and_operators(world, who):
    if who == "superuser":
        user = UserFactory(is_staff=True, is_superuser=True)
    else:
        user = UserFactory(is_staff=True, groups=[GroupFactory(name=OPERATORS_GROUP)])
        user.user_permissions.set(Permission.objects.filter(content_type__app_label="cameras"))
    page = client_for(user).get(changelist(world["shared"])).content.decode()
    assert change_url(world["shared"]) in page and change_url(world["hidden"]) in page
