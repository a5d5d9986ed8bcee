"""Demo data for the embedded console: an organization, an admin and an API key.

Idempotent: running it again creates nothing that already exists, and never
shows a secret it did not just create (only hashes and password hashes are stored).
"""

from __future__ import annotations

import secrets
from typing import TextIO

from django.contrib.auth import get_user_model
from django.db import transaction

from agents.choices import DatasetKind, MemberRole
from agents.models import ApiKey, Dataset, Organization
from agents.services import (
    agent_definitions_sync,
    api_key_create,
    member_add,
    organization_create,
)

DEMO_ORGANIZATION_SLUG = "demo"
DEMO_ORGANIZATION_NAME = "Demo"
DEMO_ADMIN_USERNAME = "admin"
DEMO_API_KEY_NAME = "demo"
DEMO_DATASET_SLUG = "brand-handbook"

# A small document set, so knowledge-search has something to find in the demo.
DEMO_DOCUMENTS = [
    {
        "id": "voice",
        "title": "Brand voice",
        "text": "We write in a warm, plain and confident voice. Short sentences. No jargon. "
        "We speak to customers as capable adults and never overpromise.",
    },
    {
        "id": "refunds",
        "title": "Refund policy",
        "text": "Customers can ask for a full refund within 30 days of purchase. Refunds are "
        "issued to the original payment method within five business days.",
    },
    {
        "id": "shipping",
        "title": "Shipping",
        "text": "Orders ship within two business days. Express shipping arrives the next day "
        "in most cities; tracking links are emailed when the parcel leaves the warehouse.",
    },
    {
        "id": "security",
        "title": "Account security",
        "text": "Enable two-factor authentication in account settings. We never ask for your "
        "password by email. Report suspicious messages to the security team.",
    },
]


@transaction.atomic
def demo_seed(*, stdout: TextIO | None = None) -> dict:
    """Create the demo organization, its owner "admin" and an API key, where missing.

    Returns ``organization``, ``user``, ``username``, ``password`` (None when the user
    already existed) and ``api_key`` (the raw key; None when an unrevoked "demo" key
    already existed).
    """

    def say(message: str) -> None:
        if stdout is not None:
            stdout.write(message + "\n")

    organization = Organization.objects.filter(slug=DEMO_ORGANIZATION_SLUG).first()
    if organization is None:
        organization = organization_create(slug=DEMO_ORGANIZATION_SLUG, name=DEMO_ORGANIZATION_NAME)
        say(f"Created organization {organization.slug!r}.")

    User = get_user_model()
    password = None
    user = User.objects.filter(**{User.USERNAME_FIELD: DEMO_ADMIN_USERNAME}).first()
    if user is None:
        password = secrets.token_urlsafe(12)
        user = User.objects.create_superuser(
            username=DEMO_ADMIN_USERNAME, email="admin@example.com", password=password
        )
        say(f"Created superuser {DEMO_ADMIN_USERNAME!r}.")
    member_add(organization=organization, user=user, role=MemberRole.OWNER)

    raw_key = None
    has_key = ApiKey.objects.filter(
        organization=organization, name=DEMO_API_KEY_NAME, revoked_at__isnull=True
    ).exists()
    if not has_key:
        raw_key = api_key_create(
            organization=organization, name=DEMO_API_KEY_NAME, created_by=user
        ).raw_key
        say(f"Created API key {DEMO_API_KEY_NAME!r}.")

    synced = agent_definitions_sync(organization=organization)
    if synced.created:
        say(f"Created agent definitions: {', '.join(synced.created)}.")
    _, dataset_created = Dataset.objects.get_or_create(
        organization=organization,
        slug=DEMO_DATASET_SLUG,
        defaults={
            "name": "Brand handbook",
            "kind": DatasetKind.DOCUMENTS,
            "description": "Demo documents for BrandVoiceAgent's knowledge-search.",
            "metadata": {"documents": DEMO_DOCUMENTS},
        },
    )
    if dataset_created:
        say(f"Created dataset {DEMO_DATASET_SLUG!r}.")

    return {
        "organization": organization,
        "user": user,
        "username": DEMO_ADMIN_USERNAME,
        "password": password,
        "api_key": raw_key,
    }
