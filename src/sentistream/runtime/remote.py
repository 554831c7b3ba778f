"""A classifier that calls a model server (``sentistream serve``) over KServe V2 gRPC.

:class:`RemoteClassifier` has the surface the stream worker uses of a :class:`Classifier`
(``prepare``, ``classify_clean``, ``name``, ``version``, ``tasks``), so a worker can share one
model server instead of loading the model itself. Behaviour:

- ``connect`` waits for ``ServerReady`` (retrying with backoff, ``UnavailableError`` after
  ``ready_timeout``), reads the tasks from ``ModelMetadata`` and sends one warm-up request to
  learn the label order (the ``labels`` parameter of ``<task>_probabilities``), name and version.
- ``prepare`` validates and cleans locally, exactly like ``Classifier.prepare``.
- Calls are synchronous (the worker calls from a thread) with a per-call deadline.
  UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED and CANCELLED (a server shutting down;
  this client never cancels) are retried forever with exponential backoff (0.2 s doubling to
  5 s, times ``backoff_scale``): the caller's input stays unacknowledged, so blocking is right.
  After 5 consecutive failures a circuit breaker opens: callers wait out the backoff and one
  probe at a time tries the server. ``close()`` ends the waiting with ``UnavailableError``.
- INVALID_ARGUMENT -> ``InvalidInputError``, NOT_FOUND -> ``ModelNotFoundError``,
  UNAUTHENTICATED and anything else -> ``UnavailableError``; none of these is retried.
- Labels and the model version are read from every response, so a server that switches model
  versions is followed. The bearer token is sent as metadata and never logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import grpc
import numpy as np

from sentistream.errors import (
    InvalidInputError,
    ModelNotFoundError,
    SentistreamError,
    UnavailableError,
)
from sentistream.protos.inference import grpc_predict_v2_pb2 as v2
from sentistream.protos.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from sentistream.runtime.base import Prediction, TaskPrediction, prepare_text, select_tasks
from sentistream.server.convert import decode_bytes_elements, encode_bytes_elements
from sentistream.text import DEFAULT_MAX_CHARS

__all__ = ["RemoteClassifier"]

log = logging.getLogger("sentistream.remote")
_RETRY = {  # CANCELLED too: this client never cancels, so it is a server shutting down
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
_BREAKER_THRESHOLD = 5


class RemoteClassifier:
    """Texts in, predictions out, computed by a remote ``sentistream serve``."""

    def __init__(
        self,
        url: str,
        model: str = "tweet-sentiment",
        *,
        timeout: float = 10.0,
        auth_token: str | None = None,
        max_text_chars: int = 20_000,
        backoff_scale: float = 1.0,
        max_batch: int = 64,
    ) -> None:
        """Open the channel only; :meth:`connect` also waits for the server and learns the model."""
        parts = urlsplit(url)
        if parts.scheme not in ("grpc", "grpcs") or not parts.hostname or not parts.port:
            raise InvalidInputError(f"expected grpc://host:port or grpcs://host:port, got {url!r}")
        self.target = f"{parts.hostname}:{parts.port}"
        ms = [max(1, int(x * backoff_scale)) for x in (200, 5000)]
        options = [
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.initial_reconnect_backoff_ms", ms[0]),
            ("grpc.min_reconnect_backoff_ms", ms[0]),
            ("grpc.max_reconnect_backoff_ms", ms[1]),
        ]
        if parts.scheme == "grpcs":
            creds = grpc.ssl_channel_credentials()
            self.channel = grpc.secure_channel(self.target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(self.target, options=options)
        self.stub = v2_grpc.GRPCInferenceServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self.name, self.version = model, ""
        self.tasks: dict[str, list[str]] = {}
        self.primary_task = ""
        self.max_chars = DEFAULT_MAX_CHARS  # the manifest's value is not exposed over gRPC
        self.max_length = 0  # unknown remotely
        self.max_text_chars, self.max_batch = max_text_chars, max_batch
        self.timeout, self.backoff_scale = timeout, backoff_scale
        self._metadata = (("authorization", f"Bearer {auth_token}"),) if auth_token else ()
        self._lock, self._probe = threading.Lock(), threading.Lock()
        self._closed = threading.Event()
        self._failures, self._retry_at = 0, 0.0

    @classmethod
    def connect(
        cls,
        url: str,
        model: str = "tweet-sentiment",
        *,
        timeout: float = 10.0,
        auth_token: str | None = None,
        max_text_chars: int = 20_000,
        ready_timeout: float = 60.0,
        backoff_scale: float = 1.0,
        max_batch: int = 64,
    ) -> RemoteClassifier:
        """Open ``grpc://host:port`` (``grpcs://``: TLS, system roots) and learn the model."""
        client = cls(
            url,
            model,
            timeout=timeout,
            auth_token=auth_token,
            max_text_chars=max_text_chars,
            backoff_scale=backoff_scale,
            max_batch=max_batch,
        )
        try:
            client._start(time.monotonic() + ready_timeout)
        except BaseException:
            client.channel.close()
            raise
        return client

    def _start(self, give_up_at: float) -> None:
        delay, ready = 0.2 * self.backoff_scale, v2.ServerReadyRequest()
        while not self._call(self.stub.ServerReady, ready, give_up_at, True).ready:
            if time.monotonic() + delay > give_up_at or self._closed.wait(delay):
                raise UnavailableError(f"model server at {self.target} is not ready")
            delay = min(2 * delay, 5.0 * self.backoff_scale)
        request = v2.ModelMetadataRequest(name=self.name)
        meta = self._call(self.stub.ModelMetadata, request, give_up_at)
        names = [o.name.removesuffix("_label") for o in meta.outputs if o.name.endswith("_label")]
        if not names:
            raise UnavailableError(f"model {self.name!r} at {self.target} has no *_label outputs")
        self.tasks = {t: [] for t in names}
        self.primary_task = "sentiment" if "sentiment" in self.tasks else names[0]
        self._infer(["hello"], names, give_up_at)  # warm-up: fills labels, name and version
        log.info("connected", extra={"target": self.target, "model": f"{self.name}:{self.version}"})

    def close(self) -> None:
        """Stop retrying (waiting calls raise UnavailableError) and close the channel."""
        self._closed.set()
        self.channel.close()

    # -- validation (same rules as Classifier) ----------------------------------------------
    def prepare(self, text: object) -> str:
        return prepare_text(text, self.max_text_chars, self.max_chars)

    def select_tasks(self, tasks: Sequence[str] | None) -> list[str]:
        return select_tasks(self.tasks, tasks)

    # -- inference ----------------------------------------------------------------------------
    def classify_clean(
        self, cleaned: Sequence[str], tasks: Sequence[str] | None = None
    ) -> list[Prediction]:
        """Classify texts passed through :meth:`prepare`; blocks while the server is down."""
        selected = self.select_tasks(tasks)
        out: list[Prediction] = []
        for i in range(0, len(cleaned), self.max_batch):
            out += self._infer(list(cleaned[i : i + self.max_batch]), selected)
        return out

    def _infer(
        self, texts: list[str], tasks: list[str], give_up_at: float | None = None
    ) -> list[Prediction]:
        request = v2.ModelInferRequest(model_name=self.name)
        request.inputs.add(name="text", datatype="BYTES", shape=[len(texts)])
        request.raw_input_contents.append(encode_bytes_elements([t.encode() for t in texts]))
        for task in tasks:
            request.outputs.add(name=f"{task}_label")
            request.outputs.add(name=f"{task}_probabilities")
        response = self._call(self.stub.ModelInfer, request, give_up_at)
        raw = dict(
            zip([o.name for o in response.outputs], response.raw_output_contents, strict=True)
        )
        params = {o.name: o.parameters for o in response.outputs}
        if response.model_version != self.version:
            if self.version:
                log.warning("model version changed", extra={"version": response.model_version})
            self.name, self.version = response.model_name, response.model_version
        n = len(texts)
        per_task: list[dict[str, TaskPrediction]] = [{} for _ in range(n)]
        for task in tasks:
            key = f"{task}_probabilities"
            if f"{task}_label" not in raw or key not in raw or "labels" not in params[key]:
                raise UnavailableError(f"server response lacks {key} with a 'labels' parameter")
            labels = params[key]["labels"].string_param.split(",")
            self.tasks[task] = labels
            probs = np.frombuffer(raw[key], dtype="<f4").reshape(n, len(labels))
            names = [b.decode() for b in decode_bytes_elements(raw[f"{task}_label"], n)]
            for row, (label, p) in enumerate(zip(names, probs, strict=True)):
                scores = {lab: round(float(v), 6) for lab, v in zip(labels, p, strict=True)}
                per_task[row][task] = TaskPrediction(label, scores[label], scores)
        primary = self.primary_task if self.primary_task in tasks else tasks[0]
        return [Prediction(primary=primary, tasks=t) for t in per_task]

    # -- transport: deadline, retries, circuit breaker ----------------------------------------
    def _call(
        self,
        method: Callable[..., Any],
        request: Any,
        give_up_at: float | None = None,
        open_method: bool = False,
    ) -> Any:
        while True:
            if self._failures >= _BREAKER_THRESHOLD:
                with self._probe:  # breaker open: one caller at a time waits, then probes
                    self._sleep(give_up_at)
                    outcome = self._attempt(method, request, open_method)
            else:
                outcome = self._attempt(method, request, open_method)
                if isinstance(outcome, grpc.RpcError):
                    self._sleep(give_up_at)
            if not isinstance(outcome, grpc.RpcError):
                return outcome

    def _attempt(self, method: Callable[..., Any], request: Any, open_method: bool) -> Any:
        if self._closed.is_set():
            raise UnavailableError(f"remote classifier for {self.target} is closed")
        metadata = () if open_method else self._metadata
        try:
            response = method(request, timeout=self.timeout, metadata=metadata)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
            if code not in _RETRY:
                raise _error(code, details) from None
            with self._lock:
                self._failures += 1
                failures = self._failures
                delay = min(5.0, 0.2 * 2 ** min(failures - 1, 10)) * self.backoff_scale
                self._retry_at = time.monotonic() + delay
            if failures == 1:
                log.warning("server %s: %s, retrying", self.target, code.name)
            elif failures == _BREAKER_THRESHOLD:
                log.warning("circuit breaker open for %s after %d failures", self.target, failures)
            return exc
        with self._lock:
            failures, self._failures = self._failures, 0
        if failures:
            log.info("server %s answered again after %d failures", self.target, failures)
        return response

    def _sleep(self, give_up_at: float | None) -> None:
        wait = self._retry_at - time.monotonic()
        if give_up_at is not None and time.monotonic() + max(wait, 0.0) > give_up_at:
            raise UnavailableError(f"model server at {self.target} is not ready")
        if wait > 0 and self._closed.wait(wait):
            raise UnavailableError(f"remote classifier for {self.target} is closed")


def _error(code: grpc.StatusCode, details: str) -> SentistreamError:
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidInputError(details)
    if code == grpc.StatusCode.NOT_FOUND:
        return ModelNotFoundError(details)
    return UnavailableError(f"the model server answered {code.name}: {details}")
