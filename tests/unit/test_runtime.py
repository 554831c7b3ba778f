from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sentistream.errors import InvalidInputError
from sentistream.runtime import Classifier

TEXTS = [
    "i love this game",
    "bad",
    "the worst day, really awful and boring and sad and terrible and not fun at all",
    "this movie is great",
    "we lost the game today but the team was good",
    "happy",
    "you are awful",
    "new music today, amazing new show and great food with people",
    "it is what it is",
    "thanks",
]


def test_order_restored_and_equal_to_one_by_one(tiny_classifier: Classifier) -> None:
    # batch_size=4: ten texts of mixed length are sorted into three batches and put back.
    together = tiny_classifier.classify(TEXTS)
    alone = [tiny_classifier.classify([t])[0] for t in TEXTS]
    assert len(together) == len(TEXTS)
    for a, b in zip(together, alone, strict=True):
        assert a.label == b.label
        for task in a.tasks:
            for label, p in a.tasks[task].scores.items():
                assert p == pytest.approx(b.tasks[task].scores[label], abs=1e-5)


def test_token_counts_follow_input_order(tiny_classifier: Classifier) -> None:
    preds = tiny_classifier.classify(TEXTS)
    lengths = [len(e.ids) for e in tiny_classifier.tokenizer.encode_batch(TEXTS)]
    assert [p.tokens for p in preds] == lengths


def test_probabilities_are_distributions(tiny_classifier: Classifier) -> None:
    probs, _ = tiny_classifier.probabilities(TEXTS)
    for task, matrix in probs.items():
        assert matrix.shape == (len(TEXTS), len(tiny_classifier.tasks[task]))
        np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-5)


def test_plan_batches_bounded_by_size_and_token_budget(tiny_classifier: Classifier) -> None:
    tiny_classifier.max_batch_tokens = 64
    lengths = [3, 40, 5, 30, 2, 64, 10, 7]
    batches = tiny_classifier.plan_batches(lengths)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= tiny_classifier.batch_size
        widths = [lengths[i] for i in batch]
        assert len(batch) == 1 or max(widths) * len(batch) <= 64
        assert widths == sorted(widths)


def test_every_task_in_one_pass_and_subset(tiny_classifier: Classifier) -> None:
    calls = 0
    forward = tiny_classifier.backend.forward

    def counting(ids, mask):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return forward(ids, mask)

    tiny_classifier.backend.forward = counting  # type: ignore[method-assign]
    full = tiny_classifier.classify(["i love this"])[0]
    assert calls == 1
    assert set(full.tasks) == {"sentiment", "offensive"}
    assert full.to_dict()["tasks"]["offensive"]["label"] in {"offensive", "not-offensive"}
    only = tiny_classifier.classify(["i love this"], tasks=["offensive"])[0]
    assert set(only.tasks) == {"offensive"}
    assert only.label == full.tasks["offensive"].label


