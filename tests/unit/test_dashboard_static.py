"""The dashboard's static files: shipped in the package, self-contained, and never turning data
into HTML. (The browser test shows the same in chromium; this check fails fast on a diff.)"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from starlette.testclient import TestClient

from sentistream.dashboard import CSP, STATIC
from sentistream.stream.file_source import FileSource
from sentistream.stream.monitor import WorkerMetrics, worker_app
from sentistream.stream.worker import StreamWorker

STATIC_DIR = resources.files("sentistream.dashboard") / "static"


def _read(name: str) -> str:
    return (STATIC_DIR / name).read_text(encoding="utf-8")


def test_script_never_writes_html() -> None:
    js = _read("dashboard.js")
    for sink in (
        r"\.innerHTML\b",
        r"\.outerHTML\b",
        r"insertAdjacentHTML",
        r"document\.write",
        r"\beval\s*\(",
        r"new\s+Function\b",
        r"createContextualFragment",
        r"DOMParser",
        r"srcdoc",
        r"setTimeout\s*\(\s*[\"'`]",
    ):
        assert not re.search(sink, js), f"dashboard.js uses {sink}"
    # Text from records goes through textContent (and attributes/CSSOM, which are not parsed).
    assert js.count("textContent") >= 5


def test_page_is_self_contained_and_has_no_inline_script() -> None:
    html = _read("index.html")
    scripts = re.findall(r"<script\b[^>]*>", html)
    assert scripts and all('src="dashboard/static/' in s for s in scripts)
    bodies = re.findall(r"<script\b[^>]*>(.*?)</script>", html, re.S)
    assert bodies and all(not b.strip() for b in bodies)  # nothing inline
    assert not re.search(r"\son[a-z]+\s*=", html)  # no inline event handlers
    assert not re.search(r"\sstyle\s*=", html)  # CSP style-src 'self' would block it
    for name in ["index.html", *STATIC]:
        # The SVG namespace is an identifier, not a download.
        text = _read(name).replace("http://www.w3.org/2000/svg", "")
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), (
            f"{name} refers to another origin"
        )


def test_static_files_are_package_data() -> None:
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"dashboard/static/*"' in pyproject
    for name in ["index.html", *STATIC]:
        assert (STATIC_DIR / name).is_file()


def test_page_headers_and_static_routes(tmp_path: Path, tiny_classifier: object) -> None:
    posts = tmp_path / "posts.jsonl"
    posts.write_text('{"id": "1", "text": "hi"}\n')
    metrics = WorkerMetrics()
    worker = StreamWorker(FileSource(posts), tiny_classifier, metrics=metrics)  # type: ignore[arg-type]
    with TestClient(worker_app(worker, metrics)) as client:
        page = client.get("/dashboard")
        assert page.status_code == 200
        assert page.headers["content-security-policy"] == CSP
        assert "'unsafe-inline'" not in CSP and "'unsafe-eval'" not in CSP
        assert page.headers["x-content-type-options"] == "nosniff"
        js = client.get("/dashboard/static/dashboard.js")
        assert js.headers["content-type"].startswith("text/javascript")
        assert client.get("/dashboard/static/missing.js").status_code == 404
        assert client.get("/dashboard/static/../__init__.py").status_code == 404


def test_feed_entries_become_single_line_events() -> None:
    from sentistream.dashboard import _event
    from sentistream.dashboard.feed import _entries

    entries = [
        (b"1-0", {b"data": b'{"text": "a"}'}),
        (b"2-0", {b"data": b'{"text":\n "multi\\nline"}'}),  # pretty JSON from another writer
        (b"3-0", {b"data": b"not json\n"}),  # not a record: skipped
        (b"4-0", {b"id": b"no data field"}),
    ]
    records, ids = _entries(entries)
    assert records == [("1-0", '{"text":"a"}'), ("2-0", '{"text":"multi\\nline"}')]
    assert ids == ["1-0", "2-0", "3-0", "4-0"]  # followed past entries without a record
    assert _event("record", records[1][1], "2-0") == (
        'id: 2-0\nevent: record\ndata: {"text":"multi\\nline"}\n\n'
    )
