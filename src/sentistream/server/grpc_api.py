"""gRPC transport: ``inference.GRPCInferenceService`` (KServe V2 / Triton clients) and
``tensorflow.serving.PredictionService/Predict`` (TF Serving clients), over the same registry.

Each method converts the message, calls the core and converts back; errors from the one
hierarchy are mapped to gRPC status codes by ``_abort``.
"""

from __future__ import annotations

import hmac
import logging
import time
import types
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np

from sentistream import __version__
from sentistream.config import Settings
from sentistream.errors import InvalidInputError, SentistreamError
from sentistream.monitoring import ServerMetrics
from sentistream.protos.inference import grpc_predict_v2_pb2 as v2
from sentistream.protos.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from sentistream.protos.tensorflow.core.framework import tensor_pb2, types_pb2
from sentistream.protos.tensorflow_serving.apis import predict_pb2
from sentistream.protos.tensorflow_serving.apis import prediction_service_pb2_grpc as tfs_grpc
from sentistream.server import convert
from sentistream.server.registry import ModelRegistry

__all__ = ["build_grpc_server"]

log = logging.getLogger("sentistream.server")
# One rule on both transports: the server's own health (live, ready) is open; anything about a
# model (ready, metadata, inference) needs the token when one is configured.
_OPEN_METHODS = {"ServerLive", "ServerReady"}


async def _abort(
    context: grpc.aio.ServicerContext, exc: SentistreamError, registry: ModelRegistry
) -> None:
    code = getattr(grpc.StatusCode, exc.grpc_code)
    await context.abort(code, registry.public_message(exc.message))


