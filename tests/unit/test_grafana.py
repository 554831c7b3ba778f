"""deploy/grafana/sentistream.json: valid, and every query names metrics (and labels) that the
server and the worker really export."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client.metrics import MetricWrapperBase

from sentistream.monitoring import ServerMetrics
from sentistream.stream.monitor import WorkerMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "sentistream.json"
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
PROMQL_WORDS = {"by", "without", "le", "sum", "max", "min", "rate", "histogram_quantile"}


def _exported() -> dict[str, set[str]]:
    """Sample name -> label names, for every metric of ServerMetrics and WorkerMetrics."""
    out: dict[str, set[str]] = {}
    for owner in (ServerMetrics(), WorkerMetrics()):
        for metric in vars(owner).values():
            if not isinstance(metric, MetricWrapperBase):
                continue
            kind = metric._type  # the wrapper's metric type (counter, gauge, histogram)
            for suffix in SUFFIXES[kind]:
                labels = set(metric._labelnames) | ({"le"} if suffix == "_bucket" else set())
                out[metric._name + suffix] = labels
    return out


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def test_dashboard_json_is_importable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        grid = p["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert "datasource" in names
    queried = [p for p in panels if p["type"] != "row"]
    assert queried and all(p["targets"] for p in queried)
    assert all(p["datasource"]["uid"] == "${datasource}" for p in queried)


def test_every_expression_uses_exported_metrics_and_labels() -> None:
    exported = _exported()
    used: set[str] = set()
    for panel in _panels(json.loads(DASHBOARD.read_text())):
        for target in panel.get("targets", []):
            expr = target["expr"]
            names = re.findall(r"\bsentistream_[a-z_]+", expr)
            assert names, f"{panel['title']}: no sentistream metric in {expr!r}"
            for name in names:
                assert name in exported, f"{panel['title']}: {name} is not exported"
            used.update(names)
            labels_here = set().union(*(exported[n] for n in names))
            for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
                for label in (x.strip() for x in group.split(",")):
                    assert label in labels_here, f"{panel['title']}: no label {label!r}"
            for matchers in re.findall(r"\{([^}]*)\}", expr):
                for key in re.findall(r"(\w+)\s*=~?", matchers):
                    assert key in labels_here, f"{panel['title']}: no label {key!r}"
            for legend in re.findall(r"\{\{(\w+)\}\}", target.get("legendFormat", "")):
                assert legend in labels_here, f"{panel['title']}: legend label {legend!r}"
    # The dashboard covers the signals operators need, on both sides.
    for needed in (
        "sentistream_requests_total",
        "sentistream_request_seconds_bucket",
        "sentistream_queue_texts",
        "sentistream_worker_processed_total",
        "sentistream_worker_consumer_lag",
        "sentistream_worker_drift_psi",
        "sentistream_worker_drift_detected",
        "sentistream_worker_prediction_log_dropped_total",
    ):
        assert needed in used, f"{needed} has no panel"
