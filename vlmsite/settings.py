"""Settings, from the environment only (django-environ). Each setting has one name and one default here;
the README's configuration table lists them all. A `.env` file in the project root is read if present
(`make demo` writes one with a generated SECRET_KEY)."""

from __future__ import annotations

from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY is not set (and DEBUG is off). `make demo` writes one into .env.")
    SECRET_KEY = "django-insecure-debug-only"
# The spec serves on 0.0.0.0 for clients on any interface, so any Host is accepted unless restricted.
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["*"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# HTTPS (`manage.py check --deploy` is clean with the production environment in README.md). The defaults are
# the production ones wherever they cannot break plain http: the HSTS header is only ever sent on HTTPS
# responses, and browsers keep Secure cookies on http://localhost. `make demo` turns the two cookie flags
# off, for admin sign-in from other machines over plain http. SECURE_SSL_REDIRECT stays opt-in: behind a
# TLS proxy that does not set SECURE_PROXY_SSL_HEADER, Django would redirect every request forever.
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
# e.g. `HTTP_X_FORWARDED_PROTO,https`, only behind a proxy that always sets (or strips) that header.
SECURE_PROXY_SSL_HEADER = tuple(env.list("SECURE_PROXY_SSL_HEADER", default=[])) or None
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=365 * 24 * 3600)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=True)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=True)
# W021 asks for HSTS preloading, which is the domain owner's decision at hstspreload.org (and binds every
# subdomain of the domain for months), not a server default.
SILENCED_SYSTEM_CHECKS = ["security.W021"]

# gunicorn.conf.py reads these two; they live here so every setting has one place.
HOST = env.str("HOST", default="0.0.0.0")
PORT = env.int("PORT", default=8000)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_prometheus",
    "rest_framework",
    "rest_framework_api_key",  # its abstract key model (its own table stays empty); before apikeys
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files, served locally (no CDN)
    "apikeys",
    "inference",
    "monitoring",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "inference.middleware.RequestLogMiddleware",
    "inference.middleware.BodySizeLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Serves the admin's static files under gunicorn (collected by `make` into STATIC_ROOT).
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "vlmsite.urls"
WSGI_APPLICATION = "vlmsite.wsgi.application"
APPEND_SLASH = False

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
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
_SQLITE = DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3"
# Seconds a request thread keeps its database connection (Django's persistent connections). The request-log
# row is written after the response, but on a keep-alive connection the client's next request waits for it:
# opening and closing a SQLite connection per request (the last close checkpoints the WAL) cost ~6 ms of it.
# A SQLite connection is a file handle, so it is kept by default; a PostgreSQL one is a server process, and
# every gunicorn thread would hold one (VLM_THREADS x VLM_WORKERS against max_connections), so it is opt-in.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=600 if _SQLITE else 0)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if _SQLITE:
    # Many request threads write log rows at once: WAL lets readers and one writer overlap,
    # IMMEDIATE takes the write lock up front (no lock upgrade deadlocks), and the timeout waits
    # for it instead of failing with "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
DATABASES["default"]["ENGINE"] = DATABASES["default"]["ENGINE"].replace(
    "django.db.backends.", "django_prometheus.db.backends."
)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CACHES = {"default": env.cache("CACHE_URL", default="locmemcache://")}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# Front-end libraries come from npm at set-up (`make` runs `npm ci`; package.json pins them), never
# from the repository: the dashboard's Chart.js is served from node_modules as static/vendor/chart.js/.
STATICFILES_DIRS = [("vendor/chart.js", BASE_DIR / "node_modules" / "chart.js" / "dist")]