def _instrument(metrics: ServerMetrics, name: str) -> Callable[..., Any]:
    def wrap(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code = "OK"
            try:
                return await fn(self, request, context)
            except SentistreamError as exc:
                code = exc.grpc_code
                await _abort(context, exc, self.registry)
            except Exception:
                code = context.code().name if context.code() else "INTERNAL"
                raise
            finally:
                metrics.requests.labels("grpc", name, code).inc()
                metrics.request_seconds.labels("grpc", name).observe(time.perf_counter() - started)

        return handler

    return wrap


def _check_size(request: Any, limit: int) -> None:
    size = request.ByteSize()
    if size > limit:
        raise InvalidInputError(f"request message is {size} bytes; the limit is {limit}")


class InferenceService(v2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, registry: ModelRegistry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return v2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return v2.ServerReadyResponse(ready=self.registry.serving)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        try:
            self.registry.get(request.name, request.version or None)
            return v2.ModelReadyResponse(ready=self.registry.ready)
        except SentistreamError:
            return v2.ModelReadyResponse(ready=False)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return v2.ServerMetadataResponse(
            name="sentistream", version=__version__, extensions=["model_repository"]
        )

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        loaded = self.registry.get(request.name, request.version or None)
        tasks = loaded.classifier.tasks
        meta = v2.ModelMetadataResponse
        outputs = [
            meta.TensorMetadata(name=f"{t}_label", datatype="BYTES", shape=[-1]) for t in tasks
        ]
        outputs += [
            meta.TensorMetadata(name=f"{t}_probabilities", datatype="FP32", shape=[-1, len(lbl)])
            for t, lbl in tasks.items()
        ]
        versions = sorted(
            (m.version for m in self.registry.models() if m.name == loaded.name), key=int
        )
        return meta(
            name=loaded.name,
            versions=versions,
            platform=loaded.platform,
            inputs=[meta.TensorMetadata(name=convert.INPUT_NAME, datatype="BYTES", shape=[-1])],
            outputs=outputs,
        )

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        _check_size(request, self.settings.max_body_bytes)
        limit = self.settings.max_texts_per_request
        inputs = list(request.inputs)
        idx = convert.pick_input([i.name for i in inputs])
        tensor = inputs[idx]
        if tensor.datatype != "BYTES":
            raise InvalidInputError(
                f"input {tensor.name!r} must have datatype BYTES, got {tensor.datatype!r}"
            )
        if request.raw_input_contents:
            if len(request.raw_input_contents) != len(inputs):
                raise InvalidInputError("raw_input_contents must have one entry per input")
            if tensor.HasField("contents"):
                raise InvalidInputError("send contents or raw_input_contents, not both")
            values: list[Any] = convert.decode_bytes_elements(
                request.raw_input_contents[idx], limit
            )
        else:
            values = list(tensor.contents.bytes_contents)
        if len(values) > limit:
            raise InvalidInputError(f"{len(values)} texts in one request; the limit is {limit}")
        convert.check_shape(list(tensor.shape), len(values))
        texts = convert.texts_from_bytes(values)
        loaded = self.registry.get(request.model_name, request.model_version or None)
        requested = [o.name for o in request.outputs]
        tasks = convert.tasks_for_outputs(loaded.classifier.tasks, requested)
        loaded, preds = await self.registry.infer(
            texts, model=loaded.name, version=loaded.version, tasks=tasks
        )
        response = v2.ModelInferResponse(
            model_name=loaded.name, model_version=loaded.version, id=request.id
        )
        for name, dtype, shape, arr in convert.output_tensors(
            loaded.classifier.tasks, preds, requested
        ):
            out = response.outputs.add(name=name, datatype=dtype, shape=shape)
            task = name.removesuffix("_probabilities")
            if task != name and task in loaded.classifier.tasks:
                # the column order of the matrix, so a client can map columns to labels
                labels = ",".join(loaded.classifier.tasks[task])
                out.parameters["labels"].string_param = labels
            if dtype == "BYTES":
                response.raw_output_contents.append(convert.encode_bytes_elements(list(arr)))
            else:
                response.raw_output_contents.append(arr.astype("<f4").tobytes())
        return response


class PredictionService(tfs_grpc.PredictionServiceServicer):
    def __init__(self, registry: ModelRegistry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings

    async def Predict(self, request: Any, context: Any) -> Any:
        _check_size(request, self.settings.max_body_bytes)
        spec = request.model_spec
        if spec.signature_name not in ("", "serving_default", "predict"):
            raise InvalidInputError(
                f"unknown signature_name {spec.signature_name!r}; use 'serving_default'"
            )
        names = list(request.inputs.keys())
        name = names[convert.pick_input(names)]
        tensor = request.inputs[name]
        if tensor.dtype != types_pb2.DT_STRING:
            raise InvalidInputError(f"input {name!r} must be a DT_STRING tensor")
        values = list(tensor.string_val)
        limit = self.settings.max_texts_per_request
        if len(values) > limit:
            raise InvalidInputError(f"{len(values)} texts in one request; the limit is {limit}")
        dims = [d.size for d in tensor.tensor_shape.dim]
        if dims:
            convert.check_shape(dims, len(values))
        version = str(spec.version.value) if spec.HasField("version") else None
        texts = convert.texts_from_bytes(values)
        loaded = self.registry.get(spec.name, version)
        requested = list(request.output_filter)
        tasks = convert.tasks_for_outputs(loaded.classifier.tasks, requested)
        loaded, preds = await self.registry.infer(
            texts, model=loaded.name, version=loaded.version, tasks=tasks
        )
        response = predict_pb2.PredictResponse()
        response.model_spec.name = loaded.name
        response.model_spec.version.value = int(loaded.version)
        response.model_spec.signature_name = spec.signature_name or "serving_default"
        for out_name, dtype, shape, arr in convert.output_tensors(
            loaded.classifier.tasks, preds, requested
        ):
            t = tensor_pb2.TensorProto()
            for size in shape:
                t.tensor_shape.dim.add(size=size)
            if dtype == "BYTES":
                t.dtype = types_pb2.DT_STRING
                t.string_val.extend(list(arr))
            else:
                t.dtype = types_pb2.DT_FLOAT
                t.float_val.extend(np.asarray(arr, dtype=np.float32).reshape(-1).tolist())
            response.outputs[out_name].CopyFrom(t)
        return response


def _wrap_methods(service: Any, metrics: ServerMetrics) -> None:
    cls = type(service)
    for name in (
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "Predict",
    ):
        if name in cls.__dict__:  # count, time and map errors on this instance only
            wrapped = _instrument(metrics, name)(cls.__dict__[name])
            setattr(service, name, types.MethodType(wrapped, service))


class _AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, token: bytes) -> None:
        self.token = token

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        method = details.method.rsplit("/", 1)[-1]
        if method in _OPEN_METHODS:
            return await continuation(details)
        header = dict(details.invocation_metadata or ()).get("authorization", "")
        scheme, _, given = str(header).partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token):
            return await continuation(details)

        async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")

        return grpc.unary_unary_rpc_method_handler(deny)


def build_grpc_server(
    registry: ModelRegistry, metrics: ServerMetrics, settings: Settings
) -> tuple[grpc.aio.Server, int]:
    """A started-to-be gRPC server bound to ``settings.grpc_port``; returns (server, port)."""
    interceptors = []
    if settings.auth_token is not None:
        interceptors.append(_AuthInterceptor(settings.auth_token.get_secret_value().encode()))
    options = [
        # The transport refuses far larger messages itself; up to 4x the limit they are read
        # and refused with INVALID_ARGUMENT and a message by _check_size.
        ("grpc.max_receive_message_length", 4 * settings.max_body_bytes),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
    ]
    server = grpc.aio.server(interceptors=interceptors, options=options)
    inference = InferenceService(registry, settings)
    prediction = PredictionService(registry, settings)
    _wrap_methods(inference, metrics)
    _wrap_methods(prediction, metrics)
    v2_grpc.add_GRPCInferenceServiceServicer_to_server(inference, server)  # type: ignore[no-untyped-call]
    tfs_grpc.add_PredictionServiceServicer_to_server(prediction, server)  # type: ignore[no-untyped-call]
    address = f"{settings.host}:{settings.grpc_port}"
    if settings.tls_cert_file and settings.tls_key_file:
        creds = grpc.ssl_server_credentials(
            [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())]
        )
        port = server.add_secure_port(address, creds)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind gRPC to {address}")
    return server, port
