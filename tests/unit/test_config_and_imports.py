from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sentistream.config import Settings, settings_markdown
from sentistream.errors import (
    InvalidInputError,
    ModelNotFoundError,
    OverloadedError,
    SentistreamError,
)

REPO = Path(__file__).resolve().parents[2]


def test_env_prefix_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTISTREAM_BATCH_SIZE", "7")
    monkeypatch.setenv("SENTISTREAM_MODEL", "other:2")
    s = Settings()
    assert s.batch_size == 7 and s.model == "other:2"
    assert Settings(batch_size=9).batch_size == 9  # flags (init values) beat the environment


def test_env_lists_case_and_unknown_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("sentistream_serve_models", " a, b:2 ,")  # any case, comma list
    monkeypatch.setenv("SENTISTREAM_PROVIDERS", '["CUDAExecutionProvider", "CPUExecutionProvider"]')
    monkeypatch.setenv("SENTISTREAM_NOT_A_SETTING", "x")  # ignored, like any other variable
    s = Settings()
    assert s.serve_models == ["a", "b:2"]
    assert s.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setenv("SENTISTREAM_PROVIDERS", "CPUExecutionProvider")
    assert Settings().providers == ["CPUExecutionProvider"]
    monkeypatch.setenv("SENTISTREAM_PROVIDERS", '["CPU"')
    with pytest.raises(ValueError, match="(?s)providers.*not a JSON array"):
        Settings()


