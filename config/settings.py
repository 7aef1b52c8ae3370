"""Parley settings: the one place that reads the environment.

With no environment at all this is the embedded default (SQLite file, eager
Celery tasks, turns run in the web process, the offline `local` provider, Stripe
off, DEBUG on). Setting `DATABASE_URL` and `REDIS_URL` switches to PostgreSQL and a
Redis broker with no code change. docs/configuration.md lists every variable read
here, with its default and meaning (tests/core/test_docs.py checks none is missing).
"""

import re
import secrets
from decimal import Decimal
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

# The embedded default is a local, single-process setup; any deployment names its
# database. DEBUG therefore defaults to on only when DATABASE_URL is unset, so a
# production environment never gets DEBUG by forgetting a variable.
EMBEDDED = "DATABASE_URL" not in env
DEBUG = env.bool("DEBUG", default=EMBEDDED)

SECRET_KEY = env.str("SECRET_KEY", default="")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[])
if DEBUG:
    if not SECRET_KEY:
        # Local use only: a random key made once and kept in a git-ignored file, so a
        # checkout never runs with a key anyone else knows.
        key_file = BASE_DIR / ".secret_key"
        if not key_file.exists():
            key_file.write_text(secrets.token_urlsafe(50))
            key_file.chmod(0o600)
        SECRET_KEY = key_file.read_text().strip()
    ALLOWED_HOSTS = ALLOWED_HOSTS or ["localhost", "127.0.0.1", "[::1]", "testserver"]
elif not SECRET_KEY or not ALLOWED_HOSTS:
    raise ImproperlyConfigured("With DEBUG off, SECRET_KEY and ALLOWED_HOSTS must be set in the environment.")

INSTALLED_APPS = [
    "core.admin_apps.ParleyAdminConfig",  # django.contrib.admin, as the staff console
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "djstripe",
    "pgtrigger",  # billing's ledger triggers (Meta.triggers): the database refuses rewriting history
    "core",
    "accounts",
    "billing",
    "chat",
    "reporting",
    "notifications",
    "routing",
    "organizations",
]

MIDDLEWARE = [
    # Outermost, so it sees every answer under /api/ (Django's own 404, 413 and 500
    # pages included, DEBUG on or off) and gives it the shared JSON error body.
    "core.middleware.ApiErrorBodyMiddleware",
    # A chunked body (no Content-Length) under /api/ and /v1/: read within the size limit, given its length.
    "core.middleware.ChunkedBodyMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Serves the admin and Swagger UI assets (bundled, never from a CDN) under gunicorn too.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

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
    # Several threads (SSE, eager tasks) share the file: wait for locks instead of failing.
    DATABASES["default"].setdefault("OPTIONS", {}).update({"timeout": 20, "transaction_mode": "IMMEDIATE"})
_sqlite = DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3"
# PostgreSQL: Django's own connection pool (psycopg_pool), one per process. A request
# or task borrows a connection for what it runs and gives it back; waits on a model or
# a stream hold none (core.db). Connections stay bounded at processes x DB_POOL_MAX_SIZE
# whatever the concurrency. DB_POOL_MAX_SIZE=0 turns the pool off (behind PgBouncer,
# say); connections are then kept CONN_MAX_AGE seconds.
DB_POOL_MAX_SIZE = 0 if _sqlite else env.int("DB_POOL_MAX_SIZE", default=12)
if DB_POOL_MAX_SIZE:
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": min(2, DB_POOL_MAX_SIZE),
        "max_size": DB_POOL_MAX_SIZE,
        "timeout": env.float("DB_POOL_TIMEOUT_SECONDS", default=20.0),
    }
DATABASES["default"]["CONN_MAX_AGE"] = 0 if DB_POOL_MAX_SIZE else env.int("CONN_MAX_AGE", default=0 if _sqlite else 60)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_USER_MODEL = "accounts.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
MEDIA_ROOT = env.path("MEDIA_ROOT", default=BASE_DIR / "media")

