"""The `operators` group: its members see every camera (cameras/access.py)."""

from __future__ import annotations

from django.db import migrations

OPERATORS_GROUP = "operators"  # repeated from cameras.access: migrations must not import apps


def create_group(apps, schema_editor):  # noqa: ANN001, ARG001 - migration signature
    Group = apps.get_model("auth", "Group")
    Group.objects.get_or_create(name=OPERATORS_GROUP)


def remove_group(apps, schema_editor):  # noqa: ANN001, ARG001
    Group = apps.get_model("auth", "Group")
    Group.objects.filter(name=OPERATORS_GROUP, user__isnull=True).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("cameras", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [migrations.RunPython(create_group, remove_group)]
