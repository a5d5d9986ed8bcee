"""Browser tests: the playwright package driving Debian's Chromium against live_server.

No browser is downloaded (no `playwright install`): the tests use /usr/bin/chromium,
which .ci/run installs with apt when it is missing, and are skipped without it.

Playwright's sync API runs its own event loop in this thread while the browser is open,
so Django's ORM, called from the test body meanwhile, would take the thread for an async
context and refuse; DJANGO_ALLOW_ASYNC_UNSAFE says it is not one. The browser (and the
loop, and that variable) lives for one module only, so the tests after it run as usual.
The live server runs in another thread of this process, hence transactional database
access for every test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
PASSWORD = "console-e2e-password"

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM),
                headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def operator(transactional_db, django_user_model):
    return django_user_model.objects.create_superuser(
        username="console-operator", email="operator@example.com", password=PASSWORD
    )


@pytest.fixture
def page(browser, live_server, operator) -> Iterator:
    """A logged-in admin page; the test's screenshot is its own to take."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", operator.username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#user-tools")
    yield page
    context.close()


@pytest.fixture
def screenshot(page, request):
    ARTIFACTS.mkdir(exist_ok=True)

    def take(name: str | None = None) -> Path:
        path = ARTIFACTS / f"{name or request.node.name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


@pytest.fixture(autouse=True)
def local_policy_store():
    """Circuits and rate limits in this process (the live server's thread shares it)."""
    from orchestration.policies import LocalPolicyStore, policy_store_reset

    policy_store_reset(LocalPolicyStore())
    yield
    policy_store_reset(None)


@pytest.fixture(autouse=True)
def connections_closed_after_each_request():
    """No thread keeps a database connection open after its request.

    The live server's thread and the agent-handler pool (a sync run) open their own
    connections; with CONN_MAX_AGE they would outlive the test and keep the test
    database from being dropped at the end of the session.
    """
    from django.db import connections

    settings_dict = connections.settings["default"]
    previous = settings_dict["CONN_MAX_AGE"]
    settings_dict["CONN_MAX_AGE"] = 0
    yield
    settings_dict["CONN_MAX_AGE"] = previous
