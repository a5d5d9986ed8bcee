"""The live configuration: validation, revisions and events, the API, the admin, propagation."""

from __future__ import annotations

import copy
import json
import os
import queue
import subprocess
import sys
import threading
import time

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from rest_framework.test import APIClient

from orchestration.choices import EventType
from orchestration.models import OrchestratorConfigRevision, OrchestratorEvent
from orchestration.services.config import (
    DEFAULT_DOCUMENT,
    agent_policy_live,
    config_current,
    config_revert,
    config_update,
)
from tests.factories import UserFactory
from tests.orchestration import workers

pytestmark = pytest.mark.django_db

URL = "/api/orchestration/config"
NODE_TOKEN = "node_test_config_4b1d"
LIVE_ADMIN_URL = "/admin/orchestration/orchestratorconfigrevision/live/"


@pytest.fixture
def node_client(settings) -> APIClient:
    settings.ORCHESTRATOR_NODE_TOKEN = NODE_TOKEN
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {NODE_TOKEN}")
    return client


@pytest.fixture
def staff_client(admin_user) -> APIClient:
    client = APIClient()
    client.force_login(admin_user)
    return client


def document(**changes: dict) -> dict:
    """The default document with some sections' fields changed: document(rate_limit={...})."""
    result = copy.deepcopy(DEFAULT_DOCUMENT)
    for section, fields in changes.items():
        result[section].update(fields)
    return result


def config_events() -> list[OrchestratorEvent]:
    return list(OrchestratorEvent.objects.filter(type=EventType.CONFIG_UPDATED).order_by("id"))


def assert_nothing_written() -> None:
    assert OrchestratorConfigRevision.objects.count() == 0
    assert config_events() == []


# --- GET -----------------------------------------------------------------------------------


def test_get_answers_the_default_document_to_an_organization_key(tenant_a):
    response = tenant_a.client.get(URL)

    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    assert body["config"] == DEFAULT_DOCUMENT
    assert body["revision"] is None
    assert body["timestamp"]


def test_get_requires_credentials(anonymous_client):
    response = anonymous_client.get(URL)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "UNAUTHENTICATED"


# --- PUT -----------------------------------------------------------------------------------


def test_put_writes_a_revision_with_its_diff_and_a_config_updated_event(node_client, tenant_a):
    new = document(rate_limit={"limit": 120}, routing={"reserved_high_priority_share": 0.3})

    response = node_client.put(f"{URL}?comment=more+headroom", new, format="json")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["success"] is True
    assert body["changed"] is True
    assert body["config"] == new
    revision = OrchestratorConfigRevision.objects.get()
    assert body["revision"] == {
        "id": str(revision.pk),
        "createdAt": revision.created_at.isoformat(),
        "createdBy": None,
        "comment": "more headroom",
    }
    assert revision.document == new
    assert revision.diff == {
        "rate_limit.limit": {"from": 60, "to": 120},
        "routing.reserved_high_priority_share": {"from": 0.2, "to": 0.3},
    }
    [event] = config_events()
    assert event.organization_id is None
    assert event.payload == {
        "revision": str(revision.pk),
        "diff": revision.diff,
        "actor": "node",
        "comment": "more headroom",
    }
    # Every reader sees it: this process at once, the API for anyone.
    assert agent_policy_live({}).rate_limit.limit == 120
    fetched = tenant_a.client.get(URL).json()
    assert fetched["config"] == new
    assert fetched["revision"]["id"] == str(revision.pk)


def test_put_of_the_live_document_writes_nothing_and_says_so(node_client):
    response = node_client.put(URL, DEFAULT_DOCUMENT, format="json")

    assert response.status_code == 200
    assert response.json()["changed"] is False
    assert response.json()["revision"] is None
    assert_nothing_written()


def test_put_of_an_empty_document_is_refused_naming_every_section(node_client):
    config_current()  # cached here; must stay what it was

    response = node_client.put(URL, {}, format="json")

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "INVALID_REQUEST"
    assert error["details"] == {
        section: ["This field is required."] for section in DEFAULT_DOCUMENT
    }
    assert_nothing_written()
    assert config_current() == DEFAULT_DOCUMENT