def test_cli_does_not_import_pydantic_settings() -> None:
    # pydantic-settings costs ~150 ms of import (asyncio, dotenv, cloud providers): the CLI's
    # cold start reads the environment itself (sentistream.config).
    code = (
        "import sys\n"
        "from sentistream.config import Settings\n"
        "from sentistream.runtime import load_classifier\n"
        "import sentistream.cli\n"
        "Settings()\n"
        "print(sorted(m for m in ('pydantic_settings', 'asyncio', 'dotenv') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_token_budget_follows_thread_count(tiny_repo: Path) -> None:
    from sentistream.runtime import load_onnx_classifier

    # 0 (the default) is auto: small passes for one thread, larger ones to share out over more.
    assert Settings(intra_op_threads=1).resolved_max_batch_tokens() == 256
    assert Settings(intra_op_threads=2).resolved_max_batch_tokens() == 1024
    assert Settings(intra_op_threads=1, max_batch_tokens=2048).resolved_max_batch_tokens() == 2048
    with pytest.raises(ValueError, match="max_batch_tokens"):
        Settings(max_batch_tokens=10)
    folder = next(p.parent for p in tiny_repo.rglob("manifest.json"))
    one = load_onnx_classifier(folder, Settings(intra_op_threads=1))
    two = load_onnx_classifier(folder, Settings(intra_op_threads=2))
    assert (one.max_batch_tokens, two.max_batch_tokens) == (256, 1024)
    # a batch of 20 texts of 30 tokens: 256 tokens hold 8 of them, 1024 hold 32 (batch_size)
    assert [len(b) for b in one.plan_batches([30] * 20)] == [8, 8, 4]
    assert [len(b) for b in two.plan_batches([30] * 20)] == [20]


def test_lane_per_core_only_when_no_thread_setting_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sentistream.config as config

    monkeypatch.setattr(config, "default_threads", lambda: 4)
    auto = Settings().with_lane_per_core()
    assert (auto.lanes, auto.resolved_intra_op_threads()) == (4, 1)
    assert auto.resolved_max_batch_tokens() == 256  # one thread per lane: small passes
    assert Settings(workers=2).with_lane_per_core().lanes == 2  # per worker process
    pinned = Settings(intra_op_threads=4).with_lane_per_core()
    assert (pinned.resolved_lanes(), pinned.resolved_intra_op_threads()) == (1, 4)
    chosen = Settings(lanes=2).with_lane_per_core()
    assert (chosen.lanes, chosen.resolved_intra_op_threads()) == (2, 2)
    assert Settings().resolved_lanes() == 1  # elsewhere (the library, remote clients) one lane


def test_invalid_setting_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTISTREAM_BATCH_SIZE", "zero")
    with pytest.raises(ValueError, match="batch_size"):
        Settings()


def test_every_setting_documented_and_reference_page_current() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, f"setting {name} has no description"
    page = settings_markdown()
    for name in Settings.model_fields:
        assert f"SENTISTREAM_{name.upper()}" in page
    committed = (REPO / "docs" / "reference" / "settings.md").read_text()
    assert committed == page, "docs/reference/settings.md is stale: run `make docs`"


def test_errors_carry_status() -> None:
    assert InvalidInputError("x").http_status == 400
    assert InvalidInputError("x").grpc_code == "INVALID_ARGUMENT"
    assert ModelNotFoundError("x").http_status == 404
    assert OverloadedError("x").http_status == 429
    assert OverloadedError("x").grpc_code == "RESOURCE_EXHAUSTED"
    assert issubclass(InvalidInputError, SentistreamError)
    assert InvalidInputError("bad").to_dict() == {"error": "InvalidInputError", "message": "bad"}


def test_serving_path_does_not_import_torch(tiny_repo: Path) -> None:
    code = (
        "import sys\n"
        "from sentistream.config import Settings\n"
        "from sentistream.runtime import load_classifier\n"
        "import sentistream.cli, sentistream.classify_file, sentistream.evaluate\n"
        f"c = load_classifier(Settings(model_repository={str(tiny_repo)!r}, model='tiny'))\n"
        "c.classify(['hello'])\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_cgroup_cpu_quota_caps_the_default_thread_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Kubernetes CPU limit is a CFS quota, not an affinity mask: 500m means one thread."""
    import os

    import sentistream.config as config

    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("50000 100000\n")
    assert config.cgroup_cpu_limit(v2) == 0.5
    (v2 / "cpu.max").write_text("max 100000\n")
    assert config.cgroup_cpu_limit(v2) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("150000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert config.cgroup_cpu_limit(v1) == 1.5
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert config.cgroup_cpu_limit(v1) is None
    assert config.cgroup_cpu_limit(tmp_path / "absent") is None

    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(config, "cgroup_cpu_limit", lambda root=config.CGROUP_ROOT: 0.5)
    assert config.default_threads() == 1
    assert Settings().with_lane_per_core().lanes == 1
    monkeypatch.setattr(config, "cgroup_cpu_limit", lambda root=config.CGROUP_ROOT: 1.5)
    assert config.default_threads() == min(2, cores)
    monkeypatch.setattr(config, "cgroup_cpu_limit", lambda root=config.CGROUP_ROOT: None)
    assert config.default_threads() == cores


def test_batch_shape_defaults_follow_the_device() -> None:
    """0 = auto: 32 texts per pass on a CPU, 256 on a GPU (H200: 1.69x the posts/s of 32);
    the token budget 32768 on a GPU; explicit values win on both."""
    from sentistream.config import GPU_BATCH_SIZE, GPU_MAX_BATCH_TOKENS

    auto = Settings(intra_op_threads=1)
    assert auto.resolved_batch_size() == 32
    assert auto.resolved_batch_size(on_gpu=True) == GPU_BATCH_SIZE == 256
    assert auto.resolved_max_batch_tokens() == 256
    assert auto.resolved_max_batch_tokens(on_gpu=True) == GPU_MAX_BATCH_TOKENS
    fixed = Settings(batch_size=8, max_batch_tokens=512)
    assert fixed.resolved_batch_size(on_gpu=True) == 8
    assert fixed.resolved_max_batch_tokens(on_gpu=True) == 512


def test_torch_precision_is_validated() -> None:
    assert Settings().torch_precision == "fp32"
    assert Settings(torch_precision="fp16").torch_precision == "fp16"
    with pytest.raises(ValueError, match="torch_precision"):
        Settings(torch_precision="int4")


def test_server_defers_fastapis_openapi_models_and_still_serves_the_document(
    tiny_repo: Path,
) -> None:
    # sentistream.server.fastapi_import: FastAPI's OpenAPI models are built on first use (the
    # server's cold start), pydantic's config is put back, and /openapi.json still works.
    code = (
        "import json, sys\n"
        "import pydantic\n"
        "import sentistream.server.app\n"
        "import sentistream.server.rest as rest\n"
        "from fastapi.openapi import models\n"
        "assert 'defer_build' not in pydantic.BaseModel.model_config\n"
        "assert not models.OpenAPI.__pydantic_complete__, 'built at import'\n"
        "class Later(pydantic.BaseModel):\n"
        "    x: int\n"
        "assert Later.__pydantic_complete__  # models defined afterwards build as usual\n"
        "from sentistream.config import Settings\n"
        "from sentistream.monitoring import ServerMetrics\n"
        "from sentistream.server.registry import ModelRegistry\n"
        f"s = Settings(model_repository={str(tiny_repo)!r}, grpc_enabled=False)\n"
        "app = rest.create_app(ModelRegistry(s), ServerMetrics(), s)\n"
        "doc = app.openapi()\n"
        "models.OpenAPI.model_validate(doc)\n"
        "assert '/v1/classify' in doc['paths'], sorted(doc['paths'])\n"
        "from sentistream.server.fastapi_import import import_fastapi\n"
        "import_fastapi()  # again: a no-op\n"
        "assert 'defer_build' not in pydantic.BaseModel.model_config\n"
        "print(json.dumps(doc['info']))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["title"]
