"""ModelRegistry.preload: models built on a thread before start() takes them, once each."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from sentistream.config import Settings
from sentistream.manifest import Manifest
from sentistream.runtime import Classifier
from sentistream.server.registry import ModelRegistry
from sentistream.testing import tiny_model_folder


class CountingRegistry(ModelRegistry):
    """Records which thread built which model."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.built: list[tuple[str, str, str]] = []

    def _build_parts(self, name: str, version: str) -> tuple[Manifest, Classifier]:
        self.built.append((name, version, threading.current_thread().name))
        return super()._build_parts(name, version)


def _settings(root: Path, **extra: object) -> Settings:
    return Settings(model_repository=root, intra_op_threads=1, model_poll_seconds=0, **extra)


def test_preloaded_models_are_served_and_built_once(tmp_path: Path) -> None:
    tiny_model_folder(tmp_path, "a", "1", seed=1)
    tiny_model_folder(tmp_path, "a", "2", seed=2)
    tiny_model_folder(tmp_path, "b", "1", seed=3)
    registry = CountingRegistry(_settings(tmp_path))
    registry.preload()

    async def run() -> list[str]:
        await registry.start()
        served = sorted(f"{m.name}:{m.version}" for m in registry.models())
        model, answer = await registry.infer(["I love this"], model="a")
        assert model.version == "2"
        assert answer[0].label in {"negative", "neutral", "positive"}
        await registry.close()
        return served

    assert asyncio.run(run()) == ["a:2", "b:1"]  # latest of each
    assert sorted(registry.built) == [
        ("a", "2", "sentistream-preload"),
        ("b", "1", "sentistream-preload"),
    ]


def test_a_model_that_fails_to_preload_fails_start_as_without(tmp_path: Path) -> None:
    tiny_model_folder(tmp_path, "good", "1", seed=1)
    bad = tiny_model_folder(tmp_path, "bad", "1", seed=2)
    (bad / "model.onnx").write_bytes(b"not an onnx model")  # checksum no longer matches
    outcomes = []
    for preload in (True, False):
        registry = CountingRegistry(_settings(tmp_path))
        if preload:
            registry.preload()

        async def run(reg: ModelRegistry = registry) -> str:
            with pytest.raises(Exception) as info:
                await reg.start()
            await reg.close()
            return f"{type(info.value).__name__}: {info.value}"

        outcomes.append(asyncio.run(run()))
    assert outcomes[0] == outcomes[1]
    assert "bad" in outcomes[0]


def test_preload_of_an_empty_repository_leaves_the_error_to_start(tmp_path: Path) -> None:
    registry = ModelRegistry(_settings(tmp_path))
    registry.preload()  # nothing to build: no thread work, no exception here
    with pytest.raises(Exception, match="no models to serve"):
        asyncio.run(registry.start())
