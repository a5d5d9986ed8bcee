"""run_wait()'s read of a run: one hand-written SELECT whose instance equals the ORM's."""

from __future__ import annotations

import uuid

import pytest
from django.forms.models import model_to_dict

from runs import services as run_services
from runs.models import AgentRun
from tests.factories import AgentFactory

pytestmark = pytest.mark.django_db


def test_the_read_run_equals_the_orm_s_field_for_field(tenant_a, django_assert_num_queries):
    agent = AgentFactory(organization=tenant_a.organization)
    created = run_services.run_create(
        organization=tenant_a.organization,
        agent=agent,
        intent="nap",
        input={"text": "x", "nested": {"n": [1, 2.5, None]}},
        mode="async",
        meta={"context": {"k": "v"}},
        idempotency_key="key-1",
    )
    with django_assert_num_queries(1):
        read = run_services._run_read(str(created.pk))
    orm = AgentRun.objects.get(pk=created.pk)
    fields = [f.attname for f in AgentRun._meta.concrete_fields]
    assert {f: getattr(read, f) for f in fields} == {f: getattr(orm, f) for f in fields}
    assert model_to_dict(read) == model_to_dict(orm)
    assert read._state.adding is False and read._state.db == "default"


def test_run_wait_answers_none_for_no_run_and_for_what_is_not_a_run_id(tenant_a):
    assert run_services.run_wait(uuid.uuid4(), timeout=0) is None
    assert run_services.run_wait("not-a-run-id", timeout=0) is None
