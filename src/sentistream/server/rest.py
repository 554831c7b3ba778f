"""REST transport: plain JSON API, KServe V2 (Open Inference Protocol) REST with the binary
tensor extension, TF-Serving-compatible ``:predict``, repository control, health and metrics.

Every endpoint converts its request, calls :class:`ModelRegistry`, converts back. Errors come
from the one hierarchy in :mod:`sentistream.errors` and are mapped here to HTTP statuses.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Awaitable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from sentistream import __version__
from sentistream.config import Settings
from sentistream.errors import InvalidInputError, SentistreamError
from sentistream.monitoring import PROMETHEUS_CONTENT_TYPE, ServerMetrics
from sentistream.server import convert
from sentistream.server.limits import (
    BodyTimeoutError,
    LimitsAndMetrics,
    TooLargeError,
    body_too_slow,
    too_large,
)
from sentistream.server.registry import LoadedModel, ModelRegistry

__all__ = ["ClassifyRequest", "ClassifyResponse", "create_app"]

log = logging.getLogger("sentistream.server")
JSON_HEADER = "inference-header-content-length"


class ClassifyRequest(BaseModel):
    """``text`` or ``texts``; optional model, version and subset of tasks."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"text": "I love this"},
                {"texts": ["great game", "worst day"], "tasks": ["sentiment"]},
            ]
        },
    )

    text: str | None = Field(None, description="one text")
    texts: list[str] | None = Field(None, description="several texts")
    model: str | None = Field(None, description="model name (default: the server's model)")
    version: str | None = Field(None, description="model version (default: the newest served)")
    tasks: list[str] | None = Field(None, description="subset of the model's tasks")


class TaskResult(BaseModel):
    label: str
    score: float
    scores: dict[str, float]


class ClassifyResult(BaseModel):
    label: str
    score: float
    scores: dict[str, float]
    tasks: dict[str, TaskResult]


class ClassifyResponse(BaseModel):
    model: str
    model_version: str
    results: list[ClassifyResult]


class ErrorBody(BaseModel):
    error: str
    code: str


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in [
        (400, "invalid input"),
        (401, "missing or wrong bearer token"),
        (408, "request body not received in time"),
        (404, "unknown model or version"),
        (409, "the model version is broken (bad manifest, missing or corrupted file)"),
        (413, "body too large"),
        (429, "server at capacity, retry later"),
        (503, "not ready"),
    ]
}
# Operations without parameters or body can still be refused for the token or the body size.
NO_INPUT: dict[int | str, dict[str, Any]] = {code: ERRORS[code] for code in (401, 413)}


# The rest of the body is never read: the connection closes after the answer.
_CLOSE = {"Connection": "close"}

# gRPC status-code names for the HTTP errors FastAPI/Starlette raise themselves.
_HTTP_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    413: "INVALID_ARGUMENT",
    415: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
}


