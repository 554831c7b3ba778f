"""The classifier core: transport-neutral, used by the CLI, the servers and the stream worker.

A :class:`Backend` only sees batches of token ids and returns logits for every task head in
one forward pass. :class:`Classifier` does the rest: validation, cleaning, tokenization, sorting
a request by length into small padded batches (bounded by ``batch_size`` and a token budget),
softmax with each task's calibration temperature, and restoring the caller's order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from sentistream.errors import InvalidInputError
from sentistream.text import clean, head_tail_ids

__all__ = [
    "Backend",
    "Classifier",
    "Prediction",
    "TaskPrediction",
    "configure_tokenizer",
    "prepare_text",
    "select_tasks",
]

IdArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


class Backend(Protocol):
    """What a runtime must provide: one forward pass over a padded batch."""

    name: str

    def forward(self, input_ids: IdArray, attention_mask: IdArray) -> dict[str, FloatArray]:
        """Logits ``[batch, n_labels]`` for every task, keyed by task name."""
        ...


@dataclass(frozen=True)
class TaskPrediction:
    label: str
    score: float
    scores: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "score": self.score, "scores": self.scores}


@dataclass(frozen=True)
class Prediction:
    """All requested tasks for one text; ``primary`` names the task shown as ``label``."""

    primary: str
    tasks: dict[str, TaskPrediction]
    tokens: int = 0

    @property
    def label(self) -> str:
        return self.tasks[self.primary].label

    @property
    def score(self) -> float:
        return self.tasks[self.primary].score

    def to_dict(self) -> dict[str, Any]:
        """``label``/``score``/``scores`` of the primary task, the others under ``tasks``."""
        out: dict[str, Any] = {}
        if self.primary in self.tasks:
            out.update(self.tasks[self.primary].to_dict())
        out["tasks"] = {
            name: {"label": p.label, "score": p.score, "scores": p.scores}
            for name, p in self.tasks.items()
            if name != self.primary
        }
        return out


def prepare_text(text: object, max_text_chars: int, max_chars: int) -> str:
    """The one validation + cleaning rule of every classifier (local or remote)."""
    if not isinstance(text, str):
        raise InvalidInputError(f"text must be a string, got {type(text).__name__}")
    if len(text) > max_text_chars:
        raise InvalidInputError(f"text has {len(text)} characters; the limit is {max_text_chars}")
    return clean(text, max_chars)


def select_tasks(available: dict[str, list[str]], tasks: Sequence[str] | None) -> list[str]:
    """``tasks`` checked against the model's (all of them when none are asked for)."""
    if not tasks:
        return list(available)
    unknown = [t for t in tasks if t not in available]
    if unknown:
        raise InvalidInputError(
            f"unknown task(s) {', '.join(map(repr, unknown))}; this model has "
            f"{', '.join(available)}"
        )
    return list(dict.fromkeys(tasks))


def softmax(logits: FloatArray, temperature: float = 1.0) -> FloatArray:
    z = logits.astype(np.float32) / np.float32(temperature)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: FloatArray = e / e.sum(axis=-1, keepdims=True)
    return out


def configure_tokenizer(tokenizer: Tokenizer, truncation: str, max_length: int) -> None:
    """No padding; truncation to ``max_length`` tokens for ``"head"``, none for ``"head_tail"``
    (the classifier cuts those itself). Changes the tokenizer only where it differs: a tokenizer
    shared by several models (:func:`sentistream.runtime.shared_tokenizer`) may be encoding for
    one of them on another thread while the next model loads, and is then left as it is."""
    if tokenizer.padding is not None:
        tokenizer.no_padding()
    if truncation == "head":
        wanted = {
            "max_length": max_length,
            "stride": 0,
            "strategy": "longest_first",
            "direction": "right",
        }
        if tokenizer.truncation != wanted:
            tokenizer.enable_truncation(max_length=max_length)
    elif tokenizer.truncation is not None:
        tokenizer.no_truncation()


