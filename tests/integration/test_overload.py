"""Overload: twice (and more) the server's capacity is shed with 429 and nothing else."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (make install)")
def test_overload_sheds_with_429_stays_bounded_and_recovers() -> None:
    import overload

    r = overload.run(duration=6, factor=2, measure=3)
    assert r["server_alive"]
    assert r["offered_vs_capacity"] >= 2.0, r
    shed = r["overload_statuses"]
    assert shed["5xx"] == 0 and shed["4xx"] == 0 and shed["other"] == 0, r
    assert shed["429"] > 0 and shed["200"] > 0, r
    assert r["overload_socket_errors"] == "", r
    assert set(r["probe_statuses"]) <= {"200", "429"}, r
    assert r["accepted_p99_ms"] is not None and r["accepted_p99_ms"] < 2000, r
    assert r["rss_max_mb"] - r["rss_idle_mb"] < 150, r
    rec = r["recovery_statuses"]
    assert rec["200"] > 0 and rec["429"] == 0 and rec["5xx"] == 0, r
