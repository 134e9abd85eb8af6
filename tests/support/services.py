"""The real services a run may use. CI (.ci/run) sets both URLs, so nothing skips there.

Tests that need one carry its marker (`redis`, `postgres`: pyproject.toml) and skip with
the reason below when it is missing; `make test-fast` leaves them out.
"""

from __future__ import annotations

import os
import shutil

REDIS_URL = os.environ.get("TEST_REDIS_URL")
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL")
REDIS_SERVER = shutil.which("redis-server")  # for a private server a test may kill

NO_REDIS_URL = "TEST_REDIS_URL is not set (e.g. redis://127.0.0.1:6379/0)"
NO_POSTGRES_URL = "TEST_POSTGRES_URL is not set (e.g. postgres://postgres@127.0.0.1:5432/test)"
NO_REDIS_SERVER = "redis-server is not installed (apt-get install redis-server)"
