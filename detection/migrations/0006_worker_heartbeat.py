# Issue 15 (health and metrics): one row per running worker, read by /healthz and /metrics.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("detection", "0005_retention"),
    ]

    operations = [
        migrations.CreateModel(
            name="WorkerHeartbeat",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("owner", models.CharField(max_length=200, unique=True)),
                ("host", models.CharField(max_length=255)),
                ("pid", models.PositiveIntegerField()),
                ("started_at", models.DateTimeField()),
                ("seen_at", models.DateTimeField(db_index=True)),
            ],
            options={
                "ordering": ["-seen_at"],
            },
        ),
    ]
