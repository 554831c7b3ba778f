"""The serving core: which model versions are loaded, and inference through their batchers.

Transports (REST, gRPC) only convert requests and call :meth:`ModelRegistry.infer`. Versions
follow a policy per model: ``latest`` (default), a pinned version (``name:3``) or ``all``.
Hot reload: :meth:`ModelRegistry.refresh` (called every ``model_poll_seconds``) loads and warms
a new version fully before it replaces the old one; requests already queued on the old version
finish there (its batcher drains before closing); a broken version is rejected with a logged
reason and the old one keeps serving. ``load``/``unload``/``rollback`` do the same on demand.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sentistream.batching import DynamicBatcher
from sentistream.config import Settings
from sentistream.errors import (
    InvalidInputError,
    ModelLoadError,
    ModelNotFoundError,
    SentistreamError,
    UnavailableError,
)
from sentistream.manifest import Manifest, Signature, TaskSpec, TensorSpec, load_manifest
from sentistream.repository import ModelRepository, parse_model_ref
from sentistream.runtime import (
    Classifier,
    Prediction,
    load_classifier,
    load_onnx_classifier,
    torch_model_ref,
)
from sentistream.text import CLEANING_VERSION

__all__ = ["LoadedModel", "ModelRegistry"]

log = logging.getLogger("sentistream.server")
WARMUP_TEXTS = ["warm up", "a slightly longer text to warm up the model with padding #warm"]


@dataclass
class LoadedModel:
    name: str
    version: str
    manifest: Manifest
    classifier: Classifier
    batcher: DynamicBatcher
    loaded_at: float = field(default_factory=time.time)

    @property
    def platform(self) -> str:
        """KServe V2 platform name of the runtime behind this model."""
        return "pytorch_libtorch" if self.classifier.backend.name == "torch" else "onnxruntime_onnx"

    def metadata(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "name": self.name,
            "version": self.version,
            "primary_task": m.primary_task,
            "tasks": {t: {"labels": s.labels, "output": s.output} for t, s in m.tasks.items()},
            "max_length": m.max_length,
            "cleaning_version": m.cleaning_version,
            "signature": m.signature.model_dump(),
            "base_model": m.base_model,
            "created_at": m.created_at,
        }


class ModelRegistry:
    def __init__(self, settings: Settings, observer: object | None = None) -> None:
        self.settings = settings
        self.repository = ModelRepository(settings.model_repository)
        self.observer = observer
        self._models: dict[str, dict[str, LoadedModel]] = {}
        self._policy: dict[str, str] = {}  # name -> "latest" | "all" | pinned version
        # broken folders: (name, version) -> their mtime when they failed, and why (no paths)
        self._rejected: dict[tuple[str, str], float] = {}
        self._reasons: dict[tuple[str, str], str] = {}
        self._lock = asyncio.Lock()
        self._watch: asyncio.Task[None] | None = None
        # (name, version) -> its manifest and warmed classifier, being built by preload()
        self._preloaded: dict[
            tuple[str, str], concurrent.futures.Future[tuple[Manifest, Classifier]]
        ] = {}
        self.ready = False
        self.draining = False
        self.in_flight = 0
        # The torch backend serves one model (``settings.model``: a training checkpoint or a
        # Hugging Face model) under the name and version it records, read once here (the
        # default model of every request is its name); the ONNX backend serves the repository.
        self.torch_ref: tuple[str, str] | None = (
            torch_model_ref(settings.model) if settings.backend == "torch" else None
        )

    # -- what to serve --------------------------------------------------------------------------
    @property
    def torch_backend(self) -> bool:
        return self.torch_ref is not None

    def _configured(self) -> dict[str, str]:
        if self.torch_ref is not None:
            return dict([self.torch_ref])
        refs = self.settings.serve_models or self.repository.names()
        policy: dict[str, str] = {}
        for ref in refs:
            name, version = parse_model_ref(ref)
            policy[name] = version or self.settings.version_policy
        return policy

    def _wanted_versions(self, name: str, policy: str) -> list[str]:
        if self.torch_backend:
            return [policy]  # the one version it records
        available = self.repository.versions(name)
        if policy == "all":
            return available
        if policy == "latest":
            good = [v for v in available if (name, v) not in self._rejected]
            return good[-1:] if good else []
        return [policy] if policy in available else []

    # -- lifecycle ------------------------------------------------------------------------------
    def preload(self) -> None:
        """Start building the models :meth:`start` will serve, on a background thread, now.

        ``sentistream serve`` calls this before it imports the HTTP and gRPC stacks: ONNX
        Runtime builds and warms the session in C++ with the GIL released, so model loading
        overlaps the main thread's imports of FastAPI, uvicorn and grpc instead of following
        them (the serverless cold start). :meth:`start` takes what was built here instead of
        building it again; a model that failed to build fails there, exactly as without
        preloading. Without a call to this method nothing changes.
        """
        try:
            policy = self._configured()
            wanted = [(n, v) for n, p in policy.items() for v in self._wanted_versions(n, p)]
        except Exception:  # start() reports a bad configuration itself
            return
        for key in wanted:
            self._preloaded[key] = concurrent.futures.Future()
        jobs = list(self._preloaded.items())

        def build() -> None:
            for (name, version), future in jobs:
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    future.set_result(self._build_parts(name, version))
                except BaseException as exc:  # handed to start() as is
                    future.set_exception(exc)

        threading.Thread(target=build, name="sentistream-preload", daemon=True).start()

    async def start(self) -> None:
        """Load and warm every configured model; ready once all of them serve."""
        self._policy = self._configured()
        if not self._policy:
            raise ModelNotFoundError(f"no models to serve in {self.repository.root}")
        await self.refresh()
        missing = [n for n in self._policy if not self._models.get(n)]
        if missing:
            raise ModelLoadError(f"could not load any version of: {', '.join(missing)}")
        self.ready = True
        if self.settings.model_poll_seconds > 0:
            self._watch = asyncio.get_running_loop().create_task(self._watch_loop(), name="watch")

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.model_poll_seconds)
            try:
                await self.refresh()
            except Exception:  # the watcher must never die
                log.exception("model refresh failed")

    async def close(self) -> None:
        self.ready = False
        if self._watch is not None:
            self._watch.cancel()
        for versions in self._models.values():
            for model in versions.values():
                await model.batcher.close(drain=True)
        self._models.clear()

    async def drain(self, timeout: float = 30.0) -> None:
        """Not ready any more; wait until requests in flight are answered."""
        self.draining = True
        self.ready = False
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    # -- loading --------------------------------------------------------------------------------
    def _build_parts(self, name: str, version: str) -> tuple[Manifest, Classifier]:
        try:
            if self.torch_backend:
                classifier = load_classifier(self.settings)
                manifest = torch_manifest(classifier, self.settings.model)
            else:
                folder = self.repository.root / name / version
                manifest = load_manifest(folder)
                classifier = load_onnx_classifier(folder, self.settings, manifest)
            classifier.classify(WARMUP_TEXTS)  # warm: first runs allocate and pick kernels
        except SentistreamError:
            raise
        except Exception as exc:  # a library's own error (tokenizer file, ...): a broken version
            raise ModelLoadError(f"{name}:{version} cannot be loaded: {exc}") from exc
        return manifest, classifier

    def _assemble(
        self, name: str, version: str, manifest: Manifest, classifier: Classifier
    ) -> LoadedModel:
        batcher = DynamicBatcher(
            classifier,
            max_batch_texts=self.settings.max_batch_texts,
            max_delay_ms=self.settings.max_delay_ms,
            max_queue_texts=self.settings.max_queue_texts,
            observer=self.observer,
        )
        return LoadedModel(name, version, manifest, classifier, batcher)

    async def _load(self, name: str, version: str) -> LoadedModel:
        preloaded = self._preloaded.pop((name, version), None)
        if preloaded is not None:
            parts = await asyncio.wrap_future(preloaded)
        else:
            parts = await asyncio.to_thread(self._build_parts, name, version)
        model = self._assemble(name, version, *parts)
        model.batcher.start()
        return model

    async def refresh(self) -> dict[str, list[str]]:
        """Bring loaded versions in line with the policy; returns what changed."""
        changes: dict[str, list[str]] = {"loaded": [], "unloaded": [], "rejected": []}
        async with self._lock:
            for name, policy in self._policy.items():
                wanted = self._wanted_versions(name, policy)
                current = self._models.setdefault(name, {})
                for version in wanted:
                    if version in current:
                        continue
                    folder = self.repository.root / name / version
                    stamp = _mtime(folder)
                    if self._rejected.get((name, version)) == stamp:
                        continue
                    try:
                        model = await self._load(name, version)
                    except SentistreamError as exc:
                        self._reject(name, version, stamp, exc)
                        changes["rejected"].append(f"{name}:{version}")
                        log.error(
                            "rejected model %s:%s: %s",
                            name,
                            version,
                            exc.message,
                            extra={"model": name, "version": version},
                        )
                        continue
                    current[version] = model
                    changes["loaded"].append(f"{name}:{version}")
                    log.info("loaded model %s:%s", name, version)
                if policy == "latest" and current:
                    newest = max(current, key=int)
                    stale = [v for v in current if v != newest]
                else:
                    stale = [v for v in current if v not in wanted] if wanted else []
                for version in stale:
                    old = current.pop(version)
                    asyncio.get_running_loop().create_task(old.batcher.close(drain=True))
                    changes["unloaded"].append(f"{name}:{version}")
                    log.info("unloaded model %s:%s", name, version)
        return changes

    async def load(self, ref: str) -> LoadedModel:
        """Load NAME[:VERSION] now (newest when no version) and serve it alongside."""
        name, version = parse_model_ref(ref)
        if self.torch_ref is not None:
            served = self._models.get(name, {})
            if version in served or (version is None and served):
                return served[version or max(served, key=int)]
            raise self._torch_serves_one()
        version = version or self.repository.resolve(name).name
        async with self._lock:
            return await self._load_locked(name, version)

    async def _load_locked(self, name: str, version: str) -> LoadedModel:
        """Serve NAME:VERSION alongside what is served; the caller holds the lock. A version
        that fails is remembered with its reason (the repository index shows it)."""
        current = self._models.get(name, {})
        if version in current:
            return current[version]
        stamp = _mtime(self.repository.root / name / version)
        try:
            model = await self._load(name, version)
        except SentistreamError as exc:
            self._reject(name, version, stamp, exc)
            raise
        self._models.setdefault(name, {})[version] = model
        self._policy.setdefault(name, version)
        self._rejected.pop((name, version), None)
        self._reasons.pop((name, version), None)
        return model

    def _reject(self, name: str, version: str, stamp: float, exc: SentistreamError) -> None:
        self._rejected[(name, version)] = stamp
        self._reasons[(name, version)] = self.public_message(exc.message)

    def _torch_serves_one(self) -> InvalidInputError:
        assert self.torch_ref is not None
        return InvalidInputError(
            f"the torch backend serves one model, {':'.join(self.torch_ref)}; loading, "
            "rolling back or refreshing repository models needs --backend onnx"
        )

    def broken_reason(self, name: str, version: str) -> str | None:
        """Why NAME:VERSION last failed to load, while its folder is unchanged since."""
        key = (name, version)
        if key not in self._reasons:
            return None
        if self._rejected.get(key) != _mtime(self.repository.root / name / version):
            return None
        return self._reasons[key]

    def public_message(self, message: str) -> str:
        """``message`` without the repository's location: what a client may read (paths
        become relative to the repository, e.g. ``tiny/2/model.onnx``)."""
        root = self.repository.root
        for path in sorted({str(root.absolute()), str(root)}, key=len, reverse=True):
            message = message.replace(path + os.sep, "").replace(path, "the model repository")
        return message

    async def unload(self, ref: str) -> list[str]:
        name, version = parse_model_ref(ref)
        async with self._lock:
            current = self._models.get(name, {})
            versions = [version] if version else list(current)
            missing = [v for v in versions if v not in current]
            if missing or not versions:
                raise ModelNotFoundError(f"model {ref!r} is not loaded")
            for v in versions:
                await current.pop(v).batcher.close(drain=True)
            if not current:
                self._models.pop(name, None)
                self._policy.pop(name, None)
            return [f"{name}:{v}" for v in versions]

    async def rollback(self, name: str) -> LoadedModel:
        """Serve the previous version: pin it and unload the newer ones. One step under the
        lock, so an unload or load at the same time runs wholly before or after it."""
        async with self._lock:
            current = self._models.get(name)
            if not current:
                raise ModelNotFoundError(f"model {name!r} is not loaded")
            if self.torch_ref is not None:
                raise self._torch_serves_one()
            newest = max(current, key=int)
            older = [v for v in self.repository.versions(name) if int(v) < int(newest)]
            if not older:
                raise InvalidInputError(f"model {name!r} has no version older than {newest}")
            target = older[-1]
            model = await self._load_locked(name, target)
            self._policy[name] = target
            current = self._models[name]
            for v in [v for v in current if v != target]:
                await current.pop(v).batcher.close(drain=True)
        log.info("rolled back %s to version %s", name, target)
        return model

    # -- serving --------------------------------------------------------------------------------
    @property
    def serving(self) -> bool:
        """Ready, not draining, and at least one model version loaded."""
        return self.ready and not self.draining and bool(self.models())

    def models(self) -> list[LoadedModel]:
        return [m for versions in self._models.values() for m in versions.values()]

    def get(self, name: str, version: str | None = None) -> LoadedModel:
        versions = self._models.get(name)
        if not versions:
            raise ModelNotFoundError(
                f"model {name!r} is not served (served: "
                f"{', '.join(sorted(self._models)) or 'none'})"
            )
        if version in (None, ""):
            return versions[max(versions, key=int)]
        assert version is not None
        if version not in versions:
            raise ModelNotFoundError(
                f"model {name!r} version {version!r} is not served (served: "
                f"{', '.join(sorted(versions, key=int))})"
            )
        return versions[version]

    def default_model(self) -> str:
        if self.torch_ref is not None:
            name = self.torch_ref[0]
        else:
            name, _ = parse_model_ref(self.settings.model)
        if name in self._models:
            return name
        if not self._models:
            raise UnavailableError("no model is loaded yet")
        return sorted(self._models)[0]

    async def infer(
        self,
        texts: Sequence[object],
        *,
        model: str | None = None,
        version: str | None = None,
        tasks: Sequence[str] | None = None,
    ) -> tuple[LoadedModel, list[Prediction]]:
        """Validate, clean and classify ``texts`` on the chosen model version."""
        if not self.ready and not self._models:
            raise UnavailableError("model is still loading")
        if not texts:
            raise InvalidInputError("no texts given")
        if len(texts) > self.settings.max_texts_per_request:
            raise InvalidInputError(
                f"{len(texts)} texts in one request; the limit is "
                f"{self.settings.max_texts_per_request}"
            )
        loaded = self.get(model or self.default_model(), version)
        cleaned = []
        for i, text in enumerate(texts):
            try:
                cleaned.append(loaded.classifier.prepare(text))
            except InvalidInputError as exc:
                prefix = f"texts[{i}]: " if len(texts) > 1 else ""
                raise InvalidInputError(prefix + exc.message) from exc
        self.in_flight += 1
        try:
            return loaded, await loaded.batcher.submit(cleaned, tasks)
        finally:
            self.in_flight -= 1


def torch_manifest(classifier: Classifier, source: str) -> Manifest:
    """What the server publishes about a torch-backend model (metadata and signature
    endpoints), built from the loaded classifier: it has no manifest file of its own."""
    outputs = {task: f"logits_{task}" for task in classifier.tasks}
    return Manifest(
        name=classifier.name,
        version=classifier.version,
        description=f"torch backend ({classifier.backend.name}): {source}",
        primary_task=classifier.primary_task,
        tasks={
            task: TaskSpec(
                labels=labels,
                output=outputs[task],
                temperature=classifier.temperatures.get(task, 1.0),
            )
            for task, labels in classifier.tasks.items()
        },
        max_length=classifier.max_length,
        truncation=classifier.truncation,
        cleaning_version=CLEANING_VERSION,
        max_chars=classifier.max_chars,
        signature=Signature(
            inputs=[
                TensorSpec(name=n, dtype="int64", shape=["batch", "sequence"])
                for n in ("input_ids", "attention_mask")
            ],
            outputs=[
                TensorSpec(name=outputs[t], dtype="float32", shape=["batch", len(labels)])
                for t, labels in classifier.tasks.items()
            ],
        ),
        base_model=source,
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def _mtime(folder: Any) -> float:
    try:
        return float(max(p.stat().st_mtime for p in [folder, *folder.iterdir()]))
    except (OSError, ValueError):
        return 0.0