# --- Redis, cache and Celery -------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    # Fails open (core.cache): with Redis down, throttling lets requests through
    # rather than answer 500, and the rest of the API keeps working.
    CACHES = {
        "default": {
            "BACKEND": "core.cache.FailOpenRedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 1},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

CELERY_BROKER_URL = REDIS_URL or "memory://"
# kombu's Redis transport, keeping one client per channel (core.broker says why); a
# rediss:// URL keeps kombu's own, which reads TLS from the scheme.
if REDIS_URL.startswith("redis://"):
    CELERY_BROKER_TRANSPORT = "core.broker:Transport"
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=not REDIS_URL)
# Without a broker (the embedded default) turns run in the web process itself, off the
# request's thread, on a pool of TURN_THREADS threads, and their pieces reach the
# process's streams as they come (chat.dispatch, chat.streaming; docs/embedded-default.md).
# Off: an eager configuration runs a turn inside the request that accepted it.
TURNS_IN_PROCESS = env.bool("TURNS_IN_PROCESS", default=not REDIS_URL)
TURN_THREADS = env.int("TURN_THREADS", default=8)
if TURN_THREADS < 1:
    raise ImproperlyConfigured("TURN_THREADS must be 1 or more.")
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
# Celery's Django fixup closes every database connection around each task unless this
# is set; config.celery closes them the way Django does per request instead
# (CONN_MAX_AGE, broken connections). The fixup still recycles them every 2x this.
CELERY_DB_REUSE_MAX = 10_000
# A task whose worker died is redelivered after this many seconds (Redis broker).
# Workers look for such abandoned tasks every 10 s (kombu's default is every ~100 s).
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=3600),
    "unacked_restore_interval": 10,
    "unacked_restore_throttle": 1,
    # A send to a broker that is down fails at once, rather than after kombu's
    # reconnect loop (the turn stays in the outbox, the sweep hands it over later).
    # The worker's consumer keeps its own reconnect loop (broker_connection_max_retries).
    "socket_connect_timeout": 1,
    "max_retries": 0,
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# --- API ---------------------------------------------------------------------
# How many proxies in front append to X-Forwarded-For (core.throttling.client_address,
# the address throttles count by). 0: none, the socket's peer is the client and the
# header is ignored (a client can write anything in it). n: the n-th entry from the
# right, what the outermost trusted proxy saw. Beside SECURE_PROXY_SSL_HEADER in
# docs/configuration.md.
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0)
if TRUSTED_PROXY_COUNT < 0:
    raise ImproperlyConfigured("TRUSTED_PROXY_COUNT must be 0 (no proxy in front) or more.")
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["accounts.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "core.pagination.DefaultPagination",
    "PAGE_SIZE": 50,
    # The API documents JSON bodies only: a form-encoded or multipart body is a 415
    # naming its media type (uploads, chat/files_api.py, set their own parsers).
    # core.parsers: DRF's JSON parser, refusing a NUL, a lone surrogate or nesting past
    # 64 levels (a 400 naming where).
    "DEFAULT_PARSER_CLASSES": ["core.parsers.JSONParser"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_THROTTLE_CLASSES": [
        "core.throttling.AnonRateThrottle",
        "core.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env.str("THROTTLE_ANON_RATE", default="60/min"),
        "user": env.str("THROTTLE_USER_RATE", default="600/min"),
    },
    # Stock DRF throttles read this; Parley's own (core.throttling) read TRUSTED_PROXY_COUNT.
    "NUM_PROXIES": TRUSTED_PROXY_COUNT,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "core.exceptions.exception_handler",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Parley API",
    "DESCRIPTION": "LLM chat with prepaid credits.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "core.schema.add_error_responses"],
    # Stable names for the choice sets (drf-spectacular would otherwise name two
    # different `status` enums by a hash, Status608Enum and StatusA7cEnum, and rename
    # them whenever a choice changes). Dotted paths, loaded when the schema is built;
    # tests/core/test_schema.py checks that each still resolves.
    "ENUM_NAME_OVERRIDES": {
        "TurnStatus": "chat.models.Turn.Status",
        "SessionMode": "chat.models.ChatSession.Mode",
        "SessionSource": "chat.models.ChatSession.Source",
        "MessageRole": "chat.models.Message.Role",
        "LLMCallPurpose": "chat.models.LLMCall.Purpose",
        "LLMCallStatus": "chat.models.LLMCall.Status",
        "ToolCallStatus": "chat.models.ToolCall.Status",
        "TopUpStatus": "billing.models.TopUp.Status",
        "TopUpDisputeStatus": "billing.models.TopUp.DisputeStatus",
        "TopUpMode": "billing.models.TopUp.Mode",
        "TopUpRequestMode": ["payment_intent", "checkout"],
        "TransactionKind": "billing.models.TransactionKind",
        "HoldStatus": "billing.models.CreditHold.Status",
        "ModelProvider": "billing.models.ModelPrice.Provider",
        "BillingEnforcement": ["warn", "block"],
        "SpendWindow": "accounts.models.SpendWindow",
        "OrganizationRole": "organizations.models.Role",
        "ApiKeyScope": "accounts.models.ApiKeyScope",
        "UsageBucket": "reporting.selectors.BUCKETS",
    },
}