def test_unknown_task(tiny_classifier: Classifier) -> None:
    with pytest.raises(InvalidInputError, match="unknown task"):
        tiny_classifier.classify(["x"], tasks=["irony"])


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        (["ok", ""], r"texts\[1\]: text is empty"),
        ([42], "must be a string"),
        (["x" * 30_000], "limit"),
    ],
)
def test_bad_inputs_are_refused_with_a_reason(
    tiny_classifier: Classifier, texts: list[object], message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        tiny_classifier.classify(texts)


def test_empty_request(tiny_classifier: Classifier) -> None:
    assert tiny_classifier.classify([]) == []


def test_long_text_truncated_to_max_length(tiny_classifier: Classifier) -> None:
    pred = tiny_classifier.classify(["love " * 500])[0]
    assert pred.tokens == tiny_classifier.max_length


def test_x64_quant_precision_setting_reaches_the_session(
    tiny_repo: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sentistream.config import Settings
    from sentistream.runtime import load_classifier

    def entry(classifier: Classifier) -> str | None:
        options = classifier.backend.session.get_session_options()  # type: ignore[attr-defined]
        try:
            return str(options.get_session_config_entry("session.x64quantprecision"))
        except RuntimeError:  # not set
            return None

    texts = ["good day", "awful service, never again", "ok"]
    default = load_classifier(Settings(model_repository=tiny_repo, model="tiny:1"))
    assert entry(default) is None
    monkeypatch.setenv("SENTISTREAM_X64_QUANT_PRECISION", "true")
    exact = load_classifier(Settings(model_repository=tiny_repo, model="tiny:1"))
    assert entry(exact) == "1"
    # The tiny model is fp32: nothing to convert, the same answers.
    assert [p.to_dict() for p in exact.classify(texts)] == [
        p.to_dict() for p in default.classify(texts)
    ]


def test_lanes_run_the_same_batches_concurrently(tiny_repo: Path) -> None:
    """Two lanes: the batches of one call go through the backend on two threads at once, with
    results identical to one lane (same plan) and in the caller's order."""
    import threading
    import time

    from sentistream.config import Settings
    from sentistream.runtime import load_classifier

    def make(lanes: int) -> Classifier:
        return load_classifier(
            Settings(
                model_repository=tiny_repo,
                model="tiny:1",
                intra_op_threads=1,
                batch_size=2,
                lanes=lanes,
            )
        )

    one, two = make(1), make(2)
    assert (one.lanes, two.lanes) == (1, 2)
    texts = [f"post number {i} " + "word " * (i % 9) for i in range(40)]
    expected, _ = one.probabilities(texts)
    forward = two.backend.forward
    active, most = 0, 0
    lock = threading.Lock()

    def slow_forward(input_ids, attention_mask):  # type: ignore[no-untyped-def]
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        time.sleep(0.01)  # long enough for the other lane to start its batch meanwhile
        try:
            return forward(input_ids, attention_mask)
        finally:
            with lock:
                active -= 1

    two.backend.forward = slow_forward  # type: ignore[method-assign]
    got, _ = two.probabilities(texts)
    assert most == 2  # two forward passes were in flight at once
    for task in expected:
        np.testing.assert_array_equal(got[task], expected[task])
    labels = [p.label for p in two.classify(texts)]
    assert labels == [p.label for p in one.classify(texts)]


def test_classify_file_and_stream_run_one_lane_per_core(tmp_path: Path, tiny_repo: Path) -> None:
    """`classify --input` and `stream` with no thread settings: lanes = cores, one intra-op
    thread each."""
    import json
    import os
    import subprocess
    import sys

    posts = tmp_path / "posts.jsonl"
    posts.write_text(
        "".join(json.dumps({"id": str(i), "text": f"post {i}"}) + "\n" for i in range(50))
    )
    code = (
        "import sys, sentistream.runtime as rt\n"
        "orig = rt.load_onnx_classifier\n"
        "def spy(folder, settings, manifest=None):\n"
        "    c = orig(folder, settings, manifest)\n"
        "    print('lanes', c.lanes, settings.resolved_intra_op_threads(), file=sys.stderr)\n"
        "    return c\n"
        "rt.load_onnx_classifier = spy\n"
        "from sentistream.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    from sentistream.config import default_threads

    spied = [sys.executable, "-c", code]
    model = ["--model-repository", str(tiny_repo), "--model", "tiny:1"]
    base = [*spied, "classify", *model, "--no-progress"]
    run = subprocess.run(
        [*base, "--input", str(posts), "--output", str(tmp_path / "out.jsonl")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"lanes {default_threads()} 1" in run.stderr
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 50
    pinned = subprocess.run(
        [*base, "--intra-op-threads", "2", "--input", str(posts), "--output", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "lanes 1 2" in pinned.stderr  # explicit threads: no lanes unless asked
    # The stream worker picks the same shape (a single worker on every core).
    stream = [*spied, "stream", *model, "--source", "file", "--input", str(posts)]
    worker = subprocess.run(
        [*stream, "--output", str(tmp_path / "stream.jsonl")],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "SENTISTREAM_REDIS_URL": ""},
    )
    assert f"lanes {default_threads()} 1" in worker.stderr, worker.stderr
    assert len((tmp_path / "stream.jsonl").read_text().splitlines()) == 50
    pinned_worker = subprocess.run(
        [*stream, "--intra-op-threads", "2", "--output", str(tmp_path / "s2.jsonl")],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "SENTISTREAM_REDIS_URL": ""},
    )
    assert "lanes 1 2" in pinned_worker.stderr


def test_torch_model_ref_names_a_model_without_loading_it(tmp_path: Path) -> None:
    """What the server publishes a torch-backend model as: a checkpoint's recorded name and
    version (a dequantized model keeps the int8 one's), else a valid name from the source."""
    import json

    from sentistream.runtime import torch_model_ref

    ckpt = tmp_path / "run"
    ckpt.mkdir()
    (ckpt / "checkpoint.json").write_text(json.dumps({"name": "tweet-sentiment", "version": "3"}))
    assert torch_model_ref(str(ckpt)) == ("tweet-sentiment", "3")
    (ckpt / "checkpoint.json").write_text(json.dumps({"version": "v2"}))
    assert torch_model_ref(str(ckpt)) == ("run", "0")
    assert torch_model_ref("Org/My Model_v2") == ("my-model_v2", "0")
    assert torch_model_ref("///") == ("model", "0")


def test_encode_gives_the_ids_of_the_full_tokenizer_call(tiny_classifier) -> None:  # type: ignore[no-untyped-def]
    """``encode`` calls ``encode_batch_fast`` (no character offsets): the very ids of
    ``encode_batch``, truncation included."""
    texts = ["love it", "hate hate hate " * 40, "ünïcödé and 😂", "x"]
    cleaned = [tiny_classifier.prepare(t) for t in texts]
    full = [e.ids for e in tiny_classifier.tokenizer.encode_batch(cleaned)]
    assert tiny_classifier.encode(cleaned) == full
    assert max(len(ids) for ids in full) == tiny_classifier.max_length


def test_models_with_the_same_tokenizer_share_one(tmp_path: Path) -> None:
    import gc
    import json

    from sentistream.config import Settings
    from sentistream.runtime import _tokenizers, load_onnx_classifier
    from sentistream.testing import tiny_model_folder

    settings = Settings(intra_op_threads=1)
    a = load_onnx_classifier(tiny_model_folder(tmp_path, "a", "1", seed=1, max_length=48), settings)
    b = load_onnx_classifier(tiny_model_folder(tmp_path, "b", "1", seed=2, max_length=48), settings)
    # the same tokenizer.json bytes and truncation: one object, configured once
    assert a.tokenizer is b.tokenizer
    assert a.tokenizer.truncation == {
        "max_length": 48,  # a key no other test uses (fixtures share theirs)
        "stride": 0,
        "strategy": "longest_first",
        "direction": "right",
    }
    # another max_length or truncation: a tokenizer of its own, configured for it
    longer = tiny_model_folder(tmp_path, "c", "1", seed=3, max_length=32)
    c = load_onnx_classifier(longer, settings)
    assert c.tokenizer is not a.tokenizer and c.tokenizer.truncation["max_length"] == 32
    head_tail = tiny_model_folder(tmp_path, "d", "1", seed=4)
    manifest = json.loads((head_tail / "manifest.json").read_text())
    manifest["truncation"] = "head_tail"
    (head_tail / "manifest.json").write_text(json.dumps(manifest))
    d = load_onnx_classifier(head_tail, settings)
    assert d.tokenizer is not a.tokenizer and d.tokenizer.truncation is None
    assert a.tokenizer.truncation is not None  # the shared one was not reconfigured

    e = load_onnx_classifier(tiny_model_folder(tmp_path, "e", "1", seed=5, max_length=48), settings)
    assert e.tokenizer is a.tokenizer

    # the cache holds no model alive: the entry goes with the last model using it
    entries = len(_tokenizers)
    del a, b, e
    gc.collect()
    assert len(_tokenizers) == entries - 1
