"""What ``sentistream stream``, ``ingest`` and ``subscribe`` do (the CLI only parses flags)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sentistream.config import Settings
from sentistream.errors import InvalidInputError
from sentistream.stream.base import Resumable, Source
from sentistream.stream.redis_probe import probe, redis_errors

__all__ = ["ingest", "make_source", "run_stream", "subscribe"]

log = logging.getLogger("sentistream.stream")


def _redis_url(settings: Settings) -> str | None:
    return settings.redis_url.get_secret_value() if settings.redis_url else None


def make_source(
    kind: str,
    settings: Settings,
    *,
    input_path: Path | None = None,
    rate: float = 0.0,
    loop: bool = False,
    client: Any = None,
) -> Source:
    """Build the source named ``kind`` (file, stdin, redis, x, bluesky)."""
    if kind in {"file", "stdin"}:
        from sentistream.stream.file_source import FileSource

        if kind == "file" and input_path is None:
            raise InvalidInputError("--source file needs --input FILE")
        return FileSource(input_path if kind == "file" else None, rate=rate, loop=loop)
    if kind == "redis":
        from sentistream.stream.redis_io import RedisStreamSource

        if client is None:
            raise InvalidInputError("--source redis needs --redis-url")
        return RedisStreamSource(
            client,
            settings.input_stream,
            settings.consumer_group,
            settings.consumer,
            dead_letter_stream=settings.dead_letter_stream,
            batch=settings.stream_batch_size,
            claim_idle_ms=settings.claim_idle_ms,
            max_deliveries=settings.max_deliveries,
        )
    if kind == "x":
        from sentistream.stream.x_source import XFilteredStreamSource

        token = os.environ.get("SENTISTREAM_X_BEARER_TOKEN") or os.environ.get("X_BEARER_TOKEN")
        if not token:
            raise InvalidInputError(
                "--source x needs the bearer token in SENTISTREAM_X_BEARER_TOKEN"
            )
        rules = [r for r in os.environ.get("SENTISTREAM_X_RULES", "").split(";") if r.strip()]
        return XFilteredStreamSource(
            token,
            base_url=os.environ.get("SENTISTREAM_X_BASE_URL", "https://api.x.com"),
            rules=rules or None,
            backfill=settings.x_backfill,
        )
    if kind == "bluesky":
        from sentistream.stream.bluesky_source import JetstreamSource

        url = os.environ.get(
            "SENTISTREAM_JETSTREAM_URL", "wss://jetstream2.us-east.bsky.network/subscribe"
        )
        langs = {x for x in os.environ.get("SENTISTREAM_LANGUAGES", "").split(",") if x}
        return JetstreamSource(
            url=url,
            languages=langs or None,
            rewind_us=round(settings.jetstream_rewind_seconds * 1_000_000),
        )
    raise InvalidInputError(f"unknown source {kind!r}")


async def run_stream(
    settings: Settings,
    *,
    source_kind: str,
    input_path: Path | None,
    output: Path | None,
    rate: float,
    loop: bool,
    pretty: bool,
    also_stdout: bool = False,
) -> dict[str, Any]:
    """Run the stream worker until its source ends or SIGTERM/SIGINT; returns its summary.
    With a Redis URL, Redis is checked first: unreachable, or refusing the login, the command
    fails at once with one line naming host:port (exit 2)."""
    from sentistream.runtime import load_classifier
    from sentistream.stream.redis_io import RedisSink, connect
    from sentistream.stream.sinks import JsonlSink
    from sentistream.stream.worker import StreamWorker

    url = _redis_url(settings)
    if url is not None:
        await probe(url)
    client = connect(url) if url else None
    classifier: Any
    if settings.model_url:
        from sentistream.repository import parse_model_ref
        from sentistream.runtime.remote import RemoteClassifier

        token = settings.auth_token.get_secret_value() if settings.auth_token else None
        classifier = await asyncio.to_thread(
            RemoteClassifier.connect,
            settings.model_url,
            parse_model_ref(settings.model)[0],
            auth_token=token,
        )
    else:
        classifier = await asyncio.to_thread(load_classifier, settings)
    source = make_source(
        source_kind, settings, input_path=input_path, rate=rate, loop=loop, client=client
    )
    redis_sink = (
        RedisSink(
            client,
            settings.output_stream,
            settings.output_channel,
            maxlen=settings.output_maxlen,
            dedup_ttl=settings.dedup_ttl_seconds,
        )
        if client is not None
        else None
    )
    sinks = []
    if output is not None:
        sinks.append(JsonlSink(output))
    elif client is None or also_stdout:
        sinks.append(JsonlSink(None, pretty=pretty))
    from sentistream.stream.monitor import WorkerMetrics

    metrics = WorkerMetrics()
    predlog = _prediction_logger(settings, metrics, classifier)
    worker = StreamWorker(
        source,
        classifier,
        redis_sink=redis_sink,
        sinks=sinks,
        metrics=metrics,
        dead_letter_stream=settings.dead_letter_stream if client else None,
        batch_size=settings.stream_batch_size,
        batch_delay_ms=settings.stream_batch_delay_ms,
        drift=_drift_monitor(settings, classifier),
        prediction_logger=predlog,
        tasks=settings.stream_tasks or None,
    )
    loop_ = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop_.add_signal_handler(sig, lambda: asyncio.ensure_future(worker.stop()))
    feed = None
    if url and settings.dashboard and settings.worker_http_port is not None:
        from sentistream.dashboard import RedisFeed

        feed = RedisFeed(connect(url), settings.output_stream)
    http = (
        _start_http(worker, metrics, settings, feed)
        if settings.worker_http_port is not None
        else None
    )
    try:
        if url is None:
            return await worker.run()
        async with redis_errors(url):
            return await worker.run()
    finally:
        if http is not None:
            http[0].should_exit = True
            await http[1]
        if feed is not None:
            await feed.close()
        if predlog is not None and not await asyncio.to_thread(predlog.close, 5.0):
            log.warning("prediction log: backend did not finish in 5 s; unsent rows dropped")
        for sink in sinks:
            await sink.close()
        if client is not None:
            await client.aclose()


def _drift_monitor(settings: Settings, classifier: Any) -> Any:
    """A drift monitor over the reference profile of the model in use, if its manifest has one
    (a local ONNX model, or a remote one whose name and version are in the local repository)."""
    from sentistream.drift import DriftMonitor
    from sentistream.manifest import load_manifest
    from sentistream.repository import ModelRepository, parse_model_ref

    if settings.backend != "onnx":
        return None
    try:
        name, _ = parse_model_ref(settings.model)
        ref = f"{name}:{classifier.version}" if classifier.version else settings.model
        manifest = load_manifest(
            ModelRepository(settings.model_repository).resolve(ref), verify_hashes=False
        )
    except Exception as exc:  # no local manifest for this model: no drift monitoring
        log.info("drift monitoring off: %s", getattr(exc, "message", type(exc).__name__))
        return None
    profile = manifest.reference_profile
    if profile is None or manifest.version != classifier.version:
        log.info("drift monitoring off: %s has no reference profile", manifest.name)
        return None
    return DriftMonitor(
        profile.model_dump(exclude_none=True),
        window=settings.drift_window,
        threshold=settings.drift_psi_threshold,
        min_samples=settings.drift_min_samples,
    )


def _prediction_logger(settings: Settings, metrics: Any, classifier: Any) -> Any:
    if settings.prediction_log == "none":
        return None
    import importlib.util

    from sentistream.predlog import MlflowBackend, PredictionLogger

    if importlib.util.find_spec("mlflow") is None:
        raise InvalidInputError(
            "prediction_log=mlflow needs MLflow: pip install 'sentistream[logging]'"
        )
    run_name = f"{classifier.name}-{classifier.version}-{settings.consumer}"
    return PredictionLogger(
        lambda: MlflowBackend(
            settings.prediction_log_uri, settings.prediction_log_experiment, run_name
        ),
        sample_rate=settings.prediction_log_sample_rate,
        batch_size=settings.prediction_log_batch,
        queue_size=settings.prediction_log_queue,
        flush_seconds=settings.prediction_log_flush_seconds,
        raw_text=settings.prediction_log_raw_text,
        on_sent=metrics.prediction_log_sent.inc,
        on_dropped=metrics.prediction_log_dropped.inc,
        on_error=metrics.prediction_log_errors.inc,
    )


def _start_http(worker: Any, metrics: Any, settings: Settings, feed: Any = None) -> tuple[Any, Any]:
    import uvicorn

    from sentistream.server.app import QuietServer
    from sentistream.stream.monitor import worker_app

    config = uvicorn.Config(
        worker_app(worker, metrics, settings, feed),
        host=settings.host,
        port=settings.worker_http_port or 0,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=3,  # dashboard streams end by themselves; never hang a drain
    )
    server = QuietServer(config)
    return server, asyncio.ensure_future(server.serve())


async def ingest(
    settings: Settings, *, source_kind: str, input_path: Path | None, rate: float, loop: bool
) -> dict[str, Any]:
    """Push a source into the input stream until it ends (a file) or SIGTERM/SIGINT; returns
    the summary (see :mod:`sentistream.stream.ingest`)."""
    from sentistream.stream.ingest import Ingest, install_signal_handlers
    from sentistream.stream.redis_io import connect

    url = _redis_url(settings)
    if not url:
        raise InvalidInputError("ingest needs --redis-url")
    await probe(url)
    source = make_source(source_kind, settings, input_path=input_path, rate=rate, loop=loop)
    live = isinstance(source, Resumable)
    client = connect(url)
    try:
        async with redis_errors(url):
            job = Ingest(
                client,
                source,
                stream=settings.input_stream,
                dead_letter_stream=settings.dead_letter_stream,
                maxlen=settings.input_maxlen,
                flush_seconds=settings.ingest_flush_ms / 1000,
                checkpoint_key=settings.ingest_checkpoint_key
                or f"{settings.input_stream}:checkpoint:{source.name}",
                dedup_seconds=settings.ingest_dedup_seconds if live else 0,
                dedup_prefix=f"{settings.input_stream}:ingested:",
            )
            await job.resume()
            install_signal_handlers(job)
            return await job.run()
    finally:
        await client.aclose()


async def subscribe(
    settings: Settings, *, replay_from: str | None, as_json: bool, limit: int | None
) -> None:
    """Print results: first the durable stream from ``replay_from`` (an id, or ``0``), then live
    pub/sub messages."""
    from sentistream.stream.redis_io import connect

    url = _redis_url(settings)
    if not url:
        raise InvalidInputError("subscribe needs --redis-url")
    await probe(url)
    client = connect(url)
    shown = 0

    def show(data: bytes | str) -> bool:
        nonlocal shown
        rec = json.loads(data)
        if as_json:
            print(json.dumps(rec, ensure_ascii=False), flush=True)
        else:
            print(
                f"{rec['label']:<9} {rec['score']:.3f} {rec['id']}: {rec['text'][:90]}", flush=True
            )
        shown += 1
        return limit is not None and shown >= limit

    try:
        async with redis_errors(url):
            await _follow(client, settings, replay_from, show)
    finally:
        await client.aclose()
        sys.stdout.flush()


async def _follow(
    client: Any, settings: Settings, replay_from: str | None, show: Callable[[Any], bool]
) -> None:
    pubsub = client.pubsub()
    await pubsub.subscribe(settings.output_channel)
    if replay_from is not None:
        entries: Any = await client.xrange(settings.output_stream, min=replay_from)
        for _, fields in entries:
            if show(fields[b"data"]):
                return
    async for message in pubsub.listen():
        if message["type"] == "message" and show(message["data"]):
            return