class Classifier:
    """Texts in, predictions out, in the caller's order."""

    def __init__(
        self,
        backend: Backend,
        tokenizer: Tokenizer,
        *,
        tasks: dict[str, list[str]],
        primary_task: str,
        max_length: int,
        max_chars: int,
        name: str,
        truncation: str = "head",
        version: str,
        temperatures: dict[str, float] | None = None,
        batch_size: int = 32,
        max_batch_tokens: int = 8192,
        max_text_chars: int = 20_000,
        lanes: int = 1,
    ) -> None:
        if primary_task not in tasks:
            raise ValueError(f"primary task {primary_task!r} not in {list(tasks)}")
        self.backend = backend
        if truncation not in ("head", "head_tail"):
            raise ValueError(f"unknown truncation {truncation!r}")
        self.tokenizer = tokenizer
        configure_tokenizer(tokenizer, truncation, max_length)
        self.truncation = truncation
        self.tasks = tasks
        self.primary_task = primary_task
        self.max_length = max_length
        self.max_chars = max_chars
        self.name = name
        self.version = version
        self.temperatures = temperatures or {}
        self.batch_size = batch_size
        self.max_batch_tokens = max(max_batch_tokens, max_length)
        self.max_text_chars = max_text_chars
        # Forward passes of one call that run at once, each on its own thread (the backend
        # must allow concurrent forwards: ONNX Runtime sessions do, and release the GIL).
        self.lanes = max(1, lanes)
        self._lane_pool: ThreadPoolExecutor | None = None
        pads = [tokenizer.token_to_id(t) for t in ("[PAD]", "<pad>")]
        self.pad_id = next((p for p in pads if p is not None), 0)

    # -- validation -------------------------------------------------------------------------
    def prepare(self, text: object) -> str:
        """Validate and clean one text; raises InvalidInputError with the reason."""
        return prepare_text(text, self.max_text_chars, self.max_chars)

    def select_tasks(self, tasks: Sequence[str] | None) -> list[str]:
        return select_tasks(self.tasks, tasks)

    # -- inference --------------------------------------------------------------------------
    def classify(
        self, texts: Sequence[object], tasks: Sequence[str] | None = None
    ) -> list[Prediction]:
        """Validate, clean and classify ``texts``; one bad text fails the call (with its index)."""
        cleaned = []
        for i, text in enumerate(texts):
            try:
                cleaned.append(self.prepare(text))
            except InvalidInputError as exc:
                prefix = f"texts[{i}]: " if len(texts) > 1 else ""
                raise InvalidInputError(prefix + exc.message) from exc
        return self.classify_clean(cleaned, tasks)

    def encode(self, cleaned: Sequence[str]) -> list[list[int]]:
        # encode_batch_fast: the same ids without character offsets, which nothing here reads
        # (tokenizing alone 1.12x with two threads, 1.24x with one; tokenizers >= 0.20).
        encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
        encoded = [enc.ids for enc in encode(list(cleaned))]
        if self.truncation == "head_tail":
            return [head_tail_ids(ids, self.max_length) for ids in encoded]
        return encoded

    def plan_batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices sorted by length, cut into batches bounded by size and a token budget."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        batches: list[list[int]] = []
        current: list[int] = []
        for i in order:
            width = lengths[i]  # sorted ascending: the newcomer is the widest
            if current and (
                len(current) >= self.batch_size
                or width * (len(current) + 1) > self.max_batch_tokens
            ):
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
        return batches

    def _pad(self, ids: list[list[int]], idx: list[int]) -> tuple[IdArray, IdArray]:
        width = max(len(ids[i]) for i in idx)
        input_ids = np.full((len(idx), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        for row, i in enumerate(idx):
            seq = ids[i]
            input_ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        return input_ids, mask

    def probabilities(self, cleaned: Sequence[str]) -> tuple[dict[str, FloatArray], list[int]]:
        """Per-task probability matrices in input order, and token counts per text."""
        return self.probabilities_of_ids(self.encode(cleaned))

    def probabilities_of_ids(self, ids: list[list[int]]) -> tuple[dict[str, FloatArray], list[int]]:
        """:meth:`probabilities` of texts already encoded by :meth:`encode`."""
        lengths = [len(x) for x in ids]
        probs = {
            t: np.empty((len(ids), len(labels)), dtype=np.float32)
            for t, labels in self.tasks.items()
        }
        for idx, logits in self._forward_all(ids, self.plan_batches(lengths)):
            rows = np.asarray(idx)
            for task in self.tasks:
                probs[task][rows] = softmax(logits[task], self.temperatures.get(task, 1.0))
        return probs, lengths

    def _forward_all(
        self, ids: list[list[int]], plan: list[list[int]]
    ) -> Iterator[tuple[list[int], dict[str, FloatArray]]]:
        """(batch indices, logits) of every planned batch, in plan order; with ``lanes`` > 1
        up to that many batches run at once (same batches, so the same results)."""

        def run(idx: list[int]) -> tuple[list[int], dict[str, FloatArray]]:
            input_ids, mask = self._pad(ids, idx)
            return idx, self.backend.forward(input_ids, mask)

        if self.lanes == 1 or len(plan) == 1:
            return map(run, plan)
        if self._lane_pool is None:
            self._lane_pool = ThreadPoolExecutor(self.lanes, thread_name_prefix="lane")
        return self._lane_pool.map(run, plan)

    def build_predictions(
        self,
        probs: dict[str, FloatArray],
        lengths: Sequence[int],
        tasks: Sequence[str],
        rows: Sequence[int] | range | None = None,
    ) -> list[Prediction]:
        """Predictions for ``rows`` of probability matrices from :meth:`probabilities`."""
        selected = list(tasks)
        primary = self.primary_task if self.primary_task in selected else selected[0]
        # Python floats once per matrix (the same doubles as float() of each element): the
        # per-row work below is then plain Python, not numpy scalar access.
        as_lists = {task: probs[task].tolist() for task in selected}
        out: list[Prediction] = []
        for row in rows if rows is not None else range(len(lengths)):
            per_task: dict[str, TaskPrediction] = {}
            for task in selected:
                p = as_lists[task][row]
                labels = self.tasks[task]
                best = max(range(len(p)), key=p.__getitem__)  # the first maximum, as argmax
                per_task[task] = TaskPrediction(
                    label=labels[best],
                    score=round(p[best], 6),
                    scores={lab: round(v, 6) for lab, v in zip(labels, p, strict=True)},
                )
            out.append(Prediction(primary=primary, tasks=per_task, tokens=lengths[row]))
        return out

    def classify_clean(
        self, cleaned: Sequence[str], tasks: Sequence[str] | None = None
    ) -> list[Prediction]:
        """Classify texts already passed through :meth:`prepare`."""
        return self.classify_encoded(self.encode(cleaned) if cleaned else [], tasks)

    def classify_encoded(
        self, ids: list[list[int]], tasks: Sequence[str] | None = None
    ) -> list[Prediction]:
        """:meth:`classify_clean` of texts already encoded by :meth:`encode` (a caller that
        needs the token ids too, e.g. drift monitoring, tokenizes once)."""
        selected = self.select_tasks(tasks)
        if not ids:
            return []
        probs, lengths = self.probabilities_of_ids(ids)
        return self.build_predictions(probs, lengths, selected)