# --- access: API keys and rate limits (inference/auth.py, inference/throttles.py) ----------------
# Off by default so the spec's examples work as written; README recommends true.
VLM_REQUIRE_API_KEY = env.bool("VLM_REQUIRE_API_KEY", default=False)
# Per API key (a key's own rate in the admin wins) and per staff user, e.g. 60/min; empty: no limit.
VLM_RATE_LIMIT = env.str("VLM_RATE_LIMIT", default="")
# Per client address, for requests without a key; empty: no limit.
VLM_ANON_RATE_LIMIT = env.str("VLM_ANON_RATE_LIMIT", default="")
# Reverse proxies in front of the server that append to X-Forwarded-For; 0 trusts no such header, so a
# client cannot pick the address its anonymous rate limit is counted under.
VLM_NUM_PROXIES = env.int("VLM_NUM_PROXIES", default=0)

REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["inference.parsers.StrictJSONParser"],
    # Defaults, so that every API view (new ones included) is covered; /health opts out explicitly.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "inference.auth.APIKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["inference.auth.APIKeyRequiredWhenConfigured"],
    "DEFAULT_THROTTLE_CLASSES": ["inference.throttles.ClientRateThrottle"],
    "NUM_PROXIES": VLM_NUM_PROXIES,
    "EXCEPTION_HANDLER": "inference.exception_handler.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Qwen2.5-VL server",
    "DESCRIPTION": 'Qwen2.5-VL over REST. Errors are `{"detail": ...}`; every request is in the request log.',
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "PREPROCESSING_HOOKS": ["inference.schema.api_endpoints_only"],
}

# --- the model ---------------------------------------------------------------------------------
VLM_MODEL = env.str("VLM_MODEL", default="Qwen/Qwen2.5-VL-7B-Instruct")
# The model's name in the OpenAI-compatible API (/v1/models, `model` in requests and responses), as
# vLLM's --served-model-name; empty: VLM_MODEL itself (a local folder's path, for instance).
VLM_SERVED_MODEL_NAME = env.str("VLM_SERVED_MODEL_NAME", default="")
VLM_DEVICE = env.str("VLM_DEVICE", default="auto")
VLM_MAX_NEW_TOKENS = env.int("VLM_MAX_NEW_TOKENS", default=512)
VLM_MAX_NEW_TOKENS_LIMIT = env.int("VLM_MAX_NEW_TOKENS_LIMIT", default=4096)
VLM_DEFAULT_TEMPERATURE = env.float("VLM_DEFAULT_TEMPERATURE", default=0.7)
VLM_DEFAULT_TOP_P = env.float("VLM_DEFAULT_TOP_P", default=0.9)
VLM_VRAM_THRESHOLD = env.float("VLM_VRAM_THRESHOLD", default=0.85)

# --- the engine --------------------------------------------------------------------------------
VLM_MAX_BATCH_SIZE = env.int("VLM_MAX_BATCH_SIZE", default=16)
VLM_BATCH_WAIT_MS = env.float("VLM_BATCH_WAIT_MS", default=10.0)
VLM_MAX_QUEUE = env.int("VLM_MAX_QUEUE", default=64)
VLM_REQUEST_TIMEOUT_S = env.float("VLM_REQUEST_TIMEOUT_S", default=300.0)

# --- media -------------------------------------------------------------------------------------
VLM_ALLOWED_MEDIA_ROOT = env.str("VLM_ALLOWED_MEDIA_ROOT", default="") or None
VLM_ALLOW_PRIVATE_MEDIA_URLS = env.bool("VLM_ALLOW_PRIVATE_MEDIA_URLS", default=False)
VLM_ALLOWED_MEDIA_DOMAINS = env.list("VLM_ALLOWED_MEDIA_DOMAINS", default=[])
VLM_MAX_IMAGE_BYTES = env.int("VLM_MAX_IMAGE_BYTES", default=20 * 1024 * 1024)
VLM_MAX_VIDEO_BYTES = env.int("VLM_MAX_VIDEO_BYTES", default=200 * 1024 * 1024)
VLM_MAX_PIXELS = env.int("VLM_MAX_PIXELS", default=1280 * 28 * 28)
VLM_MIN_PIXELS = env.int("VLM_MIN_PIXELS", default=4 * 28 * 28)
VLM_VIDEO_FPS = env.float("VLM_VIDEO_FPS", default=2.0)
VLM_MAX_VIDEO_FRAMES = env.int("VLM_MAX_VIDEO_FRAMES", default=64)
VLM_MAX_VIDEO_SECONDS = env.float("VLM_MAX_VIDEO_SECONDS", default=600.0)
VLM_MAX_IMAGES_PER_REQUEST = env.int("VLM_MAX_IMAGES_PER_REQUEST", default=8)
VLM_MAX_VIDEOS_PER_REQUEST = env.int("VLM_MAX_VIDEOS_PER_REQUEST", default=2)
# Total wall clock of one media fetch (DNS, connect, every redirect, the whole body), not a per-read timeout.
VLM_IMAGE_FETCH_TIMEOUT_S = env.float("VLM_IMAGE_FETCH_TIMEOUT_S", default=10.0)
VLM_VIDEO_FETCH_TIMEOUT_S = env.float("VLM_VIDEO_FETCH_TIMEOUT_S", default=30.0)

