"""The reference agents: deterministic, local handlers for the original system's definitions.

Importing this package registers the six handlers and declares the four
handler-less definitions; list it in AGENT_HANDLER_MODULES to load them at startup.
"""

from __future__ import annotations

from agents.reference import (  # noqa: F401 - imported for their @register side effects
    brand_voice,
    content,
    definitions,
    email,
    seo,
    social,
    support,
)
