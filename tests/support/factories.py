"""factory-boy factories for the portal's models."""

from __future__ import annotations

import factory
from django.contrib.auth.models import Group, User
from django.utils import timezone

from cameras.models import Camera
from detection.models import Analysis, FrameScore, Incident


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.PostGenerationMethodCall("set_password", "pw-for-tests-123")

    @factory.post_generation
    def groups(self, create, extracted, **kwargs):
        if create and extracted:
            self.groups.add(*extracted)
        if create:
            self.save()


class GroupFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Group
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"group{n}")


class CameraFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Camera
        skip_postgeneration_save = True

    name = factory.Sequence(lambda n: f"Camera {n}")
    kind = Camera.Kind.STREAM
    source = factory.Sequence(lambda n: f"rtsp://127.0.0.1:8554/cam{n}")

    @factory.post_generation
    def viewers(self, create, extracted, **kwargs):
        if create and extracted:
            self.viewers.add(*extracted)

    @factory.post_generation
    def viewer_groups(self, create, extracted, **kwargs):
        if create and extracted:
            self.viewer_groups.add(*extracted)


class AnalysisFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Analysis

    camera = factory.SubFactory(CameraFactory)
    name = factory.Sequence(lambda n: f"Analysis {n}")
    normal_prompts = "a quiet street\nan empty road"
    anomaly_prompts = "a car crash\na fire"


class FrameScoreFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = FrameScore

    analysis = factory.SubFactory(AnalysisFactory)
    frame_index = factory.Sequence(lambda n: n * 10)
    time_s = factory.LazyAttribute(lambda s: s.frame_index / 10)
    score = 0.3
    normal_similarity = 0.25
    anomaly_similarity = 0.24


class IncidentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Incident

    analysis = factory.SubFactory(AnalysisFactory)
    start_time_s = 10.0
    end_time_s = 14.0
    started_at = factory.LazyFunction(timezone.now)
    peak_score = 0.9
    peak_time_s = 12.0
