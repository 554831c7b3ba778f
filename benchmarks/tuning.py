"""Tuning log of the hot path: every experiment measured A B A B (interleaved rounds, order
flipped every other round) in one process on the same texts, kept only with a measured gain.

Each experiment compares the shipped default ("default") with candidates on a workload:
``bucketed`` (a file's worth of posts in one call: CLI, stream worker) or ``batch_1`` (one post
per call: a server under light load). Reported per variant: texts/s (median, spread), the
paired per-round ratio to the default, whether its predictions equal the default's (labels
identical, largest probability difference) and the verdict of the rule "faster in at least
3 of 4 rounds and by >= 3% at the median". Experiments:

- threads: ONNX Runtime intra-op threads 1 vs 2 (both workloads);
- spinning: intra-op threads spin-wait between ops (ORT's default) vs sleep (ours);
- execution mode: sequential vs parallel (inter-op 2);
- graph optimisation level: all (ours) vs extended vs basic (attention fusion is done at
  export; this is ORT's own rewriting at load);
- batch shapes: batch_size x max_batch_tokens;
- token budget per forward pass (``max_batch_tokens``), one thread (the stream worker's
  micro-batches of ``stream_batch_size`` posts, and one call) and ``--threads``: a change
  of batch shape moves predictions through the per-tensor activation scale (the batch-mate
  effect, docs/performance.md), so these are judged on validation macro-recall instead of
  identical labels (``--data`` must hold ``val_labels.txt``);
- lanes: the forward passes of one call on ``--threads`` threads at once, one intra-op thread
  each (``classify --input``'s default), vs one pass at a time on all threads;
- encode: ``Tokenizer.encode_batch_fast`` (the default) vs ``encode_batch`` (with offsets);
- padding: the row loop vs one vectorised copy into the padded arrays.

    python benchmarks/tuning.py --data ../shared/data/tweeteval/sentiment [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import DATA, background_load, interleaved, ratio_spread, spread, val_texts

from sentistream.config import Settings
from sentistream.runtime import Classifier, load_onnx_classifier
from sentistream.runtime.base import IdArray
from sentistream.runtime.onnx import OnnxBackend


class OffsetsEncodeClassifier(Classifier):
    """The former default: ``encode_batch``, which also computes character offsets (the
    classifier now calls ``encode_batch_fast``: the same ids without them)."""

    def encode(self, cleaned: Sequence[str]) -> list[list[int]]:
        if self.truncation != "head":
            return super().encode(cleaned)
        return [enc.ids for enc in self.tokenizer.encode_batch(list(cleaned))]


class VectorPadClassifier(Classifier):
    """Candidate: build the padded batch with one vectorised copy instead of a row loop."""

    def _pad(self, ids: list[list[int]], idx: list[int]) -> tuple[IdArray, IdArray]:
        lengths = np.fromiter((len(ids[i]) for i in idx), dtype=np.int64, count=len(idx))
        width = int(lengths.max())
        mask = (np.arange(width) < lengths[:, None]).astype(np.int64)
        input_ids = np.full((len(idx), width), self.pad_id, dtype=np.int64)
        flat = np.fromiter(
            itertools.chain.from_iterable(ids[i] for i in idx),
            dtype=np.int64,
            count=int(lengths.sum()),
        )
        input_ids[mask.astype(bool)] = flat
        return input_ids, mask


def make_classifier(
    folder: Path,
    *,
    threads: int = 2,
    batch_size: int = 32,
    max_batch_tokens: int = 0,
    lanes: int = 0,
    cls: type[Classifier] = Classifier,
    **backend: Any,
) -> Classifier:
    """A classifier over ``folder`` with the serving defaults except what is given
    (``max_batch_tokens`` 0: the default budget for ``threads``)."""
    settings = Settings(
        intra_op_threads=threads,
        batch_size=batch_size,
        max_batch_tokens=max_batch_tokens,
        lanes=lanes,
    )
    base = load_onnx_classifier(folder, settings)
    if backend:
        base.backend = OnnxBackend(
            folder / "model.onnx",
            dict(base.backend.task_outputs),  # type: ignore[attr-defined]
            intra_op_threads=threads,
            inter_op_threads=int(backend.pop("inter_op_threads", 1)),
            **backend,
        )
    if cls is not Classifier:
        base.__class__ = cls
    return base


def workload(
    clf: Classifier, cleaned: list[str], kind: str, cpu_rates: list[float]
) -> Callable[[], float]:
    """One timed call of the workload: returns texts per wall second and appends texts per
    CPU second of this process to ``cpu_rates`` (the figure that holds when other processes
    share the cores, for single-threaded variants; spinning threads inflate it)."""
    if kind not in ("bucketed", "batch_1", "stream"):
        raise ValueError(kind)

    size = Settings().stream_batch_size

    def run() -> float:
        c0 = time.process_time()
        t0 = time.perf_counter()
        if kind == "bucketed":
            clf.classify_clean(cleaned)
        elif kind == "stream":  # the stream worker's micro-batches, in arrival order
            for start in range(0, len(cleaned), size):
                clf.classify_clean(cleaned[start : start + size])
        else:
            for text in cleaned:
                clf.classify_clean([text])
        wall = time.perf_counter() - t0
        cpu_rates.append(len(cleaned) / max(time.process_time() - c0, 1e-9))
        return len(cleaned) / wall

    return run


def same_predictions(a: Classifier, b: Classifier, cleaned: list[str]) -> dict[str, Any]:
    pa, _ = a.probabilities(cleaned)
    pb, _ = b.probabilities(cleaned)
    changed = sum(int((pa[t].argmax(axis=1) != pb[t].argmax(axis=1)).sum()) for t in a.tasks)
    diff = max(float(np.abs(pa[t] - pb[t]).max()) for t in a.tasks)
    return {
        "identical_labels": changed == 0,
        "labels_changed": changed,
        "texts": len(cleaned),
        "max_abs_prob_diff": round(diff, 6),
    }


def val_labels(data: Path, count: int) -> list[int]:
    """The validation labels of ``data`` (empty when it has none)."""
    path = data / "val_labels.txt"
    if not path.is_file():
        return []
    labels = [int(x) for x in path.read_text(encoding="utf-8").split() if x.strip()]
    return labels if len(labels) == count else []


def macro_recall(clf: Classifier, cleaned: list[str], labels: list[int]) -> float:
    """Macro-averaged recall of the primary task over the validation set, bucketed."""
    probs, _ = clf.probabilities(cleaned)
    pred = probs[clf.primary_task].argmax(axis=1)
    truth = np.asarray(labels)
    return float(np.mean([(pred[truth == c] == c).mean() for c in np.unique(truth)]))


def accuracy_verdict(candidate: float, default: float) -> str:
    """Batch shapes move predictions (the batch-mate effect); judge them on the metric."""
    delta = candidate - default
    return f"validation macro-recall {candidate:.4f} vs {default:.4f} ({delta:+.4f}): " + (
        "same within 0.005" if abs(delta) <= 0.005 else "differs by more than 0.005"
    )


def verdict(ratios: list[float]) -> str:
    faster = sum(r > 1.0 for r in ratios)
    med = float(np.median(ratios))
    if faster >= 0.75 * len(ratios) and med >= 1.03:
        return "faster"
    slower = sum(r < 1.0 for r in ratios)
    if slower >= 0.75 * len(ratios) and med <= 0.97:
        return "slower"
    return "no measurable difference"


def experiments(folder: Path, threads: int) -> list[dict[str, Any]]:
    """(name, workload, {variant: factory}); 'default' is what ships."""
    t = threads
    d: Callable[[], Classifier] = lambda: make_classifier(folder, threads=t)  # noqa: E731
    budget = Settings(intra_op_threads=t).resolved_max_batch_tokens()  # the shipped default
    one_thread_budgets: dict[str, Callable[[], Classifier]] = {
        f"default (1 thread: {Settings(intra_op_threads=1).resolved_max_batch_tokens()})": (
            lambda: make_classifier(folder, threads=1)
        ),
        "1024": lambda: make_classifier(folder, threads=1, max_batch_tokens=1024),
        "512": lambda: make_classifier(folder, threads=1, max_batch_tokens=512),
    }
    out: list[dict[str, Any]] = [
        {
            "name": "intra-op threads (throughput)",
            "short": "threads",
            "workload": "bucketed",
            "judge": "accuracy",  # the token budget follows the thread count
            "variants": {
                f"default ({t} threads)": d,
                "1 thread": lambda: make_classifier(folder, threads=1),
            },
        },
        {
            "name": "intra-op threads (single-post latency)",
            "short": "threads, 1 post",
            "workload": "batch_1",
            "judge": "accuracy",  # the token budget follows the thread count
            "variants": {
                f"default ({t} threads)": d,
                "1 thread": lambda: make_classifier(folder, threads=1),
            },
        },
        {
            "name": "thread spinning (single-post latency)",
            "short": "spinning, 1 post",
            "workload": "batch_1",
            "variants": {
                "default (no spinning)": d,
                "spinning": lambda: make_classifier(folder, threads=t, allow_spinning=True),
            },
        },
        {
            "name": "execution mode",
            "short": "execution mode",
            "workload": "bucketed",
            "variants": {
                "default (sequential)": d,
                "parallel, 2 inter-op threads": lambda: make_classifier(
                    folder, threads=t, parallel_execution=True, inter_op_threads=2
                ),
            },
        },
        {
            "name": "graph optimisation level",
            "short": "graph opt level",
            "workload": "bucketed",
            "variants": {
                "default (all)": d,
                "extended": lambda: make_classifier(
                    folder, threads=t, graph_optimization="extended"
                ),
                "basic": lambda: make_classifier(folder, threads=t, graph_optimization="basic"),
            },
        },
        {
            "name": "batch shape (batch_size x max_batch_tokens)",
            "short": "batch shape",
            "workload": "bucketed",
            "judge": "accuracy",
            "variants": {
                f"default (32 x {budget})": d,
                "16 x 512": lambda: make_classifier(
                    folder, threads=t, batch_size=16, max_batch_tokens=512
                ),
                "64 x 2048": lambda: make_classifier(
                    folder, threads=t, batch_size=64, max_batch_tokens=2048
                ),
                "128 x 4096": lambda: make_classifier(
                    folder, threads=t, batch_size=128, max_batch_tokens=4096
                ),
            },
        },
        {
            "name": "token budget per pass, one thread, stream micro-batches (max_batch_tokens)",
            "short": "token budget, 1 thread, stream",
            "workload": "stream",
            "judge": "accuracy",
            "variants": one_thread_budgets,
        },
        {
            "name": "token budget per pass, one thread, one call (max_batch_tokens)",
            "short": "token budget, 1 thread",
            "workload": "bucketed",
            "judge": "accuracy",
            "variants": one_thread_budgets,
        },
        {
            "name": f"token budget per pass, {t} threads (max_batch_tokens)",
            "short": f"token budget, {t} threads",
            "workload": "bucketed",
            "judge": "accuracy",
            "variants": {
                f"default ({t} threads: {budget})": d,
                "256": lambda: make_classifier(folder, threads=t, max_batch_tokens=256),
                "512": lambda: make_classifier(folder, threads=t, max_batch_tokens=512),
            },
        },
        {
            "name": f"lanes: {t} forward passes at once x 1 thread vs 1 x {t} threads",
            "short": "lanes",
            "workload": "bucketed",
            "judge": "accuracy",
            "variants": {
                f"default (1 lane x {t} threads)": d,
                f"{t} lanes x 1 thread": lambda: make_classifier(folder, threads=1, lanes=t),
            },
        },
        {
            "name": "tokenizer call (encode_batch_fast vs encode_batch)",
            "short": "tokenizer call",
            "workload": "bucketed",
            "variants": {
                "default (encode_batch_fast)": d,
                "encode_batch (with offsets)": lambda: make_classifier(
                    folder, threads=t, cls=OffsetsEncodeClassifier
                ),
            },
        },
        {
            "name": "padding copy (row loop vs vectorised)",
            "short": "padding copy",
            "workload": "bucketed",
            "variants": {
                "default (row loop)": d,
                "vectorised": lambda: make_classifier(folder, threads=t, cls=VectorPadClassifier),
            },
        },
    ]
    return out


def load_experiment(folder: Path, threads: int, rounds: int) -> dict[str, Any]:
    """Cold-start candidate: ship a graph ONNX Runtime has already optimised (saved at the
    portable 'extended' level) and load it with optimisation off, vs loading model.onnx with
    all optimisations (what ships). Rate = session loads per second."""
    import tempfile

    import onnxruntime as ort

    def options(level: str) -> Any:
        o = ort.SessionOptions()
        o.intra_op_num_threads = threads
        o.log_severity_level = 3
        o.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        return o

    src = folder / "model.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "preoptimised.onnx"
        saver = options("ORT_ENABLE_EXTENDED")
        saver.optimized_model_filepath = str(pre)
        ort.InferenceSession(str(src), saver, providers=["CPUExecutionProvider"])

        def load(path: Path, level: str) -> Callable[[], float]:
            def run() -> float:
                t0 = time.perf_counter()
                ort.InferenceSession(str(path), options(level), providers=["CPUExecutionProvider"])
                return 1.0 / (time.perf_counter() - t0)

            return run

        rates = interleaved(
            {
                "default (model.onnx, all optimisations at load)": load(src, "ORT_ENABLE_ALL"),
                "pre-optimised file, no optimisation at load": load(pre, "ORT_DISABLE_ALL"),
            },
            rounds,
        )
    names = list(rates)
    ratios = [a / b for a, b in zip(rates[names[1]], rates[names[0]], strict=True)]
    return {
        "name": "model load (pre-optimised graph file)",
        "short": "model load",
        "workload": "session load",
        "texts": 0,
        "rounds": rounds,
        "default": names[0],
        "variants": {
            names[0]: {"loads_per_s": spread(rates[names[0]])},
            names[1]: {
                "loads_per_s": spread(rates[names[1]]),
                "ratio_vs_default": ratio_spread(rates[names[1]], rates[names[0]]),
                "verdict": verdict(ratios),
            },
        },
    }


def session_config_experiment(
    folder: Path,
    cleaned: list[str],
    threads: int,
    rounds: int,
    name: str,
    short: str,
    entries: dict[str, str],
) -> dict[str, Any]:
    """Forward passes only (the same pre-padded bucketed batches) with ONNX Runtime session
    config ``entries`` vs the serving options: wall and CPU rates, identical outputs or not."""
    import onnxruntime as ort
    from roofline import session_options

    reference = make_classifier(folder, threads=threads)
    ids = reference.encode(cleaned)
    batches = [reference._pad(ids, idx) for idx in reference.plan_batches([len(x) for x in ids])]

    def session(extra: dict[str, str]) -> Any:
        options = session_options(threads)
        for key, value in extra.items():
            options.add_session_config_entry(key, value)
        return ort.InferenceSession(
            str(folder / "model.onnx"),
            options,
            providers=reference.backend.providers,  # type: ignore[attr-defined]
        )

    sessions = {"default (serving options)": session({}), ", ".join(entries): session(entries)}
    cpu: dict[str, list[float]] = {k: [] for k in sessions}
    outputs: dict[str, Any] = {}

    def runner(key: str) -> Callable[[], float]:
        def run() -> float:
            c0, t0 = time.process_time(), time.perf_counter()
            outs = [
                sessions[key].run(None, {"input_ids": a, "attention_mask": m})[0]
                for a, m in batches
            ]
            wall = time.perf_counter() - t0
            cpu[key].append(len(cleaned) / max(time.process_time() - c0, 1e-9))
            outputs[key] = np.concatenate(outs)
            return len(cleaned) / wall

        return run

    rates = interleaved({k: runner(k) for k in sessions}, rounds)
    cpu = {k: v[-rounds:] for k, v in cpu.items()}
    default, candidate = list(sessions)
    ratios = [a / b for a, b in zip(rates[candidate], rates[default], strict=True)]
    diff = float(np.abs(outputs[candidate] - outputs[default]).max())
    same = bool(np.array_equal(outputs[candidate].argmax(axis=1), outputs[default].argmax(axis=1)))
    return {
        "name": name,
        "short": short,
        "workload": "forward only",
        "texts": len(cleaned),
        "rounds": rounds,
        "default": default,
        "variants": {
            default: {
                "texts_per_s": spread(rates[default]),
                "texts_per_cpu_s": spread(cpu[default]),
            },
            candidate: {
                "texts_per_s": spread(rates[candidate]),
                "texts_per_cpu_s": spread(cpu[candidate]),
                "ratio_vs_default": ratio_spread(rates[candidate], rates[default]),
                "cpu_ratio_vs_default": ratio_spread(cpu[candidate], cpu[default]),
                "verdict": verdict(ratios) + ("" if same else "; predictions change: rejected"),
                "predictions_vs_default": {
                    "identical_labels": same,
                    "labels_changed": int(
                        (outputs[candidate].argmax(axis=1) != outputs[default].argmax(axis=1)).sum()
                    ),
                    "texts": len(cleaned),
                    "max_abs_prob_diff": round(diff, 6),  # logits here, not probabilities
                },
            },
        },
    }


def run_tuning(
    model: str,
    data: Path,
    *,
    threads: int = 2,
    texts_limit: int = 1000,
    batch1_texts: int = 150,
    rounds: int = 4,
    only: list[str] | None = None,
) -> dict[str, Any]:
    from sentistream.repository import ModelRepository

    folder = ModelRepository(Settings().model_repository).resolve(model)
    reference = make_classifier(folder, threads=threads)
    validation = [reference.prepare(t) for t in val_texts(data)]
    cleaned = validation[:texts_limit]
    labels = val_labels(data, len(validation))
    results: list[dict[str, Any]] = []
    for exp in experiments(folder, threads):
        if only and not any(o in exp["name"] for o in only):
            continue
        texts = cleaned[:batch1_texts] if exp["workload"] == "batch_1" else cleaned
        classifiers = {name: make() for name, make in exp["variants"].items()}
        cpu: dict[str, list[float]] = {name: [] for name in classifiers}
        rates = interleaved(
            {
                name: workload(c, texts, exp["workload"], cpu[name])
                for name, c in classifiers.items()
            },
            rounds,
        )
        cpu = {name: values[-rounds:] for name, values in cpu.items()}  # drop the warm-up
        default = next(iter(classifiers))
        variants: dict[str, Any] = {}
        for name, clf in classifiers.items():
            entry: dict[str, Any] = {
                "texts_per_s": spread(rates[name]),
                "texts_per_cpu_s": spread(cpu[name]),
            }
            if name != default:
                ratios = [a / b for a, b in zip(rates[name], rates[default], strict=True)]
                entry["ratio_vs_default"] = ratio_spread(rates[name], rates[default])
                entry["cpu_ratio_vs_default"] = ratio_spread(cpu[name], cpu[default])
                entry["verdict"] = verdict(ratios)
                entry["predictions_vs_default"] = same_predictions(
                    clf, classifiers[default], cleaned[:500]
                )
                if exp.get("judge") == "accuracy" and labels:
                    entry["verdict"] += "; " + accuracy_verdict(
                        macro_recall(clf, validation, labels),
                        macro_recall(classifiers[default], validation, labels),
                    )
                elif not entry["predictions_vs_default"]["identical_labels"]:
                    entry["verdict"] += "; predictions change: rejected"
            variants[name] = entry
        results.append(
            {
                "name": exp["name"],
                "short": exp["short"],
                "workload": exp["workload"],
                "texts": len(texts),
                "rounds": rounds,
                "default": default,
                "variants": variants,
            }
        )
        print(json.dumps(results[-1]), flush=True)
    if not only or any(o in "denormals" for o in only):
        results.append(
            session_config_experiment(
                folder,
                cleaned,
                threads,
                rounds,
                "denormals flushed to zero (session.set_denormal_as_zero)",
                "denormals to zero",
                {"session.set_denormal_as_zero": "1"},
            )
        )
        print(json.dumps(results[-1]), flush=True)
    if not only or any(o in "model load" for o in only):
        results.append(load_experiment(folder, threads, max(rounds, 5)))
        print(json.dumps(results[-1]), flush=True)
    return {
        "model": model,
        "threads": threads,
        "background": background_load(),
        "rule": "kept only when faster in >= 3/4 of the paired rounds and >= 3% at the median, "
        "with the same predictions (batch shapes: the same validation macro-recall within "
        "0.005, since they move predictions by construction)",
        "experiments": results,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DATA / "tweeteval" / "sentiment")
    parser.add_argument("--model", default="tweet-sentiment")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--only", nargs="*", help="run experiments whose name contains these")
    args = parser.parse_args()
    out = run_tuning(
        args.model,
        args.data,
        threads=args.threads,
        texts_limit=args.texts,
        rounds=args.rounds,
        only=args.only,
    )
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