def test_put_of_a_section_missing_fields_names_them(node_client):
    incomplete = document()
    del incomplete["nodes"]["lease_s"]
    incomplete["circuit"] = {"failure_threshold": 5}

    response = node_client.put(URL, incomplete, format="json")

    assert response.status_code == 400
    details = response.json()["error"]["details"]
    assert details["nodes"] == {"lease_s": ["This field is required."]}
    assert set(details["circuit"]) == set(DEFAULT_DOCUMENT["circuit"]) - {"failure_threshold"}
    assert_nothing_written()


def test_put_of_invalid_values_names_each_field(node_client):
    bad = document(
        rate_limit={"limit": 0, "window_s": 0},
        retry={"max_attempts": 11, "base_delay_ms": 500, "max_delay_ms": 100},
        circuit={"window_size": 5, "minimum_calls": 6, "failure_rate_threshold": 0},
        timeouts={"timeout_s": 60, "total_timeout_s": 30},
        nodes={"unhealthy_after_intervals": 3, "failed_after_intervals": 3, "lease_s": 5},
        scaling={"target_cpu_utilization": 1.5, "min_replicas": 4, "max_replicas": 2},
        routing={"strategy": "random", "reserved_high_priority_share": 0.95},
        events={"retention_days": "30"},
    )

    response = node_client.put(URL, bad, format="json")

    assert response.status_code == 400
    details = response.json()["error"]["details"]
    assert set(details["rate_limit"]) == {"limit", "window_s"}
    assert set(details["retry"]) == {"max_attempts"}  # the cross-field check runs when all fit
    assert set(details["circuit"]) == {"failure_rate_threshold"}
    assert details["timeouts"] == {"total_timeout_s": ["Must be at least timeout_s."]}
    assert details["nodes"] == {
        "failed_after_intervals": ["Must be greater than unhealthy_after_intervals."],
        "lease_s": ["Must be greater than heartbeat_interval_s."],
    }
    assert set(details["scaling"]) == {"target_cpu_utilization"}
    assert set(details["routing"]) == {"strategy", "reserved_high_priority_share"}
    assert details["events"] == {"retention_days": ["A valid integer is required."]}
    assert_nothing_written()


@pytest.mark.parametrize(
    ("section", "fields", "field", "message"),
    [
        ("retry", {"base_delay_ms": 500, "max_delay_ms": 100}, "max_delay_ms", "at least"),
        ("circuit", {"window_size": 5, "minimum_calls": 6}, "minimum_calls", "window_size"),
        ("circuit", {"slow_call_s": 0}, "slow_call_s", "greater than 0"),
        ("scaling", {"min_replicas": 4, "max_replicas": 2}, "max_replicas", "min_replicas"),
        ("rate_limit", {"limit": True}, "limit", "valid integer"),
        ("rate_limit", {"limit": 2.5}, "limit", "valid integer"),
        ("nodes", {"heartbeat_interval_s": 3600, "lease_s": 7200}, "heartbeat_interval_s", "300"),
    ],
)
def test_cross_field_and_type_rules(node_client, section, fields, field, message):
    response = node_client.put(URL, document(**{section: fields}), format="json")

    assert response.status_code == 400
    [text] = response.json()["error"]["details"][section][field]
    assert message in text
    assert_nothing_written()


def test_slow_call_may_be_null_or_positive(node_client):
    response = node_client.put(URL, document(circuit={"slow_call_s": 2.5}), format="json")

    assert response.status_code == 200
    assert OrchestratorConfigRevision.objects.get().document["circuit"]["slow_call_s"] == 2.5


