from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Every request runs in a thread of its own here: share a bounded pool of database
# connections rather than open one per concurrent request (config/settings, "Database").
os.environ.setdefault("DATABASE_POOL_MAX_SIZE", "20")

application = get_asgi_application()

# Imported once the apps are loaded. This process serves the API: it registers as a fleet
# node and shuts the node down on SIGTERM (docs/OPERATIONS.md).
from orchestration.worker import api_node_start  # noqa: E402

api_node_start()
