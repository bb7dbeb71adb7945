"""/docs and /redoc in a real browser that may reach nothing beyond this machine: the pages
render every operation from the API's own assets, and Swagger UI submits a job."""

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from testbed.stack import Stack
from tests.availability import unavailable

pytestmark = pytest.mark.integration

# Debian's build: Playwright is never asked to download a browser of its own.
CHROMIUM = Path("/usr/bin/chromium")
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
TINY_JOB = {
    "name": "from-swagger-ui",
    "epochs": 1,
    "data": {"train_subset": 256, "test_subset": 128},
}
# Each page step (a render, a click's answer) gets this long on a slow machine.
STEP_TIMEOUT_MS = 30_000


# The tests ask for `page` before `module_embedded_stack`: without Chromium they stop before any
# process starts.
@pytest.fixture
def chromium() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        unavailable(
            f"{CHROMIUM} is missing (apt-get install chromium)", "the docs pages' browser test"
        )
    with sync_playwright() as playwright:
        # Chromium's sandbox refuses to run as root, which CI is.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def off_machine() -> list[str]:
    """Every URL the browser asked for beyond 127.0.0.1; each one was refused."""
    return []


@pytest.fixture
def page(chromium: Browser, off_machine: list[str]) -> Iterator[Page]:
    """A page in a fresh browser profile that can reach this machine only."""
    context = chromium.new_context()

    def this_machine_only(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            off_machine.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", this_machine_only)
    context.set_default_timeout(STEP_TIMEOUT_MS)
    expect.set_options(timeout=STEP_TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def openapi(stack: Stack) -> dict[str, Any]:
    schema: dict[str, Any] = httpx.get(f"{stack.api_url}/openapi.json", timeout=10).json()
    return schema


def operations(schema: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(METHOD, path) of every operation in the schema, and the operation."""
    return {
        (method.upper(), path): operation
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


class TestSwaggerUI:
    def test_lists_every_operation_and_submits_a_job_with_a_kept_key(
        self, page: Page, off_machine: list[str], module_embedded_stack: Stack
    ):
        key = module_embedded_stack.create_key()
        expected = operations(openapi(module_embedded_stack))
        page.goto(f"{module_embedded_stack.api_url}/docs")

        listed = page.locator(".opblock")
        expect(listed).to_have_count(len(expected))
        shown = listed.evaluate_all(
            """blocks => blocks.map(block => [
                block.querySelector('.opblock-summary-method').textContent,
                block.querySelector('.opblock-summary-path').dataset.path,
            ])"""
        )
        assert {(method, path) for method, path in shown} == set(expected)

        authorize = page.locator(".auth-wrapper button.authorize")
        authorize.click()
        tenant_key = page.locator(".auth-container", has_text="HTTPBearer")
        tenant_key.get_by_role("textbox").fill(key)
        tenant_key.get_by_role("button", name="Apply credentials").click()
        page.locator(".modal-ux .btn-done").click()
        locked = re.compile(r"\blocked\b")
        expect(authorize).to_have_class(locked)
        # The key is kept in the browser (persistAuthorization): a reload still sends it.
        page.reload()
        expect(authorize).to_have_class(locked)

        submit = page.locator(".opblock-post", has=page.locator('[data-path="/v1/jobs"]'))
        submit.locator(".opblock-summary").click()
        submit.get_by_role("button", name="Try it out").click()
        submit.locator("textarea.body-param__text").fill(json.dumps(TINY_JOB))
        submit.get_by_role("button", name="Execute").click()
        # The server's answer, apart from the table of documented responses below it.
        answered = submit.locator(".live-responses-table tr.response .response-col_status")
        expect(answered).to_have_text("201")

        jobs = httpx.get(
            f"{module_embedded_stack.api_url}/v1/jobs",
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        ).json()["items"]
        assert [job["name"] for job in jobs] == [TINY_JOB["name"]]
        assert off_machine == []


class TestReDoc:
    def test_renders_the_title_and_every_operation(
        self, page: Page, off_machine: list[str], module_embedded_stack: Stack
    ):
        schema = openapi(module_embedded_stack)
        operation_ids = {operation["operationId"] for operation in operations(schema).values()}
        page.goto(f"{module_embedded_stack.api_url}/redoc")

        expect(page.locator("h1")).to_contain_text(schema["info"]["title"])
        # Each operation's heading links to "#tag/<tag>/operation/<operationId>".
        headings = page.locator('h2 > a[aria-label*="/operation/"]')
        expect(headings).to_have_count(len(operation_ids))
        labels = headings.evaluate_all("links => links.map(link => link.ariaLabel)")
        assert {label.rsplit("/", 1)[-1] for label in labels} == operation_ids
        assert off_machine == []