# Baseline endpoints used only by bench/ (bare INSERT); off unless a benchmark turns it on.
BENCH_ENDPOINTS = env.bool("BENCH_ENDPOINTS", default=False)
if BENCH_ENDPOINTS:
    INSTALLED_APPS.append("bench")  # its no-op task, for the worker to find

# Open registration is for local use: a deployment opens it on purpose.
ALLOW_REGISTRATION = env.bool("ALLOW_REGISTRATION", default=DEBUG)
# Credits each registered account starts with (a promotional `grant` ledger row,
# reference signup:<user id>: used before any credits bought), expiring after
# SIGNUP_CREDITS_DAYS days (0: never).
SIGNUP_CREDITS = Decimal(env.str("SIGNUP_CREDITS", default="0"))
SIGNUP_CREDITS_DAYS = env.int("SIGNUP_CREDITS_DAYS", default=0)
if SIGNUP_CREDITS_DAYS < 0:
    raise ImproperlyConfigured("SIGNUP_CREDITS_DAYS must be 0 (never expire) or more.")

# --- Billing -----------------------------------------------------------------
# Where this deployment is reached from outside: the base of links in emails (an
# organization's invitation).
SITE_URL = env.str("SITE_URL", default="http://localhost:8000")
LOW_BALANCE_THRESHOLD = Decimal(env.str("LOW_BALANCE_THRESHOLD", default="5.0"))
BILLING_ENFORCEMENT = env.str("BILLING_ENFORCEMENT", default="warn")
if BILLING_ENFORCEMENT not in ("warn", "block"):
    raise ImproperlyConfigured("BILLING_ENFORCEMENT must be 'warn' or 'block'.")
ADMIN_GRANT_MAX = Decimal(env.str("ADMIN_GRANT_MAX", default="10000"))
# In `warn` mode no hold may take the available balance below -BILLING_OVERDRAFT_LIMIT
# credits: a turn that could go past it is refused (402). `block` mode allows no overdraft.
BILLING_OVERDRAFT_LIMIT = Decimal(env.str("BILLING_OVERDRAFT_LIMIT", default="1"))
if not BILLING_OVERDRAFT_LIMIT.is_finite() or BILLING_OVERDRAFT_LIMIT < 0:
    raise ImproperlyConfigured("BILLING_OVERDRAFT_LIMIT must be a number of credits, 0 or more.")
if not SIGNUP_CREDITS.is_finite() or SIGNUP_CREDITS < 0 or SIGNUP_CREDITS > ADMIN_GRANT_MAX:
    raise ImproperlyConfigured("SIGNUP_CREDITS must be between 0 and ADMIN_GRANT_MAX.")
# How often beat's billing.expire_grants ends the grants whose expires_at has passed.
GRANT_EXPIRY_SWEEP_SECONDS = env.float("GRANT_EXPIRY_SWEEP_SECONDS", default=60.0)
CREDITS_PER_USD = Decimal(env.str("CREDITS_PER_USD", default="100"))
TOP_UP_MIN_USD = Decimal(env.str("TOP_UP_MIN_USD", default="1.00"))
TOP_UP_MAX_USD = Decimal(env.str("TOP_UP_MAX_USD", default="500.00"))

