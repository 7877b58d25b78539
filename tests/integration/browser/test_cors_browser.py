"""CORS and API keys as a real browser sees them: headless Chromium (Debian's `chromium`) driven
by playwright, on a page served from an allowed and from a disallowed origin, calling the
gateway with `fetch`.

The gateway runs with DMR_ORIGINS=http://localhost:<page port>, which *replaces* the loopback
default: the same page served as http://127.0.0.1:<page port> is another origin and is refused.
A key travels in `Authorization`, which makes the browser send a preflight first.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.stack.launcher import LocalStack
from tests.integration.conftest import StackFactory
from tests.support.processes import free_port, wait_until

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)
async_api = pytest.importorskip("playwright.async_api", reason="pip install playwright")

KEY = "sk-browser-test-51d0"
PAGE = b"<!doctype html><html><head><title>dmr cors test</title></head><body>ok</body></html>"
FETCH = """async ({url, headers}) => {
    try {
        const response = await fetch(url, {headers});
        return {status: response.status, body: await response.text()};
    } catch (error) {
        return {error: String(error)};
    }
}"""


async def _serve_page(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Any GET: the tiny page (the origin is what matters, not the path)."""
    with contextlib.suppress(ConnectionError):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n"
            + f"Content-Length: {len(PAGE)}\r\n\r\n".encode()
            + PAGE
        )
        await writer.drain()
    writer.close()


@pytest.fixture(scope="module")
def page_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
async def stack(stack_factory: StackFactory, page_port: int) -> AsyncIterator[LocalStack]:
    env = {"MODEL_RUNNER_API_KEYS": KEY, "DMR_ORIGINS": f"http://localhost:{page_port}"}
    async with stack_factory(env) as running:
        yield running


@pytest.fixture
async def browser_page(page_port: int) -> AsyncIterator[Any]:
    server = await asyncio.start_server(_serve_page, "127.0.0.1", page_port)
    try:
        async with async_api.async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                yield await browser.new_page()
            finally:
                await browser.close()
    finally:
        server.close()
        await server.wait_closed()


async def _fetch_from(page: Any, origin: str, url: str, headers: dict[str, str]) -> dict[str, Any]:
    """Open the page at `origin` and run `fetch(url)` in it; its status and body, or its error."""
    await page.goto(f"{origin}/index.html")
    result: dict[str, Any] = await page.evaluate(FETCH, {"url": url, "headers": headers})
    return result


async def test_allowed_origin_with_key_reads_the_answer(
    stack: LocalStack, browser_page: Any, page_port: int
) -> None:
    result = await _fetch_from(
        browser_page,
        f"http://localhost:{page_port}",
        stack.gateway_url + "/models",
        {"Authorization": f"Bearer {KEY}"},
    )
    assert result.get("status") == 200, result
    assert "ai/smollm2:latest" in result["body"]


async def test_allowed_origin_without_key_reads_the_401(
    stack: LocalStack, browser_page: Any, page_port: int
) -> None:
    result = await _fetch_from(
        browser_page, f"http://localhost:{page_port}", stack.gateway_url + "/models", {}
    )
    assert result.get("status") == 401, result
    assert "API key" in result["body"]
    assert KEY not in result["body"]


@pytest.mark.parametrize(
    ("with_key", "refused"),
    # A key makes the browser ask first (a preflight); without one the GET itself goes out.
    [(True, "OPTIONS /models"), (False, "GET /models")],
)
async def test_disallowed_origin_is_blocked(
    stack: LocalStack, browser_page: Any, page_port: int, with_key: bool, refused: str
) -> None:
    headers = {"Authorization": f"Bearer {KEY}"} if with_key else {}
    result = await _fetch_from(
        browser_page, f"http://127.0.0.1:{page_port}", stack.gateway_url + "/models", headers
    )
    # The page learns nothing: the browser refuses to hand over the answer.
    assert "error" in result, result
    assert "status" not in result
    # The gateway said 403 (preflights are invisible to the page and to playwright: read the
    # gateway's access log).
    line = re.compile(re.escape(refused) + r' HTTP/1\.1\\?" 403')

    def logged() -> bool:
        return line.search(stack.gateway.log_path.read_text(errors="replace")) is not None

    await wait_until(logged, what=f"a 403 to {refused} in the gateway's access log", timeout=10)
