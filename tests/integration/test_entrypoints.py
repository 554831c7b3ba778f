"""The commands the container images run (Kubernetes base manifests), started here without
Docker, pass the readiness probes their manifests declare."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sentistream.testing import RedisServer, free_port

pytestmark = pytest.mark.integration
BASE = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "base"


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((BASE / name).read_text()) if d]


def _container(name: str) -> dict[str, Any]:
    deployment = next(d for d in _docs(name) if d["kind"] == "Deployment")
    return deployment["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def _probe(container: dict[str, Any], kind: str) -> tuple[str, int]:
    get = container[kind]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    port = get["port"]
    return get["path"], ports.get(port, port)


def _run(args: list[str], env: dict[str, str], probe_port: int, path: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sentistream", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                if httpx.get(f"http://127.0.0.1:{probe_port}{path}", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail(f"{args} never passed its readiness probe {path}")
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


def _env() -> dict[str, str]:
    config = next(d for d in _docs("configmap.yaml") if d["kind"] == "ConfigMap")["data"]
    return {
        **os.environ,
        **{k: str(v) for k, v in config.items()},
        "SENTISTREAM_HOST": "127.0.0.1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def test_server_entrypoint_passes_its_probes() -> None:
    container = _container("server.yaml")
    path, port = _probe(container, "readinessProbe")
    assert port == 8000 and container["args"] == ["serve"]
    http, grpc = free_port(), free_port()
    env = {**_env(), "SENTISTREAM_HTTP_PORT": str(http), "SENTISTREAM_GRPC_PORT": str(grpc)}
    _run(container["args"], env, http, path)


def test_worker_entrypoint_passes_its_probes(tmp_path: Path) -> None:
    container = _container("worker.yaml")
    path, port = _probe(container, "readinessProbe")
    local = free_port()
    args = [str(local) if a == str(port) else a for a in container["args"]]
    assert str(local) in args  # the probe port is the one the command serves
    with RedisServer(tmp_path / "redis") as redis_server:
        env = {**_env(), "SENTISTREAM_REDIS_URL": redis_server.url, "SENTISTREAM_CONSUMER": "e2e"}
        _run(args, env, local, path)
