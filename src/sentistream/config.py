"""Typed settings, environment first.

Every field can be set with an environment variable ``SENTISTREAM_<FIELD>`` (any case), and
the CLI flags of the same name override it. ``sentistream settings --markdown`` renders this
class as the reference page ``docs/reference/settings.md``, so the docs cannot drift from code.

The environment is read here rather than through pydantic-settings: importing pydantic-settings
costs about 150 ms (it imports asyncio, dotenv and its cloud secret providers), a third of the
CLI's cold start budget, for a prefix lookup. List settings take a comma-separated value or a
JSON array.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Container
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

__all__ = [
    "BUNDLED_MODELS",
    "ENV_PREFIX",
    "GPU_BATCH_SIZE",
    "GPU_MAX_BATCH_TOKENS",
    "TORCH_PRECISIONS",
    "Settings",
    "TorchPrecision",
    "cgroup_cpu_limit",
    "default_threads",
    "settings_markdown",
]

ENV_PREFIX = "SENTISTREAM_"

BUNDLED_MODELS = Path(__file__).resolve().parent / "models"


CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs this container's CFS quota grants (cgroup v2 ``cpu.max``, else v1
    ``cpu/cpu.cfs_quota_us`` over ``cpu.cfs_period_us``); None when unlimited or unreadable.

    A Kubernetes CPU limit is such a quota: the pod still sees every core of the node in its
    affinity mask, and threads beyond the quota only get throttled."""
    try:
        fields = (root / "cpu.max").read_text().split()
        if fields and fields[0] == "max":
            return None
        return int(fields[0]) / int(fields[1])
    except (OSError, ValueError, IndexError, ZeroDivisionError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def default_threads() -> int:
    """Cores this process may use, at least 1: its CPU affinity, capped by a cgroup CPU quota
    rounded up (a 500m limit gives 1, 1500m gives 2)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(1, cores)


def environment_values(fields: Container[str]) -> dict[str, str]:
    """``SENTISTREAM_<FIELD>`` variables (case-insensitive) for the given field names."""
    values: dict[str, str] = {}
    for key, value in os.environ.items():
        if key.upper().startswith(ENV_PREFIX):
            name = key[len(ENV_PREFIX) :].lower()
            if name in fields:
                values[name] = value
    return values


# Batch shape of the torch backend on a GPU when batch_size / max_batch_tokens are 0 (auto): a
# GPU runs a pass of hundreds of rows in about the time of one row, so rows per pass decide
# posts/s (measured on an H200: docs/performance.md, accelerator path).
GPU_BATCH_SIZE = 256
GPU_MAX_BATCH_TOKENS = 32768

# Number formats of the torch backend (the setting, the CLI flag and the backend's check).
TorchPrecision = Literal["fp32", "tf32", "fp16", "bf16"]
TORCH_PRECISIONS: tuple[str, ...] = get_args(TorchPrecision)


class Settings(BaseModel):
    """sentistream settings (env prefix ``SENTISTREAM_``)."""

    model_config = ConfigDict(extra="ignore", validate_default=True, protected_namespaces=())

    def __init__(self, **values: Any) -> None:
        # Explicit values (CLI flags, code) beat the environment; the environment beats defaults.
        super().__init__(**{**environment_values(type(self).model_fields), **values})

    model_repository: Path = Field(
        BUNDLED_MODELS,
        description="Folder of models laid out as <name>/<version>/ (default: the models "
        "bundled with the package).",
    )
    model: str = Field(
        "tweet-sentiment",
        description="Model to use, as NAME or NAME:VERSION (default version: the newest).",
    )
    backend: Literal["onnx", "torch"] = Field(
        "onnx",
        description="Inference backend: 'onnx' (ONNX Runtime, the default serving path) or "
        "'torch' (transformers; needs the [train] extra, loads any Hugging Face model).",
    )
    intra_op_threads: int = Field(
        0,
        ge=0,
        description="ONNX Runtime intra-op threads per model (0: one per available core). Set "
        "it to cores / replicas when several replicas share a node.",
    )
    inter_op_threads: int = Field(1, ge=1, description="ONNX Runtime inter-op threads.")
    lanes: int = Field(
        0,
        ge=0,
        description="Forward passes of one call run at once, each on its own thread with "
        "intra_op_threads threads (default then: cores / lanes). 0: auto: when "
        "intra_op_threads is not set either, one single-threaded lane per core (per worker "
        "process) for `serve`, `classify --input`, `stream` and `demo` (1.2-1.4x on an AMX "
        "Xeon; a single stream worker 1.07-1.25x on a VNNI EPYC), else 1.",
    )
    batch_size: int = Field(
        0,
        ge=0,
        le=1024,
        description="Most texts in one forward pass (a large request is split). 0: auto, 32 "
        "on a CPU and 256 for the torch backend on a GPU (more rows per kernel launch).",
    )
    max_batch_tokens: int = Field(
        0,
        ge=0,
        description="Most tokens (batch width x rows, padding included) in one forward pass; "
        "0: auto, 256 with one intra-op thread (activations stay in the core's cache), 1024 "
        "with more (enough rows per operator to share out), 32768 for the torch backend on a "
        "GPU. Otherwise at least 64.",
    )
    torch_precision: TorchPrecision = Field(
        "fp32",
        description="Torch backend only: weights and activations in fp32, fp32 with TF32 "
        "matmuls, fp16 or bf16 (the last three need a CUDA GPU; no faster than fp32 for the "
        "shipped model on an H200, whose host work dominates; they pay for larger models).",
    )
    max_text_chars: int = Field(
        20_000,
        ge=1,
        description="Longest accepted input text in characters, before cleaning; longer input "
        "is refused with a clear error rather than silently cut.",
    )
    providers: list[str] = Field(
        default_factory=list,
        description="ONNX Runtime execution providers in order of preference (default: CUDA "
        "when available, then CPU).",
    )
    x64_quant_precision: bool = Field(
        False,
        description="On x86 CPUs without VNNI (plain AVX2/AVX-512), run int8 matmuls whose "
        "8-bit weights would saturate the CPU's int16 intermediate sums as uint8 x uint8 "
        "(ONNX Runtime's session.x64quantprecision): the model card's accuracy on every CPU, "
        "~15% slower there (measured: tweet-sentiment v2 macro-recall 0.7480 -> 0.7518 on an "
        "AVX2 EPYC, 0.845x the texts/s). No effect on VNNI/AMX CPUs.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level."
    )
    log_format: Literal["json", "text"] = Field(
        "json", description="Server logs: one JSON object per line, or plain text."
    )

    # -- model server ---------------------------------------------------------------------------
    host: str = Field("0.0.0.0", description="Address the HTTP and gRPC servers bind to.")  # noqa: S104
    http_port: int = Field(
        8000,
        ge=0,
        le=65535,
        description="HTTP port (REST, KServe V2 REST, TF Serving REST, metrics, docs).",
    )
    grpc_port: int = Field(
        8500,
        ge=0,
        le=65535,
        description="gRPC port (KServe V2 and TF Serving PredictionService), 8500 like TF Serving.",
    )
    grpc_enabled: bool = Field(
        True,
        description="Serve gRPC on grpc_port. false: HTTP only, and grpc is not even imported "
        "(~0.07 s less cold start): for platforms that route one port (Cloud Run, Lambda URLs).",
    )
    serve_models: list[str] = Field(
        default_factory=list,
        description="Models to serve, comma-separated NAME or NAME:VERSION (a version pins it); "
        "empty: every model in the repository.",
    )
    version_policy: Literal["latest", "all"] = Field(
        "latest", description="Versions served for models not pinned: the newest, or all."
    )
    model_poll_seconds: float = Field(
        5.0, ge=0, description="How often the repository is checked for new versions (0: never)."
    )
    max_batch_texts: int = Field(
        64, ge=1, description="Most texts the dynamic batcher merges into one classifier call."
    )
    max_delay_ms: float = Field(
        0.0,
        ge=0,
        description="Extra wait for more requests when the batcher is idle (requests that "
        "arrive while a batch runs are always merged into the next one).",
    )
    max_queue_texts: int = Field(
        1024,
        ge=1,
        description="Texts allowed to wait per model; beyond it requests get "
        "429 / RESOURCE_EXHAUSTED at once.",
    )
    max_texts_per_request: int = Field(256, ge=1, description="Most texts in one request.")
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest request body (HTTP) or message (gRPC) in bytes."
    )
    auth_token: SecretStr | None = Field(
        None,
        description="Bearer token required on REST and gRPC when set: server liveness, "
        "server readiness and metrics stay open; per-model state (model ready, metadata) and "
        "inference need it. Give it through the environment or a secret, never a flag.",
    )
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate: serve HTTPS and gRPC over TLS (with tls_key_file)."
    )
    tls_key_file: Path | None = Field(None, description="PEM private key for tls_cert_file.")
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed by CORS (comma-separated); empty: CORS off.",
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Server processes sharing the ports (SO_REUSEPORT). Each "
        "gets intra_op_threads (default: cores / workers) ONNX Runtime threads.",
    )
    drain_seconds: float = Field(
        30.0, ge=0, description="On SIGTERM: longest wait for in-flight requests before exit."
    )
    http_header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Longest time an HTTP client may take to send a request's line and "
        "headers, from connecting (or from the request's first byte on a kept-alive "
        "connection); then 408 and the connection is closed (a connection that sent nothing is "
        "just closed). Headers over 64 KiB get 431.",
    )
    http_body_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="Longest time an HTTP client may take to send a request's body once its "
        "headers are in; then 408 and the connection is closed.",
    )
    http_max_connections: int = Field(
        1000,
        ge=1,
        description="Most HTTP connections one server process serves at once (open dashboard "
        "streams and idle kept-alive connections count); a request on a connection beyond "
        "them gets 503 with Retry-After and the connection is closed.",
    )

    # -- stream worker --------------------------------------------------------------------------
    redis_url: SecretStr | None = Field(
        None,
        description="Redis URL (redis:// or rediss:// for TLS; may carry a password). "
        "Give it through the environment or a secret: it is never logged.",
    )
    input_stream: str = Field("sentistream:posts", description="Redis Stream the workers read.")
    consumer_group: str = Field("sentistream", description="Consumer group of the workers.")
    consumer: str = Field("worker-1", description="This worker's consumer name in the group.")
    output_stream: str = Field("sentistream:results", description="Durable results stream.")
    output_channel: str = Field(
        "sentistream:results", description="Pub/sub channel of live results ('' to disable)."
    )
    dead_letter_stream: str = Field(
        "sentistream:dead",
        description="Where malformed or undeliverable records go, with the reason.",
    )
    input_maxlen: int = Field(
        10_000_000,
        ge=1,
        description="Approximate cap on the input "
        "stream length kept by `ingest` (XADD MAXLEN ~): acknowledged "
        "entries do not pile up forever under `noeviction`.",
    )
    ingest_flush_ms: float = Field(
        200.0,
        gt=0,
        description="`ingest`: longest time a post waits in ingest's buffer before it is written "
        "to the input stream (a full buffer of 500 posts is written at once). A quiet live "
        "source never holds posts back longer; SIGTERM/SIGINT write the buffer before exit.",
    )
    ingest_dedup_seconds: int = Field(
        3600,
        ge=0,
        description="`ingest` from X or Bluesky: a post id pushed within this window is not "
        "pushed again (the posts a resumed Jetstream cursor or an X backfill replays); the "
        "worker's own dedup catches any that get through. 0: off.",
    )
    ingest_checkpoint_key: str = Field(
        "",
        description="`ingest` from X or Bluesky: Redis key of the resume point (Jetstream "
        "cursor, time of the last X post), written in the same transaction as the posts it "
        "covers. Empty: '<input_stream>:checkpoint:<source>'. Give each ingest of the same "
        "source into the same stream its own key.",
    )
    jetstream_rewind_seconds: float = Field(
        5.0,
        ge=0,
        description="Bluesky: seconds taken off the Jetstream cursor when resuming (after a "
        "reconnect or a restart), as Jetstream recommends for gapless playback; the replayed "
        "posts are deduplicated by id.",
    )
    x_backfill: bool = Field(
        False,
        description="X: ask the filtered stream for backfill_minutes (the minutes missed, 1 to "
        "5) after a reconnect or an ingest restart. Needs X Enterprise access; without it, "
        "posts published while disconnected are lost. Gaps over 5 minutes lose the rest.",
    )
    output_maxlen: int = Field(
        1_000_000, ge=1, description="Approximate cap on the results stream length (XADD MAXLEN ~)."
    )
    dedup_ttl_seconds: int = Field(
        86_400,
        ge=1,
        description="Window in which a replayed post id does not create a second result record.",
    )
    stream_batch_size: int = Field(
        256,
        ge=1,
        description="Most posts per micro-batch. A batch fills only when posts are waiting (a "
        "backlog); then the classifier sorts the whole batch by length before cutting forward "
        "passes, so larger batches pad less: 256 gives ~19% more posts/s than 64 end to end, "
        "at up to ~1.5 s per batch on one core. Lower it when a backlog's per-post latency "
        "matters more than throughput.",
    )
    stream_tasks: list[str] = Field(
        default_factory=list,
        description="Tasks the worker puts in result records (comma-separated; empty: every "
        "task of the model; the primary task is always kept). The model computes all of them "
        "in one pass either way.",
    )
    stream_batch_delay_ms: float = Field(
        20.0, ge=0, description="Longest wait to fill a micro-batch."
    )
    claim_idle_ms: int = Field(
        30_000,
        ge=100,
        description="Pending entries idle this long "
        "(a dead consumer's) are claimed by this worker (XAUTOCLAIM).",
    )
    source: Literal["file", "stdin", "redis", "x", "bluesky"] = Field(
        "file", description="Where `stream`/`ingest` read posts from."
    )
    input_path: Path | None = Field(None, description="JSONL/TXT file for the file source.")
    rate: float = Field(0.0, ge=0, description="File source: posts per second (0: no limit).")
    loop: bool = Field(False, description="File source: replay the file forever.")
    model_url: str | None = Field(
        None,
        description="Remote model mode: grpc://host:8500 (or grpcs://) of a model server "
        "instead of loading the model in the worker.",
    )
    worker_http_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Port of the "
        "worker's /metrics, /healthz and /readyz (and "
        "dashboard); none: no HTTP endpoint.",
    )
    max_deliveries: int = Field(
        5,
        ge=1,
        description="Deliveries after which an entry goes to "
        "the dead-letter stream instead of being retried.",
    )

    # -- dashboard, drift, prediction logging ------------------------------------------------------
    dashboard: bool = Field(
        True,
        description="Serve the live dashboard at /dashboard (worker HTTP port and model server). "
        "Like /metrics it is not behind the bearer token (a browser's EventSource cannot send "
        "one): turn it off, or put it behind your ingress's auth, when posts are private.",
    )
    dashboard_stream: str = Field(
        "",
        description="Model server: the Redis Stream of result records its dashboard shows (needs "
        "redis_url); empty: the server's own figures only. The worker always shows its "
        "output_stream.",
    )
    dashboard_history: int = Field(
        200, ge=0, le=5000, description="Newest records a dashboard gets when it (re)loads."
    )
    dashboard_max_clients: int = Field(
        16,
        ge=1,
        description="Most open dashboard event streams per process (one Redis reader serves "
        "them all); one more is answered 503.",
    )
    drift_window: int = Field(
        1000, ge=10, description="Live posts in the drift monitor's sliding window."
    )
    drift_psi_threshold: float = Field(
        0.2,
        gt=0,
        description="PSI above which a feature counts as drifted (0.1: watch, 0.25: major "
        "shift by the usual rule of thumb).",
    )
    drift_min_samples: int = Field(
        200, ge=1, description="Posts in the window before the drift flag can be raised."
    )
    prediction_log: Literal["none", "mlflow"] = Field(
        "none",
        description="Where the worker logs sampled predictions: 'mlflow' (the [logging] extra) "
        "or 'none'.",
    )
    prediction_log_uri: str | None = Field(
        None,
        description="MLflow tracking URI (default: MLflow's own, MLFLOW_TRACKING_URI).",
    )
    prediction_log_experiment: str = Field(
        "sentistream-predictions", description="MLflow experiment of the prediction log."
    )
    prediction_log_sample_rate: float = Field(
        0.1, ge=0, le=1, description="Share of predictions logged."
    )
    prediction_log_batch: int = Field(200, ge=1, description="Rows per prediction-log batch.")
    prediction_log_queue: int = Field(
        10_000,
        ge=1,
        description="Rows waiting for the prediction-log thread; beyond it rows are dropped "
        "(and counted), never waited for.",
    )
    prediction_log_flush_seconds: float = Field(
        10.0, gt=0, description="Longest wait before a partial prediction-log batch is sent."
    )
    prediction_log_raw_text: bool = Field(
        False,
        description="Log the post text itself; by default only its SHA-256 is logged.",
    )

    @field_validator("auth_token", "redis_url", mode="before")
    @classmethod
    def _empty_secret_is_none(cls, value: Any) -> Any:
        # SENTISTREAM_AUTH_TOKEN="" means "no token" everywhere (REST and gRPC alike).
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("serve_models", "cors_origins", "stream_tasks", "providers", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                try:
                    return json.loads(value)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"not a JSON array: {exc}") from exc
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("max_batch_tokens")
    @classmethod
    def _token_budget(cls, value: int) -> int:
        if 0 < value < 64:
            raise ValueError("0 (auto) or at least 64")
        return value

    def resolved_lanes(self) -> int:
        return self.lanes or 1

    def with_lane_per_core(self) -> Settings:
        """These settings for a server, a stream worker or a batch job: one single-threaded
        lane per core (per worker process) when neither ``lanes`` nor ``intra_op_threads`` is
        set. Small forward passes on one thread each beat every core on each pass: fewer thread
        hand-offs per operator (docs/performance.md, tuning log rounds five and six)."""
        if self.lanes or self.intra_op_threads:
            return self
        return self.model_copy(update={"lanes": max(1, default_threads() // self.workers)})

    def resolved_intra_op_threads(self) -> int:
        return self.intra_op_threads or max(
            1, default_threads() // (self.workers * self.resolved_lanes())
        )

    def resolved_batch_size(self, on_gpu: bool = False) -> int:
        """Texts per forward pass: the setting, or 32 (CPU) / 256 (GPU) when 0."""
        if self.batch_size:
            return self.batch_size
        return GPU_BATCH_SIZE if on_gpu else 32

    def resolved_max_batch_tokens(self, on_gpu: bool = False) -> int:
        """The token budget of one forward pass: the setting, or by thread count when 0.

        One thread: 256 tokens (about 8 tweets) per pass keeps every activation of a layer in
        the core's own cache, so the memory-bound operators between the int8 matmuls (GELU,
        residual adds, layer norms, activation quantization) run from cache: 1.15x the
        posts/s of 1024-token passes for stream micro-batches on an AMX Xeon, 1.04-1.07x for
        one large call (docs/performance.md, tuning log round five). Two or more threads:
        1024, since each operator is split across the threads and small passes spend their
        time handing work over (256 tokens on two threads: 0.76x).
        """
        if self.max_batch_tokens:
            return self.max_batch_tokens
        if on_gpu:
            return GPU_MAX_BATCH_TOKENS
        return 256 if self.resolved_intra_op_threads() == 1 else 1024


def settings_markdown() -> str:
    """The settings reference page, generated from :class:`Settings`."""
    lines = [
        "# Settings reference",
        "",
        "Generated by `sentistream settings --markdown` from `sentistream.config.Settings`;",
        "do not edit by hand. Every setting is an environment variable and the CLI flag of",
        "the same name (`--model-repository` for `SENTISTREAM_MODEL_REPOSITORY`) overrides it.",
        "Names are matched in any case; a list takes a comma-separated value or a JSON array.",
        "",
        "| environment variable | type | default | description |",
        "| --- | --- | --- | --- |",
    ]
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        if name == "model_repository":
            default = "<package>/models"
        if name in {"auth_token", "redis_url"}:
            default = "None"
        annotation = getattr(field.annotation, "__name__", str(field.annotation))
        annotation = str(annotation).replace("typing.", "").replace("|", "\\|")
        lines.append(
            f"| `SENTISTREAM_{name.upper()}` | `{annotation}` | `{default!s}` | "
            f"{field.description} |"
        )
    return "\n".join(lines) + "\n"