def _error(
    status: int, message: str, code: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return JSONResponse({"error": message, "code": code}, status_code=status, headers=headers)


async def _until_disconnect(request: Request, work: Awaitable[Any]) -> Any:
    """Await ``work``; if the client disconnects first, cancel this handler so the request's
    slot in the batch is dropped instead of computed for nobody."""
    handler = asyncio.current_task()

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        if handler is not None:
            handler.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    finally:
        watcher.cancel()


def create_app(registry: ModelRegistry, metrics: ServerMetrics, settings: Settings) -> FastAPI:
    app = FastAPI(
        title="sentistream model server",
        version=__version__,
        description="Sentiment (and other task) classification of short texts: a plain JSON "
        "API, the Open Inference Protocol (KServe V2) and a TF-Serving-compatible API.",
    )
    token = settings.auth_token.get_secret_value().encode() if settings.auth_token else None

    async def auth(request: Request) -> None:
        if token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token):
            raise _AuthError()

    protected = [Depends(auth)]

    @app.exception_handler(SentistreamError)
    async def _sentistream_error(_: Request, exc: SentistreamError) -> JSONResponse:
        return _error(exc.http_status, registry.public_message(exc.message), exc.grpc_code)

    @app.exception_handler(_AuthError)
    async def _auth_error(_: Request, __: Exception) -> JSONResponse:
        return _error(401, "missing or invalid bearer token", "UNAUTHENTICATED")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Errors FastAPI and Starlette raise themselves (no such route, method not allowed, a
        # body that cannot be parsed) in the same JSON shape as ours. FastAPI reports a body cut
        # off by the size limit (chunked, no Content-Length) as unparsable: it is a 413.
        # The same for a body that did not arrive in time.
        if isinstance(exc.__cause__, TooLargeError):
            return _error(413, too_large(settings.max_body_bytes), "INVALID_ARGUMENT", _CLOSE)
        if isinstance(exc.__cause__, BodyTimeoutError):
            message = body_too_slow(settings.http_body_timeout_seconds)
            return _error(408, message, "INVALID_ARGUMENT", _CLOSE)
        code = _HTTP_CODES.get(exc.status_code, "UNKNOWN")
        return _error(exc.status_code, str(exc.detail), code, dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
            for e in exc.errors()
        )
        return _error(422, f"invalid request: {problems}", "INVALID_ARGUMENT")

    async def read_json(request: Request) -> tuple[dict[str, Any], bytes]:
        raw = await request.body()
        header_len = request.headers.get(JSON_HEADER)
        binary = b""
        if header_len is not None:
            try:
                n = int(header_len)
            except ValueError as exc:
                raise InvalidInputError(f"{JSON_HEADER} must be an integer") from exc
            if not 0 <= n <= len(raw):
                raise InvalidInputError(f"{JSON_HEADER} {n} is outside the body ({len(raw)} bytes)")
            raw, binary = raw[:n], raw[n:]
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise InvalidInputError(f"body is not valid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise InvalidInputError("body must be a JSON object")
        return body, binary

    async def classify(
        request: Request,
        texts: list[Any],
        model: str | None,
        version: str | None,
        tasks: list[str] | None,
    ) -> tuple[LoadedModel, list[Any]]:
        result: tuple[LoadedModel, list[Any]] = await _until_disconnect(
            request, registry.infer(texts, model=model, version=version, tasks=tasks)
        )
        return result

    # -- health, metadata, metrics (no auth) ---------------------------------------
    @app.get("/v2/health/live", tags=["health"], summary="liveness")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["health"], summary="readiness", responses={503: ERRORS[503]})
    async def ready() -> JSONResponse:
        if registry.serving:
            return JSONResponse({"ready": True})
        return JSONResponse(
            {"ready": False, "error": "not ready", "code": "UNAVAILABLE"}, status_code=503
        )

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics")
    async def prometheus() -> Response:
        metrics.ready.set(1 if registry.ready else 0)
        # From the registry at each scrape: load, unload, rollback and hot reload all show.
        metrics.set_models((m.name, m.version, m.batcher.pending) for m in registry.models())
        return Response(metrics.render(), media_type=PROMETHEUS_CONTENT_TYPE)

    # -- plain JSON API ----------------------------------------------------------------------------
    @app.post(
        "/v1/classify",
        tags=["classify"],
        response_model=ClassifyResponse,
        dependencies=protected,
        responses=ERRORS,
    )
    async def classify_json(request: Request, body: ClassifyRequest) -> Response:
        if (body.text is None) == (body.texts is None):
            raise InvalidInputError("give exactly one of 'text' or 'texts'")
        texts = [body.text] if body.text is not None else list(body.texts or [])
        loaded, preds = await classify(request, texts, body.model, body.version, body.tasks)
        # Built directly (response_model documents it): no second validation pass.
        payload = {
            "model": loaded.name,
            "model_version": loaded.version,
            "results": [p.to_dict() for p in preds],
        }
        return Response(json.dumps(payload).encode(), media_type="application/json")

    # -- KServe V2 ---------------------------------------------------------------------
    @app.get("/v2", tags=["kserve-v2"], dependencies=protected, responses=ERRORS)
    async def server_metadata() -> dict[str, Any]:
        return {
            "name": "sentistream",
            "version": __version__,
            "extensions": ["binary_tensor_data", "model_repository"],
        }

    def v2_metadata(loaded: LoadedModel) -> dict[str, Any]:
        tasks = loaded.classifier.tasks
        versions = sorted((m.version for m in registry.models() if m.name == loaded.name), key=int)
        return {
            "name": loaded.name,
            "versions": versions,
            "platform": loaded.platform,
            "inputs": [{"name": convert.INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": f"{t}_label", "datatype": "BYTES", "shape": [-1]} for t in tasks]
            + [
                {"name": f"{t}_probabilities", "datatype": "FP32", "shape": [-1, len(lbl)]}
                for t, lbl in tasks.items()
            ],
            "parameters": {
                "tasks": {t: lbl for t, lbl in tasks.items()},
                "primary_task": loaded.classifier.primary_task,
                "manifest": loaded.metadata(),
            },
        }

    @app.get("/v2/models/{model}", tags=["kserve-v2"], dependencies=protected, responses=ERRORS)
    async def model_metadata(model: str) -> dict[str, Any]:
        return v2_metadata(registry.get(model))

    @app.get(
        "/v2/models/{model}/versions/{version}",
        tags=["kserve-v2"],
        dependencies=protected,
        responses=ERRORS,
    )
    async def model_version_metadata(model: str, version: str) -> dict[str, Any]:
        return v2_metadata(registry.get(model, version))

    async def model_ready(model: str, version: str | None) -> JSONResponse:
        # An unknown model or version is a 404 (KServe: any 4xx means "not ready"), not a 503;
        # 503 is for a served model while the server is not ready (starting or draining).
        registry.get(model, version)
        if registry.ready:
            return JSONResponse({"name": model, "ready": True})
        return JSONResponse(
            {"name": model, "ready": False, "error": "not ready", "code": "UNAVAILABLE"},
            status_code=503,
        )

    @app.get(
        "/v2/models/{model}/ready", tags=["kserve-v2"], dependencies=protected, responses=ERRORS
    )
    async def v2_model_ready(model: str) -> JSONResponse:
        return await model_ready(model, None)

    @app.get(
        "/v2/models/{model}/versions/{version}/ready",
        tags=["kserve-v2"],
        dependencies=protected,
        responses=ERRORS,
    )
    async def v2_model_version_ready(model: str, version: str) -> JSONResponse:
        return await model_ready(model, version)

    async def v2_infer(request: Request, model: str, version: str | None) -> Response:
        body, binary = await read_json(request)
        loaded = registry.get(model, version)
        limit = settings.max_texts_per_request
        texts, requested, binary_out, all_binary = convert.v2_rest_texts(body, binary, limit)
        tasks = convert.tasks_for_outputs(loaded.classifier.tasks, requested)
        loaded, preds = await classify(request, texts, model, loaded.version, tasks)
        tensors = convert.output_tensors(loaded.classifier.tasks, preds, requested)
        request_id = body.get("id") if isinstance(body.get("id"), str) else None
        payload, header_len = convert.v2_rest_response(
            loaded.name, loaded.version, request_id, tensors, binary_out, all_binary
        )
        if header_len is None:
            return Response(payload, media_type="application/json")
        return Response(
            payload,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(header_len)},
        )

    infer_doc = {
        "requestBody": {
            "content": {"application/json": {"schema": {"type": "object"}}},
            "required": True,
        }
    }

    @app.post(
        "/v2/models/{model}/infer",
        tags=["kserve-v2"],
        dependencies=protected,
        responses=ERRORS,
        openapi_extra=infer_doc,
    )
    async def infer(request: Request, model: str) -> Response:
        return await v2_infer(request, model, None)

    @app.post(
        "/v2/models/{model}/versions/{version}/infer",
        tags=["kserve-v2"],
        dependencies=protected,
        responses=ERRORS,
        openapi_extra=infer_doc,
    )
    async def infer_version(request: Request, model: str, version: str) -> Response:
        return await v2_infer(request, model, version)

    # -- repository control (KServe/Triton repository extension + rollback) --------------------
    @app.post(
        "/v2/repository/index", tags=["repository"], dependencies=protected, responses=NO_INPUT
    )
    async def repository_index() -> list[dict[str, Any]]:
        served = {(m.name, m.version) for m in registry.models()}
        if registry.torch_backend:  # one model, not from the repository
            return [
                {"name": n, "version": v, "state": "READY", "reason": ""} for n, v in sorted(served)
            ]
        rows = []
        for r in registry.repository.describe():
            key = (r["name"], r["version"])
            # An invalid manifest, or the reason the last load of this folder failed.
            reason = "" if key in served else r["error"] or registry.broken_reason(*key) or ""
            state = "READY" if key in served else ("BROKEN" if reason else "UNAVAILABLE")
            reason = registry.public_message(reason)
            rows.append({"name": key[0], "version": key[1], "state": state, "reason": reason})
        return rows

    @app.post(
        "/v2/repository/models/{model}/load",
        tags=["repository"],
        dependencies=protected,
        responses=ERRORS,
    )
    async def repository_load(model: str, version: str | None = None) -> dict[str, Any]:
        ref = f"{model}:{version}" if version else model
        registry.repository.resolve(ref)  # no such model or version folder: 404, not a 500
        loaded = await registry.load(ref)
        return {"loaded": f"{loaded.name}:{loaded.version}"}

    @app.post(
        "/v2/repository/models/{model}/unload",
        tags=["repository"],
        dependencies=protected,
        responses=ERRORS,
    )
    async def repository_unload(model: str, version: str | None = None) -> dict[str, Any]:
        return {"unloaded": await registry.unload(f"{model}:{version}" if version else model)}

    @app.post(
        "/v2/repository/models/{model}/rollback",
        tags=["repository"],
        dependencies=protected,
        responses=ERRORS,
    )
    async def repository_rollback(model: str) -> dict[str, Any]:
        loaded = await registry.rollback(model)
        return {"serving": f"{loaded.name}:{loaded.version}"}

    @app.post(
        "/v2/repository/refresh", tags=["repository"], dependencies=protected, responses=NO_INPUT
    )
    async def repository_refresh() -> dict[str, list[str]]:
        return await registry.refresh()

    # -- TF Serving REST -------------------------------------------------------------------------
    async def tfs_predict(request: Request, model: str, version: str | None) -> dict[str, Any]:
        body, _ = await read_json(request)
        sig = body.get("signature_name")
        if sig not in (None, "", "serving_default", "predict"):
            raise InvalidInputError(f"unknown signature_name {sig!r}; use 'serving_default'")
        texts, row = convert.tfs_rest_texts(body)
        loaded, preds = await classify(request, texts, model, version, None)
        return convert.tfs_rest_response(
            convert.output_tensors(loaded.classifier.tasks, preds), row
        )

    @app.post(
        "/v1/models/{model}:predict",
        tags=["tf-serving"],
        dependencies=protected,
        responses=ERRORS,
        openapi_extra=infer_doc,
    )
    async def tfs(request: Request, model: str) -> dict[str, Any]:
        return await tfs_predict(request, model, None)

    @app.post(
        "/v1/models/{model}/versions/{version}:predict",
        tags=["tf-serving"],
        dependencies=protected,
        responses=ERRORS,
        openapi_extra=infer_doc,
    )
    async def tfs_version(request: Request, model: str, version: str) -> dict[str, Any]:
        return await tfs_predict(request, model, version)

    @app.get("/v1/models/{model}", tags=["tf-serving"], dependencies=protected, responses=ERRORS)
    async def tfs_status(model: str) -> dict[str, Any]:
        versions = [m for m in registry.models() if m.name == model]
        if not versions:
            registry.get(model)  # raises the 404
        return {
            "model_version_status": [
                {
                    "version": m.version,
                    "state": "AVAILABLE",
                    "status": {"error_code": "OK", "error_message": ""},
                }
                for m in versions
            ]
        }

    if settings.dashboard:
        _mount_dashboard(app, registry, metrics, settings)
    app.add_middleware(LimitsAndMetrics, settings=settings, metrics=metrics)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )
    return app


def _mount_dashboard(
    app: FastAPI, registry: ModelRegistry, metrics: ServerMetrics, settings: Settings
) -> None:
    """``/dashboard`` on the server: records of ``dashboard_stream`` when one is configured,
    and the server's own figures (texts classified, inference latency, models served)."""
    from sentistream.dashboard import RedisFeed, mount_dashboard

    feed = None
    if settings.dashboard_stream and settings.redis_url is not None:
        from sentistream.stream.redis_io import connect

        feed = RedisFeed(connect(settings.redis_url.get_secret_value()), settings.dashboard_stream)
    started = time.time()

    def stats() -> dict[str, Any]:
        models = registry.models()
        batches = metrics.total("sentistream_inference_seconds_count")
        seconds = metrics.total("sentistream_inference_seconds_sum")
        return {
            "role": "server",
            "model": {"name": models[0].name, "version": models[0].version} if models else {},
            "models": [f"{m.name}:{m.version}" for m in models],
            "primary_task": models[0].classifier.primary_task if models else "",
            "ready": registry.ready,
            "uptime_s": round(time.time() - started, 1),
            "processed": int(metrics.total("sentistream_texts_total")),
            "requests": int(metrics.total("sentistream_requests_total")),
            "latency_ms": round(seconds / batches * 1000, 3) if batches else None,
            "drift": None,
        }

    mount_dashboard(
        app,
        stats=stats,
        feed=feed,
        clients=metrics.dashboard_clients,
        max_clients=settings.dashboard_max_clients,
        history=settings.dashboard_history,
        closing=lambda: registry.draining,
    )


class _AuthError(Exception):
    pass
