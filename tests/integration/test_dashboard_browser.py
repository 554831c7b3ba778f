"""The dashboard in a real browser: Debian's chromium, headless, driven by Playwright.

A real redis-server, a real `sentistream stream` worker (the shipped model) serving the page on
its HTTP port, and posts published to the input stream while the page is open. Screenshots go to
``test-artifacts/dashboard/`` (git-ignored; CI uploads them).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from sentistream.config import Settings
from sentistream.repository import ModelRepository
from sentistream.testing import RedisServer, ServerProcess, free_port
from tests.integration.test_stream_redis import _stop, _worker_proc

pytestmark = pytest.mark.integration
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
XSS = "<img src=x onerror=alert(1)>"
# What the worker runs by default: the newest version of the default model.
DEFAULT_VERSION = ModelRepository(Settings().model_repository).resolve(Settings().model).name


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(
            f"Debian chromium is not installed at {CHROMIUM} "
            "(make install / scripts/install-system-deps.sh installs it)"
        )
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the [dev] extra")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield b
        b.close()


class Page:
    """A page that records console errors, uncaught exceptions and dialogs."""

    def __init__(self, browser: Any, name: str) -> None:
        self.page = browser.new_page(viewport={"width": 1280, "height": 1100})
        self.name = name
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

        def on_dialog(dialog: Any) -> None:
            self.dialogs.append(dialog.message)
            dialog.dismiss()

        self.page.on("dialog", on_dialog)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def shot(self, step: str) -> None:
        self.page.screenshot(path=str(ARTIFACTS / f"{self.name}-{step}.png"), full_page=True)

    def close(self) -> None:
        self.page.close()


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _publish(client: redis.Redis, post_id: str, text: str) -> None:
    client.xadd("sentistream:posts", {"data": json.dumps({"id": post_id, "text": text})})


@pytest.fixture()
def worker(tmp_path: Path) -> Iterator[tuple[str, redis.Redis]]:
    with RedisServer(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url)
        for i in range(30):  # history the page must show on load
            _publish(client, f"h{i}", f"history post {i}: what a {'great' if i % 2 else 'bad'} day")
        port = free_port()
        proc: subprocess.Popen[bytes] = _worker_proc(
            server.url,
            None,
            "dash",
            "--http-port",
            str(port),
            "--host",
            "127.0.0.1",
            "--stream-batch-delay-ms",
            "5",
            "--drift-min-samples",
            "10",
        )
        base = f"http://127.0.0.1:{port}"
        try:
            _wait(lambda: _ready(base) and client.xlen("sentistream:results") >= 30, 60, "worker")
            yield base, client
        finally:
            assert _stop(proc) == 0
            client.close()


def test_worker_dashboard_live_feed_chart_and_untrusted_text(
    browser: Any, worker: tuple[str, redis.Redis]
) -> None:
    base, client = worker
    page = Page(browser, "worker")
    try:
        response = page.page.goto(f"{base}/dashboard")
        assert response is not None and response.status == 200
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        p = page.page
        # History from the durable stream: a reload is not a blank page.
        p.wait_for_function(
            "() => document.querySelectorAll('#feed li.post').length >= 30", timeout=5000
        )
        p.wait_for_function(
            "() => document.getElementById('status').dataset.state === 'live'", timeout=5000
        )
        assert p.locator("#chart").get_attribute("data-total") == "30"
        assert p.locator("#chart rect").count() >= 1
        p.wait_for_function(
            "() => document.getElementById('model').textContent"
            f".includes('tweet-sentiment v{DEFAULT_VERSION}')",
            timeout=5000,
        )
        page.shot("1-history")

        # A new post appears within 2 s of being published.
        started = time.monotonic()
        _publish(client, "n1", "I absolutely love this new phone, best purchase ever")
        p.wait_for_function(
            "() => [...document.querySelectorAll('#feed .post-text')]"
            ".some(e => e.textContent.includes('best purchase ever'))",
            timeout=2000,
        )
        assert time.monotonic() - started < 2.0
        newest = p.locator("#feed li.post").first
        assert newest.get_attribute("data-label") == "positive"
        assert "positive" in (newest.locator(".post-label").text_content() or "")
        # The chart took the new post.
        p.wait_for_function(
            "() => document.getElementById('chart').dataset.total === '31'", timeout=2000
        )
        # Counts per label add up.
        p.wait_for_function(
            "() => [...document.querySelectorAll('#counts td')]"
            ".some(td => td.textContent === 'sentiment')",
            timeout=5000,
        )
        rows = p.locator("#counts tbody tr")
        primary = [
            int(rows.nth(i).locator("td").nth(2).text_content() or 0)
            for i in range(rows.count())
            if rows.nth(i).locator("td").first.text_content() == "sentiment"
        ]
        assert sum(primary) == 31
        page.shot("2-new-post")

        # Untrusted text is shown as text and runs nothing.
        _publish(client, "x1", f"look {XSS} here")
        p.wait_for_function(
            "() => [...document.querySelectorAll('#feed .post-text')]"
            ".some(e => e.textContent.includes('onerror=alert(1)'))",
            timeout=2000,
        )
        p.wait_for_timeout(500)  # an injected <img src=x> would have failed and fired by now
        shown = p.locator("#feed li.post").first.locator(".post-text").text_content()
        assert shown == f"look {XSS} here"
        assert p.evaluate("document.querySelectorAll('img').length") == 0
        assert page.dialogs == []
        page.shot("3-untrusted-text")

        # Filters: by keyword, then by label.
        p.fill("#filter-text", "purchase")
        visible = p.locator("#feed li.post:not([hidden])")
        assert visible.count() == 1
        p.fill("#filter-text", "")
        p.select_option("#filter-label", "positive")
        labels = {visible.nth(i).get_attribute("data-label") for i in range(visible.count())}
        assert labels == {"positive"}
        page.shot("4-filtered")

        # Stats and drift reach the page.
        p.wait_for_function(
            "() => Number(document.getElementById('processed').textContent) >= 32", timeout=5000
        )
        p.wait_for_function(
            "() => document.querySelectorAll('#drift tbody tr').length === 4", timeout=5000
        )
        assert p.locator("#drift-flag").get_attribute("data-drifted") in {"true", "false"}
        assert page.errors == []
    finally:
        page.close()


def test_server_dashboard_shows_a_configured_stream_and_its_own_figures(
    browser: Any, tmp_path: Path, tiny_repo: Path
) -> None:
    with RedisServer(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url)
        record = {
            "id": "s1",
            "source": "x",
            "text": f"server feed {XSS}",
            "label": "negative",
            "score": 0.9,
            "scores": {"negative": 0.9, "neutral": 0.05, "positive": 0.05},
            "tasks": {"offensive": {"label": "offensive", "score": 0.8}},
            "model": "tiny",
            "model_version": "1",
            "processed_at": "2026-11-22T09:00:00.000Z",
            "latency_ms": 3.0,
        }
        client.xadd("results:x", {"id": "s1", "data": json.dumps(record)})
        env = {"SENTISTREAM_REDIS_URL": server.url, "SENTISTREAM_DASHBOARD_STREAM": "results:x"}
        with ServerProcess(tiny_repo, env=env, args=["--serve-models", "tiny:1"]) as srv:
            httpx.post(f"{srv.url}/v1/classify", json={"texts": ["love it", "hate it"]})
            page = Page(browser, "server")
            try:
                page.page.goto(f"{srv.url}/dashboard")
                p = page.page
                p.wait_for_function(
                    "() => document.querySelectorAll('#feed li.post').length === 1", timeout=5000
                )
                assert p.locator("#feed .post-text").text_content() == f"server feed {XSS}"
                assert "offensive: offensive" in (
                    p.locator("#feed .post-meta").text_content() or ""
                )
                p.wait_for_function(
                    "() => document.getElementById('processed').textContent === '2'", timeout=5000
                )
                assert "tiny v1" in (p.locator("#model").text_content() or "")
                record2 = {**record, "id": "s2", "text": "second", "label": "positive"}
                client.xadd("results:x", {"id": "s2", "data": json.dumps(record2)})
                p.wait_for_function(
                    "() => document.querySelectorAll('#feed li.post').length === 2", timeout=2000
                )
                assert p.evaluate("document.querySelectorAll('img').length") == 0
                assert page.errors == [] and page.dialogs == []
                page.shot("1-server")
            finally:
                page.close()
        client.close()


# Where a substring of an element's text is drawn: a Range over the text node holding it.
RECT_OF = """([selector, needle]) => {
  const root = document.querySelector(selector);
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const at = node.data.indexOf(needle);
    if (at >= 0) {
      const range = document.createRange();
      range.setStart(node, at);
      range.setEnd(node, at + needle.length);
      const r = range.getBoundingClientRect();
      return {left: r.left, right: r.right};
    }
  }
  return null;
}"""


def test_long_and_bidi_posts_stay_in_their_place(
    browser: Any, tmp_path: Path, tiny_repo: Path
) -> None:
    rlo = "\u202e"
    long_post = {
        "id": "I" * 3000,  # unbroken: no space to wrap at
        "text": "W" * 5000,
        "label": "L" * 400,
        "score": 0.5,
        "scores": {"S" * 400: 0.5},
        "tasks": {"T" * 400: {"label": "X" * 400, "score": 0.5}},
        "processed_at": "2026-11-22T09:00:00.000Z",
    }
    bidi_post = {
        "id": f"{rlo}evil-id",
        "text": f"{rlo}reversed text",
        "label": f"{rlo}negative",
        "score": 0.875,
        "tasks": {"emotion": {"label": f"{rlo}anger", "score": 0.625}},
        "processed_at": "2026-11-22T09:00:01.000Z",
    }
    with RedisServer(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url)
        for record in (long_post, bidi_post):
            client.xadd("results:b", {"data": json.dumps(record)})
        env = {"SENTISTREAM_REDIS_URL": server.url, "SENTISTREAM_DASHBOARD_STREAM": "results:b"}
        with ServerProcess(tiny_repo, env=env, args=["--serve-models", "tiny:1"]) as srv:
            page = Page(browser, "edges")
            try:
                p = page.page
                p.goto(f"{srv.url}/dashboard")
                p.wait_for_function(
                    "() => document.querySelectorAll('#feed li.post').length === 2", timeout=5000
                )
                page.shot("1-long-and-bidi")
                # Nothing wider than the window; every post within its own box.
                assert p.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
                overflowing = p.evaluate(
                    "[...document.querySelectorAll('#feed li.post, #feed li.post *')]"
                    ".filter(e => e.scrollWidth > e.clientWidth + 1 && e.clientWidth > 0)"
                    ".map(e => e.className)"
                )
                assert overflowing == []
                # U+202E in the label and task label turns only them around: the score after
                # each is still drawn to its right.
                newest = "#feed li.post:first-child"
                for part, label, score in (
                    (".post-label", "negative", "0.875"),
                    (".post-task", "anger", "0.63"),
                ):
                    shown = p.evaluate(RECT_OF, [f"{newest} {part}", label[::-1][::-1]])
                    number = p.evaluate(RECT_OF, [f"{newest} {part}", score])
                    assert shown and number and number["left"] >= shown["right"] - 1, part
                isolated = p.evaluate(
                    "[...document.querySelectorAll("
                    f"'{newest} .post-text, {newest} .post-meta > span, {newest} bdi')]"
                    ".map(e => getComputedStyle(e).unicodeBidi)"
                )
                assert isolated and set(isolated) == {"isolate"}
                assert page.errors == [] and page.dialogs == []
            finally:
                page.close()
        client.close()
