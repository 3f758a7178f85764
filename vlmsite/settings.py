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
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
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

REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "EXCEPTION_HANDLER": "inference.exception_handler.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
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

# --- requests and the request log --------------------------------------------------------------
VLM_MAX_BODY_BYTES = env.int("VLM_MAX_BODY_BYTES", default=50 * 1024 * 1024)
# Django's own cap on bodies read into memory follows ours, so neither refuses first by surprise.
DATA_UPLOAD_MAX_MEMORY_SIZE = VLM_MAX_BODY_BYTES
VLM_LOG_PROMPTS = env.bool("VLM_LOG_PROMPTS", default=True)
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
