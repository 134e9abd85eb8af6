"""Django settings for the clipwatch portal.

Everything an operator may change comes from the environment (see README.md for the
table). Defaults are safe for development on one machine; production needs at least
DJANGO_DEBUG=false, DJANGO_SECRET_KEY and DJANGO_ALLOWED_HOSTS, and refuses to start
without the secret key rather than run with a guessable one.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.checks.security.base import (
    SECRET_KEY_INSECURE_PREFIX,
    SECRET_KEY_MIN_LENGTH,
    SECRET_KEY_MIN_UNIQUE_CHARACTERS,
)
from django.core.exceptions import ImproperlyConfigured

from detection.engine.modelspec import default_pretrained
from portal.env import (
    get_bool,
    get_float,
    get_int,
    get_list,
    get_networks,
    get_optional_str,
    get_path,
    get_paths,
    get_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent
# Runtime state (SQLite database, uploads) lives here by default; it is git-ignored.
VAR_DIR = BASE_DIR / "var"

DEBUG = get_bool("DJANGO_DEBUG", True)

# The "django-insecure-" prefix makes `check --deploy` flag this key should it ever be
# set explicitly in production; without DEBUG it is never used as a fallback.
_DEV_SECRET_KEY = "django-insecure-dev-only-5b1f0c7e2d4a4b8e9f3a6c1d0e7b2a9f4c8d1e6b3a5f7c9"
_secret_key = get_optional_str("DJANGO_SECRET_KEY")
if _secret_key is None and not DEBUG:
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY is not set: expected a long random string when DJANGO_DEBUG is "
        "false (e.g. python -c 'import secrets; print(secrets.token_urlsafe(50))')."
    )
if _secret_key is not None and not DEBUG:
    # The rule of Django's security.W009 (check --deploy), enforced at start-up: a weak key
    # lets anyone forge sessions, so production refuses it instead of warning once.
    _weakness = (
        "it is this repository's development key"
        if _secret_key == _DEV_SECRET_KEY
        else f"it starts with {SECRET_KEY_INSECURE_PREFIX!r}"
        if _secret_key.startswith(SECRET_KEY_INSECURE_PREFIX)
        else f"it has fewer than {SECRET_KEY_MIN_LENGTH} characters"
        if len(_secret_key) < SECRET_KEY_MIN_LENGTH
        else f"it has fewer than {SECRET_KEY_MIN_UNIQUE_CHARACTERS} different characters"
        if len(set(_secret_key)) < SECRET_KEY_MIN_UNIQUE_CHARACTERS
        else None
    )
    if _weakness:
        raise ImproperlyConfigured(
            f"DJANGO_SECRET_KEY is too weak ({_weakness}): expected a long random string "
            "when DJANGO_DEBUG is false (e.g. python -c 'import secrets; "
            "print(secrets.token_urlsafe(50))')."
        )
SECRET_KEY = _secret_key or _DEV_SECRET_KEY

if DEBUG:
    ALLOWED_HOSTS = get_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
elif get_optional_str("DJANGO_ALLOWED_HOSTS") is None:
    raise ImproperlyConfigured(
        "DJANGO_ALLOWED_HOSTS is not set: expected the comma-separated host names the "
        "portal is served under when DJANGO_DEBUG is false."
    )
else:
    ALLOWED_HOSTS = get_list("DJANGO_ALLOWED_HOSTS", [])
CSRF_TRUSTED_ORIGINS = get_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    # daphne first: its runserver replaces Django's, so `manage.py runserver` speaks ASGI
    # (websockets included) in development.
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # Login throttling (django-axes): failed attempts are counted in the database.
    "axes",
    "channels",
    "cameras",
    "detection",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Serves collected static files (Chart.js included) when DEBUG is off; no CDN, no nginx.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes requires: it turns a locked-out login into its 429 page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"
ASGI_APPLICATION = "portal.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "detection.context_processors.detection",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------

_database_url = get_optional_str("DATABASE_URL")
if _database_url is None:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    _database_url = f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
try:
    # conn_max_age stays 0: under ASGI each request may run on another thread, and
    # Django's docs advise against persistent connections there.
    _default_db = dj_database_url.parse(_database_url)
except ValueError as exc:
    # The URL itself is not echoed: it may carry a password.
    raise ImproperlyConfigured(
        f"DATABASE_URL is invalid ({exc}): expected a URL such as "
        "postgres://user@host:5432/name or sqlite:////abs/path/db.sqlite3."
    ) from exc
# Connections kept open for the web process's database hops, PostgreSQL only (deploy/ sets
# it for daphne): daphne runs every query of a process in one thread, and without a pool
# each websocket's hop (handshake, snapshot, re-check) forked a new PostgreSQL backend. Not
# for the worker: its threads hold their connections for good, which would drain a pool.
DATABASE_POOL_SIZE = get_int("DATABASE_POOL_SIZE", 0, min=0)
if _default_db["ENGINE"] == "django.db.backends.sqlite3":
    # The portal and the detection worker write concurrently: WAL lets readers proceed
    # during a write, IMMEDIATE takes the write lock up front (no deadlocking upgrade
    # from a read lock), and the timeout waits out a busy writer instead of failing.
    _default_db["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        **_default_db.get("OPTIONS", {}),
    }
elif _default_db["ENGINE"] == "django.db.backends.postgresql":
    # A server that vanishes without closing its connections (failover, lost network)
    # would hold a worker in a read for the kernel's TCP timeouts (minutes to hours):
    # keepalives notice a dead peer within about a minute and connecting gives up after
    # 10 s; the worker then reconnects with backoff (detection/worker/loop.py). A restart
    # closes connections properly and is noticed at once.
    _default_db["OPTIONS"] = {
        "connect_timeout": 10,
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
        **_default_db.get("OPTIONS", {}),
    }
    if DATABASE_POOL_SIZE:
        try:
            import psycopg_pool  # noqa: F401
        except ImportError:
            raise ImproperlyConfigured(
                "DATABASE_POOL_SIZE needs psycopg's pool: pip install 'psycopg[pool]' (the "
                "postgres extra has it), or leave DATABASE_POOL_SIZE unset."
            ) from None
        _default_db["OPTIONS"]["pool"] = {
            "min_size": 1,
            "max_size": DATABASE_POOL_SIZE,
            "timeout": 10,  # waiting for a free connection, as long as for a new one
        }
DATABASES = {"default": _default_db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channels -------------------------------------------------------------------------

# The channel layer carries scores from worker processes to the websockets of the web
# server. `auto`: Redis when REDIS_URL is set, else the embedded SQLite layer
# (channels-lite, in its own database file so its polling never contends with the
# worker's writes to the main database). `memory` only reaches consumers in the same
# process: unit tests only (pyproject sets it for pytest; a system check warns).
REDIS_URL = get_optional_str("REDIS_URL")
CHANNELS_LAYER = get_str("CHANNELS_LAYER", "auto", choices=("auto", "redis", "sqlite", "memory"))
if CHANNELS_LAYER == "auto":
    CHANNELS_LAYER = "redis" if REDIS_URL else "sqlite"
# Messages a web server process may have waiting before new ones to it are dropped. A page
# that falls behind loses messages rather than stalling the worker: it notices the gap and
# resyncs from the database (see detection/live/consumers.py).
# In both layers every socket of one server process shares one queue ("specific.*"), so
# the capacity must hold a burst to every viewer: one score to 200 viewers is 200 messages.
CHANNELS_CAPACITY = get_int("CHANNELS_CAPACITY", 20_000, min=1)
# How long a Redis read may take before the layer counts as failed (sockets then close
# with 4503 and pages reconnect). Above channels_redis's 5 s blocking pop, or idle sockets
# would fail.
REDIS_SOCKET_TIMEOUT = get_int("REDIS_SOCKET_TIMEOUT", 10, min=6)
if CHANNELS_LAYER == "redis":
    if not REDIS_URL:
        raise ImproperlyConfigured("CHANNELS_LAYER=redis needs REDIS_URL")
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # redis-py waits forever by default: a hung Redis would hang the worker's
                # publishing and leave sockets on a dead subscription.
                "hosts": [
                    {
                        "address": REDIS_URL,
                        "socket_connect_timeout": 2,
                        "socket_timeout": REDIS_SOCKET_TIMEOUT,
                    }
                ],
                "capacity": CHANNELS_CAPACITY,
                "expiry": 10,
            },
        }
    }
elif CHANNELS_LAYER == "sqlite":
    INSTALLED_APPS.append("channels_lite")
    DATABASES["channels"] = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": get_path("CHANNELS_DB_PATH", VAR_DIR / "channels.sqlite3"),
        "OPTIONS": {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        },
    }
    DATABASE_ROUTERS = ["portal.db_routers.ChannelsDatabaseRouter"]
    CHANNEL_LAYERS = {
        "default": {
            # channels-lite's layer, batched: see portal/channel_layer.py.
            "BACKEND": "portal.channel_layer.BatchedSQLiteChannelLayer",
            "CONFIG": {
                "database": "channels",
                "polling_interval": 0.05,
                "expiry": 10,
                "capacity": CHANNELS_CAPACITY,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Auth -----------------------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

# Login throttling with django-axes (a maintained library, not hand-written counters): the
# portal's login page and the admin's both authenticate through this backend.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = get_int("DJANGO_LOGIN_FAILURE_LIMIT", 5, min=1)
AXES_COOLOFF_TIME = timedelta(minutes=get_int("DJANGO_LOGIN_COOLOFF_MINUTES", 15, min=1))
# A lock holds one user name from one address: guessing from one machine stops, while an
# attacker elsewhere cannot lock the real operator out. Behind nginx the address is the
# client's because daphne runs with --proxy-headers (deploy/).
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"

# --- I18n -----------------------------------------------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = get_str("DJANGO_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

# --- Static and media -----------------------------------------------------------------

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_URL = "media/"
# WhiteNoise's default follows settings.DEBUG at run time, which pytest-django turns off:
# follow DJANGO_DEBUG instead, so development and tests never look for collected files.
WHITENOISE_AUTOREFRESH = DEBUG
if not DEBUG:
    # Hashed, compressed names for far-future caching; needs `collectstatic`. Development and
    # tests keep Django's default storage so they run without collecting first.
    STORAGES = {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    }
MEDIA_ROOT = get_path("MEDIA_ROOT", VAR_DIR / "media")

# --- Detection ------------------------------------------------------------------------

# Directories video files may be read from; uploads land in MEDIA_ROOT.
DETECTION_VIDEO_DIRS = get_paths("DETECTION_VIDEO_DIRS", [MEDIA_ROOT])
# Outbound requests (docs/security.md, "Outbound requests: the trust model"): networks that
# cameras and webhooks may reach besides their defaults (cameras: the LAN and public
# addresses; webhooks: public addresses only). Cameras on loopback are open while debugging
# (a local test stream with `make run`), as ALLOWED_HOSTS is; webhooks never by default, not
# even then: a webhook that reaches the portal's own services is the classic SSRF. Cloud
# metadata is refused whatever these list.
DETECTION_CAMERA_ALLOWED_NETWORKS = get_networks(
    "DETECTION_CAMERA_ALLOWED_NETWORKS", ["127.0.0.0/8", "::1/128"] if DEBUG else []
)
DETECTION_WEBHOOK_ALLOWED_NETWORKS = get_networks("DETECTION_WEBHOOK_ALLOWED_NETWORKS", [])
# A preset (vit-b-16, vit-b-32, mobileclip2-s0, ...: docs/models.md), an open_clip model
# name, or hf-hub:org/repo, local-dir:/path, /path/to/config.json.
DETECTION_MODEL = get_str("DETECTION_MODEL", "ViT-B-16")
# An open_clip pretrained tag, a path to a checkpoint file, or "none" (random weights:
# tests and benchmarks only). detection/checks.py validates it against the model. Unset, a
# preset's own weights, else laion2b_s34b_b88k.
DETECTION_PRETRAINED = get_str("DETECTION_PRETRAINED", default_pretrained(DETECTION_MODEL))
DETECTION_DEVICE = get_str(
    "DETECTION_DEVICE",
    "auto",
    pattern=r"auto|cpu|cuda(:\d+)?",
    expected="auto, cpu, cuda or cuda:N",
)
DETECTION_PRECISION = get_str(
    "DETECTION_PRECISION", "auto", choices=("auto", "fp32", "bf16", "fp16")
)
DETECTION_BATCH_SIZE = get_int("DETECTION_BATCH_SIZE", 16, min=1)
# What the normality memory embeds per frame: `regions` (the whole frame and its quadrants
# from one forward pass, as fast as prompts mode) or `crops` (each of the five views
# embedded on its own: five passes, more sensitive to small local changes).
DETECTION_NORMALITY_VIEWS = get_str(
    "DETECTION_NORMALITY_VIEWS", "regions", choices=("regions", "crops")
)
# How live cameras are decoded when sampled below their frame rate (issue 16): `auto`
# (keyframes only when the sampling interval spans the stream's keyframe interval, else
# every frame decoded and only the sampled ones converted), `grab` (that second way always),
# `keyframes` (keyframes only always) or `all` (every frame decoded and converted).
DETECTION_DECODE = get_str("DETECTION_DECODE", "auto", choices=("auto", "all", "grab", "keyframes"))
# How many live cameras a worker samples at once faster than scoring needs, for a watched
# live picture or a recording incident clip (4 frames/s: every frame decoded). The others'
# pictures and clips take the frames sampled for scoring (detection/worker/fullrate.py).
DETECTION_FULL_RATE_CAMERAS = get_int("DETECTION_FULL_RATE_CAMERAS", 4, min=0)
# A worker's claim on an analysis lapses this long after its last heartbeat; another
# worker then resumes the analysis from its last stored frame.
DETECTION_LEASE_SECONDS = get_int("DETECTION_LEASE_SECONDS", 30, min=5)
# Retention (detection/retention.py, `manage.py prune`); 0 = keep forever. Raw scores older
# than DETECTION_RETENTION_DAYS (or an analysis's own retention_days) become per-minute
# rollups, kept DETECTION_ROLLUP_RETENTION_DAYS; closed incidents (and their thumbnails,
# frames and clips) are kept DETECTION_INCIDENT_RETENTION_DAYS. Workers prune every
# DETECTION_PRUNE_INTERVAL_MINUTES (0 = never: run `manage.py prune` from cron instead),
# one worker of the deployment at a time.
DETECTION_RETENTION_DAYS = get_int("DETECTION_RETENTION_DAYS", 30, min=0)
DETECTION_ROLLUP_RETENTION_DAYS = get_int("DETECTION_ROLLUP_RETENTION_DAYS", 730, min=0)
DETECTION_INCIDENT_RETENTION_DAYS = get_int("DETECTION_INCIDENT_RETENTION_DAYS", 365, min=0)
DETECTION_PRUNE_INTERVAL_MINUTES = get_int("DETECTION_PRUNE_INTERVAL_MINUTES", 60, min=0)
# Largest video /upload/ accepts, in MiB; bigger uploads are refused while they stream in.
DETECTION_MAX_UPLOAD_MB = get_int("DETECTION_MAX_UPLOAD_MB", 2048, min=1)
# None = the model's own learned logit_scale; the prototype used a fixed 100.
DETECTION_LOGIT_SCALE: float | None = (
    None
    if get_str("DETECTION_LOGIT_SCALE", "model").lower() == "model"
    else get_float("DETECTION_LOGIT_SCALE", 100.0, gt=0)
)
# Where downloaded weights go; None keeps open_clip's / Hugging Face's default cache.
_cache_dir = get_optional_str("DETECTION_CACHE_DIR")
DETECTION_CACHE_DIR: Path | None = Path(_cache_dir).expanduser().resolve() if _cache_dir else None
# The prompt assistant (README, "Prompt helpers"): an OpenAI-compatible chat-completions
# endpoint (Ollama: http://127.0.0.1:11434/v1) that turns a phrase into prompts. Unset: the
# offline templates. Loopback and the LAN are fine (the operator chose the URL); link-local
# and cloud metadata never (docs/security.md). Any failure falls back to the templates.
PROMPT_ASSISTANT_URL = get_optional_str("PROMPT_ASSISTANT_URL")
PROMPT_ASSISTANT_MODEL = get_str("PROMPT_ASSISTANT_MODEL", "")
PROMPT_ASSISTANT_API_KEY = get_optional_str("PROMPT_ASSISTANT_API_KEY")
PROMPT_ASSISTANT_TIMEOUT = get_float("PROMPT_ASSISTANT_TIMEOUT", 10.0, gt=0)

# --- Notifications (detection/worker/notifications.py, webhooks.py) ---------------------

# E-mail through Django's SMTP backend; the worker sends it, so workers need these.
# EMAIL_TIMEOUT bounds each SMTP operation (mail goes out on a background thread, never in
# the scoring path, but a hung server must not hold mail for ever).
EMAIL_HOST = get_str("EMAIL_HOST", "localhost")
EMAIL_PORT = get_int("EMAIL_PORT", 25, min=1)
EMAIL_HOST_USER = get_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = get_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = get_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = get_bool("EMAIL_USE_SSL", False)
EMAIL_TIMEOUT = get_float("EMAIL_TIMEOUT", 10.0, gt=0)
DEFAULT_FROM_EMAIL = get_str("DEFAULT_FROM_EMAIL", "clipwatch@localhost")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured("EMAIL_USE_TLS and EMAIL_USE_SSL exclude each other: set one.")
# The portal's address as its users reach it (https://watch.example.com): links in e-mail
# are absolute only with it.
DETECTION_PUBLIC_URL = get_str(
    "DETECTION_PUBLIC_URL",
    "",
    pattern=r"https?://[^\s/]+(/[^\s]*)?",
    expected="an http(s) URL such as https://watch.example.com",
)
# At most one incident mail per analysis this often; openings in between are counted in
# the next mail.
DETECTION_EMAIL_INTERVAL_MINUTES = get_float("DETECTION_EMAIL_INTERVAL_MINUTES", 10.0, gt=0)
# Webhook deliveries: attempts per event, and the wait after the first failure (doubling
# after each further one: 5 attempts, 60 s = retries over 15 minutes).
DETECTION_WEBHOOK_ATTEMPTS = get_int("DETECTION_WEBHOOK_ATTEMPTS", 5, min=1)
DETECTION_WEBHOOK_RETRY_SECONDS = get_float("DETECTION_WEBHOOK_RETRY_SECONDS", 60.0, gt=0)

# --- Health and metrics (detection/health.py, detection/metrics.py) ---------------------

# /healthz fails when no worker has written its heartbeat row for this long (workers write
# it every 5 s; a first model download does not stop them).
HEALTH_WORKER_STALE_SECONDS = get_int("HEALTH_WORKER_STALE_SECONDS", 60, min=10)
# Who may scrape /metrics and the workers' metrics ports: a client presenting
# `Authorization: Bearer <METRICS_TOKEN>`, or one from METRICS_ALLOWED_NETWORKS (loopback
# while debugging). Neither set: metrics are off (404).
METRICS_TOKEN = get_optional_str("METRICS_TOKEN")
METRICS_ALLOWED_NETWORKS = get_networks(
    "METRICS_ALLOWED_NETWORKS", ["127.0.0.0/8", "::1/128"] if DEBUG else []
)
# A worker serves its own metrics on this port (0: not at all), or the next free one up to
# 15 above it when several workers share a machine, on this address.
DETECTION_METRICS_PORT = get_int("DETECTION_METRICS_PORT", 0, min=0)
DETECTION_METRICS_ADDRESS = get_str("DETECTION_METRICS_ADDRESS", "127.0.0.1")

# --- Logging --------------------------------------------------------------------------

LOG_LEVEL = get_str(
    "DJANGO_LOG_LEVEL", "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    # stdout, as process managers (systemd's journal, Docker, Procfiles) expect; the
    # commands whose stdout is a result (analyze_*, bench) move it to stderr themselves.
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stdout",
            "formatter": "plain",
        },
    },
    # Third-party libraries (open_clip logs every loading step on the root logger at INFO)
    # stay at WARNING; our own apps log at DJANGO_LOG_LEVEL.
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "django": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        **{
            app: {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False}
            for app in ("portal", "cameras", "detection")
        },
    },
}

# --- Production hardening -------------------------------------------------------------

if not DEBUG:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = get_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    # The portal normally sits behind a TLS-terminating proxy that sets this header;
    # without it Django would see plain http and redirect forever.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    # Probes and scrapers on the web machine ask daphne itself over plain http (loopback);
    # a redirect to https would fail their check. Neither page sets a cookie.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]
    SECURE_HSTS_SECONDS = get_int("DJANGO_HSTS_SECONDS", 31_536_000, min=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = get_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", True)
    # The header alone does not enrol the domain; submitting it to hstspreload.org does.
    SECURE_HSTS_PRELOAD = get_bool("DJANGO_HSTS_PRELOAD", True)