# --- requests and the request log --------------------------------------------------------------
VLM_MAX_BODY_BYTES = env.int("VLM_MAX_BODY_BYTES", default=50 * 1024 * 1024)
# Django's own cap on bodies read into memory follows ours, so neither refuses first by surprise.
DATA_UPLOAD_MAX_MEMORY_SIZE = VLM_MAX_BODY_BYTES
# Shape limits checked before any content is validated, tokenized or fetched: a 50 MB body of a million
# tiny items takes DRF about 15 s to validate, and 10 MB of text takes the tokenizer 8 s. A million
# characters (about 250k tokens) is more than a 128k context holds, so no prompt that fits is refused.
VLM_MAX_MESSAGES = env.int("VLM_MAX_MESSAGES", default=1000)
VLM_MAX_CONTENT_ITEMS = env.int("VLM_MAX_CONTENT_ITEMS", default=1000)
VLM_MAX_PROMPT_CHARS = env.int("VLM_MAX_PROMPT_CHARS", default=1_000_000)
VLM_LOG_PROMPTS = env.bool("VLM_LOG_PROMPTS", default=True)
# How request-log rows are written: `thread`, by one writer thread per process that inserts what has queued in
# one transaction (off the request threads, see inference/log_writer.py); `inline`, by each request thread once
# its response is sent.
VLM_REQUEST_LOG_WRITER = env.str("VLM_REQUEST_LOG_WRITER", default="thread")
if VLM_REQUEST_LOG_WRITER not in ("thread", "inline"):
    raise ImproperlyConfigured(f"VLM_REQUEST_LOG_WRITER must be thread or inline, not {VLM_REQUEST_LOG_WRITER!r}")
# The playground page at / (it calls the API with the key a person types in, so it grants nothing).
VLM_PLAYGROUND = env.bool("VLM_PLAYGROUND", default=True)
# `manage.py prune_request_log` (run it from cron or a systemd timer) deletes rows older than this; 0 keeps all.
VLM_LOG_RETENTION_DAYS = env.int("VLM_LOG_RETENTION_DAYS", default=30)

# --- metrics (GET /metrics) ----------------------------------------------------------------------
# Open by default, as Prometheus expects. Addresses or networks (CIDR) allowed to scrape; empty: any.
VLM_METRICS_ALLOWED_IPS = env.list("VLM_METRICS_ALLOWED_IPS", default=[])
# When set, scrapers must send `Authorization: Bearer <token>` (Prometheus: `authorization.credentials`).
VLM_METRICS_TOKEN = env.str("VLM_METRICS_TOKEN", default="")
# prometheus_client's multiprocess mode reads it from the environment when first imported;
# gunicorn.conf.py sets a fresh temporary directory when it is empty, so workers' metrics add up.
PROMETHEUS_MULTIPROC_DIR = env.str("PROMETHEUS_MULTIPROC_DIR", default="")

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.request": {"level": "ERROR"}},
}
