"""ModelRegistry's admin operations interleaved on one event loop: whatever order rollback,
unload and load run in, each ends in a result or a 4xx error, never another exception."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sentistream.config import Settings
from sentistream.errors import SentistreamError
from sentistream.server.registry import ModelRegistry
from sentistream.testing import tiny_model_folder


@pytest.fixture()
def registry(tmp_path: Path) -> ModelRegistry:
    tiny_model_folder(tmp_path, "tiny", "1", seed=1)
    tiny_model_folder(tmp_path, "tiny", "2", seed=2)
    settings = Settings(model_repository=tmp_path, intra_op_threads=1, model_poll_seconds=0)
    return ModelRegistry(settings)


def _outcome(result: object) -> object:
    if isinstance(result, SentistreamError):
        assert 400 <= result.http_status < 500, result
        return type(result).__name__
    assert not isinstance(result, BaseException), repr(result)
    return "ok"


def test_rollback_then_unload_at_once(registry: ModelRegistry) -> None:
    async def run() -> list[object]:
        await registry.start()
        # The rollback loads version 1 on a thread; the unload queues on the registry's lock.
        results = await asyncio.gather(
            registry.rollback("tiny"), registry.unload("tiny"), return_exceptions=True
        )
        served = [m.version for m in registry.models()]
        await registry.close()
        return [*map(_outcome, results), served]

    assert asyncio.run(run()) == ["ok", "ok", []]


def test_unload_then_rollback_at_once(registry: ModelRegistry) -> None:
    async def run() -> list[object]:
        await registry.start()
        results = await asyncio.gather(
            registry.unload("tiny"), registry.rollback("tiny"), return_exceptions=True
        )
        await registry.close()
        return list(map(_outcome, results))

    assert asyncio.run(run()) == ["ok", "ModelNotFoundError"]