# --- Email (notices such as low_balance; the console by default) ---------------
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env.str("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env.str("EMAIL_HOST_PASSWORD", default="")  # a secret: from the environment only
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Parley <noreply@localhost>")

# --- Stripe (off when no secret key) -------------------------------------------
# Without STRIPE_SECRET_KEY top-ups answer 503 and nothing else changes. One API
# version is used everywhere: billing/stripe/client.py sets it as the client's global
# default and dj-stripe passes it on every call it makes. 2026-05-27.dahlia is the
# version dj-stripe 2.11 is built and tested against (its DEFAULT_STRIPE_API_VERSION).
STRIPE_SECRET_KEY = env.str("STRIPE_SECRET_KEY", default="")
if STRIPE_SECRET_KEY and not re.fullmatch(r"(sk|rk)_(test|live)_[A-Za-z0-9]{24,}", STRIPE_SECRET_KEY):
    # The key itself is never echoed.
    raise ImproperlyConfigured("STRIPE_SECRET_KEY is not a Stripe secret key (sk_test_..., sk_live_..., rk_...).")
STRIPE_API_VERSION = env.str("STRIPE_API_VERSION", default="2026-05-27.dahlia")
# Another Stripe host (a local stripe-mock, the test suite's fake); empty means Stripe's own.
STRIPE_API_BASE = env.str("STRIPE_API_BASE", default="")
# Live or test mode follows the key itself, so the two can never disagree.
STRIPE_LIVE_MODE = STRIPE_SECRET_KEY.startswith(("sk_live_", "rk_live_"))
DJSTRIPE_FOREIGN_KEY_TO_FIELD = "id"
# Every webhook is checked against its endpoint's signing secret (no unsigned shortcut).
DJSTRIPE_WEBHOOK_VALIDATION = "verify_signature"
DJSTRIPE_USE_NATIVE_JSONFIELD = True
# Webhook processing (billing/stripe/tasks.py): retries with exponential backoff up to this many times.
STRIPE_WEBHOOK_MAX_RETRIES = env.int("STRIPE_WEBHOOK_MAX_RETRIES", default=8)

# --- Models, tools, uploads --------------------------------------------------
OPENAI_API_KEY = env.str("OPENAI_API_KEY", default="")
OPENAI_BASE_URL = env.str("OPENAI_BASE_URL", default="")
ANTHROPIC_API_KEY = env.str("ANTHROPIC_API_KEY", default="")
ANTHROPIC_BASE_URL = env.str("ANTHROPIC_BASE_URL", default="")
LLM_TIMEOUT_SECONDS = env.float("LLM_TIMEOUT_SECONDS", default=60.0)
LLM_MAX_RETRIES = env.int("LLM_MAX_RETRIES", default=2)
# An upstream failing this many times within the window (its own failures: refused,
# timed out, 408/409/429/5xx, its key refused) cools down: routing.cooldown.
UPSTREAM_COOLDOWN_FAILURES = env.int("UPSTREAM_COOLDOWN_FAILURES", default=3)
UPSTREAM_COOLDOWN_WINDOW_SECONDS = env.float("UPSTREAM_COOLDOWN_WINDOW_SECONDS", default=60.0)
UPSTREAM_COOLDOWN_SECONDS = env.float("UPSTREAM_COOLDOWN_SECONDS", default=30.0)
LOCAL_LLM_LATENCY_MS = env.int("LOCAL_LLM_LATENCY_MS", default=0)
# Words per streamed piece of the `local` provider (1: a piece per word, as a hosted
# model streams about a token at a time).
LOCAL_LLM_PIECE_WORDS = env.int("LOCAL_LLM_PIECE_WORDS", default=4)
MAX_UPLOAD_BYTES = env.int("MAX_UPLOAD_BYTES", default=5 * 1024 * 1024)
# An upload's text is extracted in a child process (chat/extraction.py) with these
# bounds; an upload past one is refused with a 400 saying which.
UPLOAD_EXTRACT_TIMEOUT_SECONDS = env.float("UPLOAD_EXTRACT_TIMEOUT_SECONDS", default=10.0)
UPLOAD_EXTRACT_MEMORY_MB = env.int("UPLOAD_EXTRACT_MEMORY_MB", default=512)
# CPU time of the child (RLIMIT_CPU, whole seconds): bounds the work even when the
# machine is so busy that the wall-time limit alone would let it burn longer.
UPLOAD_EXTRACT_CPU_SECONDS = env.int("UPLOAD_EXTRACT_CPU_SECONDS", default=5)
# Extractions running at once in one web process; a further upload waits for a place
# up to UPLOAD_EXTRACT_WAIT_SECONDS, then is refused (429 with Retry-After).
UPLOAD_EXTRACT_CONCURRENCY = env.int("UPLOAD_EXTRACT_CONCURRENCY", default=2)
UPLOAD_EXTRACT_WAIT_SECONDS = env.float("UPLOAD_EXTRACT_WAIT_SECONDS", default=2.0)
PDF_MAX_PAGES = env.int("PDF_MAX_PAGES", default=500)
# The page content a PDF's text is read from, inflated, summed over its pages.
PDF_MAX_DECODED_BYTES = env.int("PDF_MAX_DECODED_BYTES", default=32 * 1024 * 1024)
# Operations (each operator and each operand) in that page content, summed over its
# pages: counted before pypdf parses any of it (chat/extraction.py).
PDF_MAX_CONTENT_OPERATIONS = env.int("PDF_MAX_CONTENT_OPERATIONS", default=500_000)
WEB_SEARCH_URL = env.str("WEB_SEARCH_URL", default="")
WEB_SEARCH_TIMEOUT_SECONDS = env.float("WEB_SEARCH_TIMEOUT_SECONDS", default=10.0)
MAX_TOOL_ROUNDS = env.int("MAX_TOOL_ROUNDS", default=4)
MAX_ORCHESTRATOR_STEPS = env.int("MAX_ORCHESTRATOR_STEPS", default=6)
TURN_MAX_WAIT_SECONDS = env.int("TURN_MAX_WAIT_SECONDS", default=30)
# Threads of the web process's pool for requests (core.asgi).
WEB_THREADS = env.int("WEB_THREADS", default=6)
# Fair use (429 with Retry-After beyond them): turns queued or running, open streams.
MAX_CONCURRENT_TURNS_PER_USER = env.int("MAX_CONCURRENT_TURNS_PER_USER", default=16)
MAX_STREAMS_PER_USER = env.int("MAX_STREAMS_PER_USER", default=32)
# The header that names a request's end user when the body does not (the OpenAI
# `user` field): Open WebUI's, with ENABLE_FORWARD_USER_INFO_HEADERS (accounts.attribution).
END_USER_HEADER = env.str("END_USER_HEADER", default="X-OpenWebUI-User-Id")
# Turn reliability (chat.services.turns, chat.leases): a running turn's lease, renewed
# every third of it; the beat sweep's period; when a handed-over turn that has not
# started is handed over again; how often a turn may be taken over before it is
# failed; how long a worker retries a completion the database refused.
TURN_LEASE_SECONDS = env.int("TURN_LEASE_SECONDS", default=30)
TURN_SWEEP_SECONDS = env.float("TURN_SWEEP_SECONDS", default=5.0)
TURN_REDISPATCH_SECONDS = env.int("TURN_REDISPATCH_SECONDS", default=60)
TURN_MAX_ATTEMPTS = env.int("TURN_MAX_ATTEMPTS", default=3)
TURN_COMPLETE_RETRY_SECONDS = env.float("TURN_COMPLETE_RETRY_SECONDS", default=15.0)

# GET /metrics (core.metrics, docs/metrics.md): the bearer token a scraper sends; unset, 404.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
# prometheus-client's multiprocess mode (the Procfile's bin/with-metrics sets it): the
# library reads it itself when imported; this copy tells /metrics to sum the directory.
# Made here too: set for every process (manage.py, beat), it must exist before a metric does.
PROMETHEUS_MULTIPROC_DIR = env.str("PROMETHEUS_MULTIPROC_DIR", default="")
if PROMETHEUS_MULTIPROC_DIR:
    Path(PROMETHEUS_MULTIPROC_DIR).mkdir(parents=True, exist_ok=True)

# --- Logging: never log request bodies or secrets ------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    # An invitation's token is in its link's path, which django.request logs on a 4xx.
    "filters": {"redact_secret_paths": {"()": "core.logging.RedactSecretPaths"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["redact_secret_paths"]}
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
}

# --- HTTPS (docs/production.md; `manage.py check --deploy` is clean with them) ------
if not DEBUG:
    SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=True)
    CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=True)
# The header by which the TLS-terminating proxy in front says a request came over
# https; trust it only behind such a proxy (a client reaching the app directly could
# send it). Empty: no such proxy. Default: X-Forwarded-Proto when DEBUG is off. The
# client's address behind such proxies: TRUSTED_PROXY_COUNT, in the API section.
_proxy_header = env.str("SECURE_PROXY_SSL_HEADER", default="" if DEBUG else "X-Forwarded-Proto").strip()
if _proxy_header:
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + _proxy_header.upper().replace("-", "_"), "https")
# Redirect plain http to https (off by default: behind a proxy that redirects itself,
# or for local runs on PostgreSQL). The health probe stays reachable over http.
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
SECURE_REDIRECT_EXEMPT = [r"^api/v1/health$"]
# HSTS: browsers keep to https for this many seconds once they have seen it. Start
# small; a long value cannot be taken back from browsers that saw it.
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