def test_unknown_keys_are_refused_wherever_they_are(node_client):
    misspelt = document()
    misspelt["rate_limit"]["limt"] = 5
    misspelt["ratelimit"] = {"limit": 5}

    response = node_client.put(URL, misspelt, format="json")

    assert response.status_code == 400
    details = response.json()["error"]["details"]
    assert details == {
        "rate_limit": {"limt": ["Unknown setting."]},
        "ratelimit": ["Unknown setting."],
    }
    assert_nothing_written()


def test_a_body_that_is_not_an_object_is_refused(node_client):
    response = node_client.put(URL, [1, 2], format="json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "INVALID_REQUEST"
    assert_nothing_written()


# --- PATCH ---------------------------------------------------------------------------------


def test_patch_merges_onto_the_live_document(node_client):
    node_client.patch(URL, {"retry": {"max_attempts": 5}}, format="json")

    response = node_client.patch(URL, {"rate_limit": {"limit": 5}}, format="json")

    assert response.status_code == 200
    expected = document(retry={"max_attempts": 5}, rate_limit={"limit": 5})
    assert response.json()["config"] == expected
    newest = OrchestratorConfigRevision.objects.order_by("-created_at").first()
    assert newest.document == expected  # a revision always holds the whole document
    assert newest.diff == {"rate_limit.limit": {"from": 60, "to": 5}}
    assert len(config_events()) == 2


def test_patch_is_validated_as_a_whole(node_client):
    # Valid on its own, but above the live total timeout (120 s).
    response = node_client.patch(URL, {"timeouts": {"timeout_s": 500}}, format="json")

    assert response.status_code == 400
    assert response.json()["error"]["details"] == {
        "timeouts": {"total_timeout_s": ["Must be at least timeout_s."]}
    }
    assert_nothing_written()


def test_patch_refuses_unknown_keys(node_client):
    response = node_client.patch(URL, {"rate_limit": {"per_minute": 5}}, format="json")

    assert response.status_code == 400
    assert response.json()["error"]["details"] == {
        "rate_limit": {"per_minute": ["Unknown setting."]}
    }
    assert_nothing_written()


def test_patch_ignores_keys_older_revisions_left_behind(node_client):
    OrchestratorConfigRevision.objects.create(document={"rate_limit": {"per_minute": 60}})

    response = node_client.patch(URL, {"rate_limit": {"limit": 10}}, format="json")

    assert response.status_code == 200
    assert "per_minute" not in response.json()["config"]["rate_limit"]


# --- who may change it ---------------------------------------------------------------------


@pytest.mark.parametrize("method", ["put", "patch"])
def test_an_organization_key_may_read_but_not_change_it(tenant_a, method):
    response = getattr(tenant_a.client, method)(
        URL, document(rate_limit={"limit": 1}), format="json"
    )

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "FORBIDDEN"
    assert_nothing_written()


def test_a_member_session_without_staff_may_not_change_it(tenant_a):
    client = APIClient()
    client.force_login(tenant_a.member.user)

    response = client.put(URL, document(rate_limit={"limit": 1}), format="json")

    assert response.status_code in (401, 403)
    assert_nothing_written()


def test_a_staff_session_may_change_it(staff_client, admin_user):
    response = staff_client.put(URL, document(rate_limit={"limit": 90}), format="json")

    assert response.status_code == 200
    assert response.json()["revision"]["createdBy"] == admin_user.get_username()
    revision = OrchestratorConfigRevision.objects.get()
    assert revision.created_by == admin_user
    assert config_events()[0].payload["actor"] == f"staff:{admin_user.pk}"


# --- history and revert --------------------------------------------------------------------


def test_revert_writes_a_new_revision_with_the_old_document(node_client):
    first = config_update(document=document(rate_limit={"limit": 100}), actor="test")
    second = config_update(document=document(rate_limit={"limit": 200}), actor="test")
    user = UserFactory(is_staff=True)

    reverted = config_revert(revision=first, actor_user=user, actor=f"admin:{user.pk}")

    assert reverted is not None
    assert reverted.pk not in (first.pk, second.pk)
    assert reverted.document == first.document
    assert reverted.diff == {"rate_limit.limit": {"from": 200, "to": 100}}
    assert reverted.created_by == user
    assert str(first.pk) in reverted.comment
    assert OrchestratorConfigRevision.objects.count() == 3  # append-only
    assert agent_policy_live({}).rate_limit.limit == 100
    assert config_events()[-1].payload["revision"] == str(reverted.pk)
    # Reverting to what is in force changes nothing.
    assert config_revert(revision=reverted) is None
    assert OrchestratorConfigRevision.objects.count() == 3


def test_revisions_are_listed_newest_first_and_reverted_over_the_api(node_client, tenant_a):
    first = config_update(document=document(rate_limit={"limit": 100}))
    config_update(document=document(rate_limit={"limit": 200}))

    listed = tenant_a.client.get(f"{URL}/revisions?page_size=1").json()
    assert [r["diff"] for r in listed["revisions"]] == [
        {"rate_limit.limit": {"from": 100, "to": 200}}
    ]
    assert listed["next"]
    older = tenant_a.client.get(listed["next"]).json()["revisions"]
    assert older[0]["id"] == str(first.pk)
    detail = tenant_a.client.get(f"{URL}/revisions/{first.pk}").json()
    assert detail["revision"]["document"] == first.document

    assert tenant_a.client.post(f"{URL}/revisions/{first.pk}/revert").status_code == 403
    response = node_client.post(f"{URL}/revisions/{first.pk}/revert")

    assert response.status_code == 200
    assert response.json()["changed"] is True
    assert response.json()["config"]["rate_limit"]["limit"] == 100
    assert OrchestratorConfigRevision.objects.count() == 3


# --- the admin -----------------------------------------------------------------------------


def test_the_admin_links_to_the_live_configuration_page(admin_client):
    changelist = admin_client.get(
        reverse("admin:orchestration_orchestratorconfigrevision_changelist")
    )

    assert changelist.status_code == 200
    assert LIVE_ADMIN_URL in changelist.content.decode()


def test_the_admin_form_renders_and_saving_writes_a_revision(admin_client, admin_user):
    page = admin_client.get(LIVE_ADMIN_URL)
    assert page.status_code == 200
    html = page.content.decode()
    assert "<textarea" in html
    assert "&quot;heartbeat_interval_s&quot;: 5" in html
    assert page.context["form"].initial["document"]

    response = admin_client.post(
        LIVE_ADMIN_URL,
        {"document": json.dumps(document(rate_limit={"limit": 33})), "comment": "from the form"},
        follow=True,
    )

    assert response.status_code == 200
    revision = OrchestratorConfigRevision.objects.get()
    assert revision.document["rate_limit"]["limit"] == 33
    assert revision.created_by == admin_user
    assert revision.comment == "from the form"
    assert revision.diff == {"rate_limit.limit": {"from": 60, "to": 33}}
    assert config_events()[0].payload["actor"] == f"admin:{admin_user.pk}"
    html = response.content.decode()
    assert "Saved: 1 setting(s) changed." in html
    assert "rate_limit.limit" in html  # the history shows the diff


def test_the_admin_form_shows_errors_per_field_and_saves_nothing(admin_client):
    bad = document(rate_limit={"limit": 0}, retry={"base_delay_ms": 10, "max_delay_ms": 1})
    response = admin_client.post(LIVE_ADMIN_URL, {"document": json.dumps(bad)})

    assert response.status_code == 200
    assert dict(response.context["errors"]) == {
        "rate_limit.limit": "Ensure this value is greater than or equal to 1.",
        "retry.max_delay_ms": "Must be at least base_delay_ms.",
    }
    assert "<code>rate_limit.limit</code>" in response.content.decode()
    response = admin_client.post(LIVE_ADMIN_URL, {"document": "{not json"})
    assert "Not valid JSON" in response.content.decode()
    assert_nothing_written()


def test_the_admin_reverts_a_revision(admin_client):
    first = config_update(document=document(rate_limit={"limit": 100}))
    config_update(document=document(rate_limit={"limit": 200}))
    revert_url = reverse("admin:orchestration_orchestratorconfigrevision_revert", args=[first.pk])

    detail = admin_client.get(
        reverse("admin:orchestration_orchestratorconfigrevision_change", args=[first.pk])
    )
    assert revert_url in detail.content.decode()
    confirmation = admin_client.get(revert_url)
    assert confirmation.status_code == 200
    assert "rate_limit.limit" in confirmation.content.decode()
    response = admin_client.post(revert_url, follow=True)

    assert response.status_code == 200
    newest = OrchestratorConfigRevision.objects.order_by("-created_at").first()
    assert newest.document == first.document
    assert OrchestratorConfigRevision.objects.count() == 3


def test_the_admin_revert_action(admin_client):
    first = config_update(document=document(rate_limit={"limit": 100}))
    config_update(document=document(rate_limit={"limit": 200}))

    admin_client.post(
        reverse("admin:orchestration_orchestratorconfigrevision_changelist"),
        {"action": "revert_to_selected", "_selected_action": [str(first.pk)]},
    )

    assert OrchestratorConfigRevision.objects.order_by("-created_at").first().document == (
        first.document
    )


def test_staff_without_the_permission_may_look_but_not_save(client):
    viewer = UserFactory(is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_orchestratorconfigrevision"))
    client.force_login(viewer)

    page = client.get(LIVE_ADMIN_URL)
    assert page.status_code == 200
    assert 'value="Save"' not in page.content.decode()
    response = client.post(LIVE_ADMIN_URL, {"document": "{}"})
    assert response.status_code == 403
    assert_nothing_written()


# --- propagation across processes ----------------------------------------------------------

# Another process of the fleet: it reads the rate limit it would enforce, five times a second.
READER = """
import sys, time
import django
django.setup()
from orchestration.services.config import agent_policy_live
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    print(agent_policy_live({}).rate_limit.limit, flush=True)
    time.sleep(0.2)
"""


class LimitReader:
    """The other process, with every line it printed and when it arrived."""

    def __init__(self, seconds: float) -> None:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DATABASE_URL": workers.test_database_url(),
            "NODE_AUTOREGISTER": "false",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-c", READER, str(seconds)],
            cwd=workers.ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.lines: queue.Queue[tuple[float, int]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put((time.monotonic(), int(line)))

    def wait_for(self, limit: int, timeout: float) -> float | None:
        """When the process first printed limit (None if not within timeout)."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                at, value = self.lines.get(timeout=remaining)
            except queue.Empty:
                return None
            if value == limit:
                return at
        return None

    def read_for(self, seconds: float) -> list[int]:
        values, deadline = [], time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                values.append(self.lines.get(timeout=remaining)[1])
            except queue.Empty:
                break
        return values

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_put_in_one_process_changes_the_rate_limit_another_enforces(node_client):
    interval = 1
    # The reader caches for the interval of the document it read: set a short one first.
    response = node_client.put(
        URL, document(nodes={"heartbeat_interval_s": interval}), format="json"
    )
    assert response.status_code == 200

    reader = LimitReader(seconds=40)
    try:
        assert reader.wait_for(60, timeout=30) is not None, "the reader never started"

        # An invalid PUT changes nothing, there either.
        invalid = document(nodes={"heartbeat_interval_s": interval}, rate_limit={"limit": 0})
        assert node_client.put(URL, invalid, format="json").status_code == 400
        seen = reader.read_for(interval + 1.5)
        assert seen and set(seen) == {60}

        changed_at = time.monotonic()
        valid = document(nodes={"heartbeat_interval_s": interval}, rate_limit={"limit": 7})
        assert node_client.put(URL, valid, format="json").status_code == 200
        applied_at = reader.wait_for(7, timeout=interval + 5)

        assert applied_at is not None, "the other process never applied the change"
        assert applied_at - changed_at <= interval + 1
    finally:
        reader.stop()
    assert OrchestratorConfigRevision.objects.count() == 2
