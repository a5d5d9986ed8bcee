"""Settings, read from the environment.

With nothing set the project runs embedded: SQLite under var/, a local-memory
cache, process-local policy state and Celery in eager mode. Production differs
only by environment variables (see README "Configuration").
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from config.settings.env import env_bool, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = Path(env_str("VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DEBUG", default=True)


def _dev_secret_key() -> str:
    """A secret generated once per checkout, so dev sessions survive restarts."""
    path = VAR_DIR / "dev-secret-key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = env_str("SECRET_KEY")
if SECRET_KEY is None:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = _dev_secret_key()

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS")
if not ALLOWED_HOSTS:
    if not DEBUG:
        raise ImproperlyConfigured("ALLOWED_HOSTS must be set when DEBUG is off")
    ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]", "testserver"]
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_results",
    "agents",
    "runs",
    "orchestration",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "config.middleware.ApiErrorMiddleware",
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

# --- Database -------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}")
EMBEDDED_DATABASE = DATABASE_URL.startswith("sqlite")
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL,
        # Persistent connections: a new PostgreSQL connection costs milliseconds.
        conn_max_age=env_int("CONN_MAX_AGE", 0 if EMBEDDED_DATABASE else 600),
        conn_health_checks=not EMBEDDED_DATABASE,
    )
}
if EMBEDDED_DATABASE:
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
# A PostgreSQL connection pool per process (psycopg_pool) in place of persistent
# connections, when DATABASE_POOL_MAX_SIZE > 0. The ASGI server runs every request in a
# thread of its own, so without a pool each concurrent request holds a connection of its
# own and a burst of requests exhausts the server's max_connections; config/asgi.py turns
# the pool on (docs/CONFIGURATION.md). A request waits DATABASE_POOL_TIMEOUT_S for a free
# connection, then answers 503 like any database outage.
DATABASE_POOL_MAX_SIZE = env_int("DATABASE_POOL_MAX_SIZE", 0)
if DATABASE_POOL_MAX_SIZE > 0 and not EMBEDDED_DATABASE:
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool keeps the connections
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": DATABASE_POOL_MAX_SIZE,
        "timeout": env_int("DATABASE_POOL_TIMEOUT_S", 10),
    }
# The statements every run executes (runs.sql.prepared_cursor) are prepared by the server
# once one ran this many times on a connection, so they are planned once per connection
# instead of on every run; 0 prepares at once, -1 never (e.g. behind PgBouncer older than
# 1.21 in transaction mode, which cannot carry prepared statements). The ORM's own queries
# keep Django's client-side binding whatever this is.
DATABASE_PREPARE_THRESHOLD = env_int("DATABASE_PREPARE_THRESHOLD", 5)
if not EMBEDDED_DATABASE and DATABASE_PREPARE_THRESHOLD >= 0:
    DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = DATABASE_PREPARE_THRESHOLD
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis and cache --------------------------------------------------------
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env_str("CACHE_KEY_PREFIX", "acp"),
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.DefaultClient",
                # The cache holds hints (a RUNNING run's cancel flag, failed-authentication
                # counters): with Redis down a read is a miss and a write is dropped, never
                # an error that fails a run or a request. Not logged one by one (that would
                # be a traceback per request during an outage): the policy store's warning
                # and the health report say Redis is down. A hung Redis costs half a second.
                "IGNORE_EXCEPTIONS": True,
                "SOCKET_CONNECT_TIMEOUT": 0.5,
                "SOCKET_TIMEOUT": 0.5,
            },
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
# The bus's Redis pub/sub channel. Channels are server-wide, not per database, so the
# default names the database: deployments sharing one Redis server on different
# databases do not hear each other's events.
EVENTS_CHANNEL = env_str(
    "EVENTS_CHANNEL",
    f"acp:events:{(urlsplit(REDIS_URL).path.strip('/') or '0') if REDIS_URL else 'local'}",
)

# Shared policies (rate limits, circuit breakers; docs/FLEET.md). In Redis when
# POLICY_REDIS_URL or else REDIS_URL is set; POLICY_REDIS_URL set but empty keeps them
# process-local. POLICY_FAIL_MODE: what a decision does while that Redis is unreachable
# ("open" admits, "closed" refuses; see the README).
if "POLICY_REDIS_URL" in os.environ:
    POLICY_REDIS_URL = os.environ["POLICY_REDIS_URL"].strip()
POLICY_FAIL_MODE = env_str("POLICY_FAIL_MODE", "open")
if POLICY_FAIL_MODE not in ("open", "closed"):
    raise ImproperlyConfigured("POLICY_FAIL_MODE must be 'open' or 'closed'")
# How long a process reuses its own finding that an agent's circuit is steady (CLOSED, a
# full window without a failure) before asking Redis again; 0 asks on every call.
POLICY_CIRCUIT_STEADY_REUSE_MS = env_int("POLICY_CIRCUIT_STEADY_REUSE_MS", 250)
if POLICY_CIRCUIT_STEADY_REUSE_MS < 0:
    raise ImproperlyConfigured("POLICY_CIRCUIT_STEADY_REUSE_MS must be 0 or more")

# --- Celery -------------------------------------------------------------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
# Without a broker the project runs embedded: tasks execute in the caller's process.
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", default=CELERY_BROKER_URL is None)
if CELERY_BROKER_URL is None:
    CELERY_BROKER_URL = "memory://"
# A redis:// broker goes through kombu's Redis transport with one client per channel
# instead of one per publish (orchestration/broker.py); other brokers keep their own.
if CELERY_BROKER_URL.startswith("redis://"):
    CELERY_BROKER_TRANSPORT = "orchestration.broker:Transport"
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_RESULT_BACKEND = "django-db"
CELERY_RESULT_EXTENDED = False
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery's Django fixup closes the database connection before and after every task unless
# this is set (then once every CELERY_DB_REUSE_MAX tasks): a new PostgreSQL connection per
# run costs more than the run. Workers keep theirs; orchestration.execute_run checks it
# like a request does (CONN_MAX_AGE, errors). 0 restores Celery's default.
CELERY_DB_REUSE_MAX = env_int("CELERY_DB_REUSE_MAX", 1000)
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_TASK_DEFAULT_QUEUE", "default")
# The queue async runs are sent to (until node routing picks a node or region queue).
RUN_DEFAULT_QUEUE = env_str("RUN_DEFAULT_QUEUE", CELERY_TASK_DEFAULT_QUEUE)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"
# The fleet's housekeeping (docs/FLEET.md), every default heartbeat interval (5 s). A
# pass that waited longer than one interval in the queue is dropped: the next one does
# the same work with fresher data.
CELERY_BEAT_SCHEDULE = {
    "node-sweep": {
        "task": "orchestration.node_sweep",
        "schedule": 5.0,
        "options": {"expires": 5.0},
    },
    "runs-reap": {
        "task": "orchestration.runs_reap",
        "schedule": 5.0,
        "options": {"expires": 5.0},
    },
}
# Retention of the event log (docs/EVENTS.md): hourly, in batches, so each pass is short.
CELERY_BEAT_SCHEDULE["events-prune"] = {
    "task": "orchestration.events_prune",
    "schedule": 3600.0,
    "options": {"expires": 3600.0},
}

# --- Orchestrator identity -----------------------------------------------------
ORCHESTRATOR_NODE_ID = env_str("ORCHESTRATOR_NODE_ID", f"{socket.gethostname()}-{os.getpid()}")
ORCHESTRATOR_REGION = env_str("ORCHESTRATOR_REGION", "local")
# Shared secret with which remote nodes call the fleet endpoints ("node_..." bearer token).
ORCHESTRATOR_NODE_TOKEN = env_str("ORCHESTRATOR_NODE_TOKEN", "")
# Register this process as a node and heartbeat in the background (off in tests).
NODE_AUTOREGISTER = env_bool("NODE_AUTOREGISTER", default=True)
# Absolute base URL of this API as remote agents reach it (run callbacks).
PUBLIC_BASE_URL = env_str("PUBLIC_BASE_URL", "http://127.0.0.1:8000")
# How long a claimed run belongs to its node without a heartbeat extending it.
RUN_LEASE_SECONDS = env_int("RUN_LEASE_SECONDS", 60)
# Threads that run handlers so callers can stop waiting at the timeout.
HANDLER_THREADS = env_int("HANDLER_THREADS", 16)
# Intent resolution keeps the definitions it read per process while the shared store's
# definitions version stands, this many seconds at most (0: read them on every request).
AGENT_RESOLUTION_CACHE_SECONDS = env_int("AGENT_RESOLUTION_CACHE_SECONDS", 10)
# Modules whose import registers agent handlers (@register).
AGENT_HANDLER_MODULES = env_list(
    "AGENT_HANDLER_MODULES", ["agents.handlers.http", "agents.reference"]
)

# --- Event streams (GET /api/orchestration/events/stream, docs/EVENTS.md) ---------
# A comment line this often keeps proxies from closing an idle stream.
SSE_HEARTBEAT_S = env_int("SSE_HEARTBEAT_S", 15)
# Open streams per caller (API key, user or node) across all API processes; more: 429.
SSE_MAX_CONNECTIONS_PER_KEY = env_int("SSE_MAX_CONNECTIONS_PER_KEY", 5)
# Without live delivery (embedded mode, or Redis unreachable) streams poll this often.
SSE_POLL_S = env_int("SSE_POLL_S", 1)

# --- Auth, i18n, static ----------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "admin:login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(VAR_DIR / "static")))

# --- REST framework and the schema ------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "agents.authentication.ApiKeyAuthentication",
        "agents.authentication.OrganizationSessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["agents.permissions.HasScope"],
    "DEFAULT_PAGINATION_CLASS": "config.pagination.NewestFirstCursorPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "config.schema.ApiAutoSchema",
    "EXCEPTION_HANDLER": "config.exceptions.api_exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["config.parsers.ApiJSONParser"],
}
# --- Throttles on failed authentication (README "Request limits and throttles") ---
# Failed API authentications (key, node token, run token) per client address and window;
# more answer 429 RATE_LIMITED with Retry-After until the window ends. 0 turns it off.
AUTH_FAILURE_LIMIT = env_int("AUTH_FAILURE_LIMIT", 50)
AUTH_FAILURE_WINDOW_S = env_int("AUTH_FAILURE_WINDOW_S", 60)
# Failed admin logins per client address and per username and window; more answer 429.
ADMIN_LOGIN_FAILURE_LIMIT = env_int("ADMIN_LOGIN_FAILURE_LIMIT", 10)
ADMIN_LOGIN_WINDOW_S = env_int("ADMIN_LOGIN_WINDOW_S", 300)

# --- Request limits (README "Request limits and throttles") --------------------
# Largest request body; more answers 413 PAYLOAD_TOO_LARGE (Django's default, 2.5 MiB).
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("API_MAX_BODY_BYTES", 2_621_440)
# Deepest nesting of a JSON body; deeper answers 400 INVALID_REQUEST.
API_JSON_MAX_DEPTH = env_int("API_JSON_MAX_DEPTH", 32)
# Largest "payload" of POST /api/orchestrate, serialized; more answers 400 INVALID_REQUEST.
ORCHESTRATE_PAYLOAD_MAX_BYTES = env_int("ORCHESTRATE_PAYLOAD_MAX_BYTES", 1_048_576)
SPECTACULAR_SETTINGS = {
    "TITLE": "Agent Control Plane API",
    "DESCRIPTION": "Runs AI agents for many organizations and records everything they did.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/api/",
    "ENUM_NAME_OVERRIDES": {
        "RunStatusEnum": "runs.choices.RunStatus",
        "AgentStatusEnum": "agents.choices.AgentStatus",
        "AgentKindEnum": "agents.choices.AgentKind",
        "StepStatusEnum": "runs.choices.StepStatus",
        "ToolExecutionStatusEnum": "runs.choices.ToolExecutionStatus",
        "DatasetKindEnum": "agents.choices.DatasetKind",
    },
}

# --- Security (production = DEBUG off) -----------------------------------------------
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_HTTPONLY = True
if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", default=True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    if env_bool("TRUST_X_FORWARDED_PROTO", default=False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    # Health probes and Prometheus scrapes arrive over plain HTTP from inside the network.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]

# --- Logs (docs/OBSERVABILITY.md) ------------------------------------------------------
# JSON lines for log shippers in production; readable lines while developing (make run).
LOG_FORMAT = env_str("LOG_FORMAT", "console" if DEBUG else "json")
if LOG_FORMAT not in ("json", "console"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be 'json' or 'console', got {LOG_FORMAT!r}")
# dictConfig, then structlog on top, so structlog's loggers share the handlers.
LOGGING_CONFIG = "orchestration.observability.logging.logging_configure"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "structured": {
            "()": "orchestration.observability.logging.formatter",
            "log_format": LOG_FORMAT,
        }
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "structured"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
# Celery workers keep the handler above instead of replacing it with their own format.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# --- Metrics (docs/OBSERVABILITY.md) ------------------------------------------------------
# prometheus_client reads PROMETHEUS_MULTIPROC_DIR from the environment when it is
# imported: it must be set (to an empty directory, per deployment) before the processes
# start. Unset: each process keeps its metrics in memory (the embedded default).
PROMETHEUS_MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if PROMETHEUS_MULTIPROC_DIR is not None and not (
    PROMETHEUS_MULTIPROC_DIR.strip() and Path(PROMETHEUS_MULTIPROC_DIR).is_dir()
):
    raise ImproperlyConfigured(
        "PROMETHEUS_MULTIPROC_DIR must name an existing directory, got "
        f"{PROMETHEUS_MULTIPROC_DIR!r}"
    )
# Without a token only loopback callers may scrape, unless remote scrapes are allowed.
METRICS_ALLOW_REMOTE = env_bool("METRICS_ALLOW_REMOTE", default=False)
# When set, "Authorization: Bearer <token>" is required from every address.
METRICS_TOKEN = env_str("METRICS_TOKEN", "")
# acp_circuit_state asks the policy store about at most this many ACTIVE agents per scrape.
METRICS_CIRCUIT_AGENTS_MAX = env_int("METRICS_CIRCUIT_AGENTS_MAX", 500)
