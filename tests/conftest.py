"""Fixtures for every test: a tiny CLIP checkpoint, settings that use it, videos made on the
fly, a database subprocesses can share, and the users and analysis the page tests share.

No test downloads anything: the tiny model's config and random weights are written to a
temporary directory once per session and loaded through the same open_clip code path as
real weights (tests/support/model.py). Helpers that are not fixtures live in tests/support/.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# Plain `assert`s in the shared helpers explain themselves as the tests' own do.
pytest.register_assert_rewrite("tests.support")

from tests.support.factories import AnalysisFactory, UserFactory  # noqa: E402
from tests.support.media import VideoFactory, write_video  # noqa: E402
from tests.support.model import TinyModel, write_tiny_model  # noqa: E402
from tests.support.sessions import login  # noqa: E402

# --- the model and the settings ----------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return write_tiny_model(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture
def tiny_settings(settings, tiny_model: TinyModel):
    settings.DETECTION_MODEL = str(tiny_model.config)
    settings.DETECTION_PRETRAINED = str(tiny_model.checkpoint)
    settings.DETECTION_DEVICE = "cpu"
    settings.DETECTION_PRECISION = "fp32"
    settings.DETECTION_BATCH_SIZE = 4
    settings.DETECTION_LOGIT_SCALE = None
    return settings


@pytest.fixture(autouse=True)
def fast_passwords(settings) -> None:
    # The factories set real passwords; PBKDF2 at full strength costs ~0.25 s per user.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# --- files ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def private_media(tmp_path_factory: pytest.TempPathFactory, settings) -> None:
    """No test writes into the checkout's var/media (a later `make run` would show it): the
    worker keeps live frames, pictures and clips there. Tests that look at the files ask
    for `media`."""
    settings.MEDIA_ROOT = tmp_path_factory.mktemp("media")


@pytest.fixture
def make_video(tmp_path: Path) -> VideoFactory:
    """make_video(name, frames=20, fps=10.0, size=(320, 240), black=(), codec=None)."""

    def make(name: str = "clip.mp4", *args, **kwargs) -> Path:
        return write_video(tmp_path / name, *args, **kwargs)

    return make


@pytest.fixture
def media(tmp_path: Path, settings) -> Path:
    """MEDIA_ROOT in tmp_path/media; video files may be read anywhere in tmp_path."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MEDIA_ROOT.mkdir()
    settings.DETECTION_VIDEO_DIRS = [tmp_path]
    return tmp_path


# --- the database, shared with subprocesses -----------------------------------------------


@pytest.fixture(scope="session")
def django_db_modify_db_settings(
    django_db_modify_db_settings_parallel_suffix, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A file-backed SQLite test database, so worker subprocesses can share it."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        db.setdefault("TEST", {})["NAME"] = str(tmp_path_factory.mktemp("db") / "test.sqlite3")


@pytest.fixture
def subprocess_env(tiny_model: TinyModel, settings, media: Path) -> dict[str, str]:
    """Environment for manage.py subprocesses that share the test database and settings."""
    from django.db import connection

    env = dict(tiny_model.env)
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        env["DATABASE_URL"] = f"sqlite:///{db['NAME']}"
    env["MEDIA_ROOT"] = str(settings.MEDIA_ROOT)
    env["DETECTION_VIDEO_DIRS"] = ":".join(str(d) for d in settings.DETECTION_VIDEO_DIRS)
    env["DJANGO_LOG_LEVEL"] = "INFO"
    return env


# --- who is looking, and at what ----------------------------------------------------------


@pytest.fixture
def viewer(db):
    """A user with whom the `analysis` camera is shared."""
    return UserFactory(username="viewer")


@pytest.fixture
def stranger(db):
    """A user who may see no camera."""
    return UserFactory(username="stranger")


@pytest.fixture
def analysis(viewer):
    """An analysis (a draft, threshold 0.6) on the camera "Gate", shared with `viewer`."""
    return AnalysisFactory(
        camera__viewers=[viewer], camera__name="Gate", name="Gate watch", threshold=0.6
    )


@pytest.fixture
def logged_in(client, viewer):
    """The test client, logged in as `viewer`."""
    return login(client, viewer)
