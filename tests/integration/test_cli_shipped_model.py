"""The CLI in fresh processes, on the model shipped inside the package."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sentistream.config import BUNDLED_MODELS

pytestmark = pytest.mark.integration
MODEL = BUNDLED_MODELS / "tweet-sentiment" / "3"  # the default: the newest version
PARENT = BUNDLED_MODELS / "tweet-sentiment" / "2"  # v3 = v2 with attention as standard ops
SOURCE = BUNDLED_MODELS / "tweet-sentiment" / "1"  # v2 = v1 rebuilt


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sentistream", *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I love this so much, best day ever! 😍", "positive"),
        ("Just got the job offer, I'm so happy and grateful!! #blessed", "positive"),
        ("What an amazing game last night, proud of the team", "positive"),
        ("I hate this, worst customer service ever. Never again.", "negative"),
        (
            "My flight got cancelled again and nobody helps. Absolutely disgusting @airline",
            "negative",
        ),
        ("This is terrible, I'm so angry and sad right now 😡", "negative"),
    ],
)
def test_obvious_posts_get_the_right_label(text: str, expected: str) -> None:
    out = json.loads(run("classify", "--json", text).stdout)
    assert out["label"] == expected, out
    assert out["scores"][expected] > 0.5


def test_plain_output_and_empty_text_error() -> None:
    assert run("classify", "I love this").stdout.startswith("positive")
    bad = run("classify", "   ", check=False)
    assert bad.returncode == 1
    assert "empty after cleaning" in bad.stderr and "Traceback" not in bad.stderr


def test_jsonl_with_good_and_bad_lines_processed_completely(tmp_path: Path) -> None:
    good = [
        {"id": f"p{i}", "text": t}
        for i, t in enumerate(
            ["love it", "hate it", "meeting at 3pm", "so happy today", "worst film ever"] * 40
        )
    ]
    lines = [json.dumps(g) for g in good]
    bad = [
        '{"id": "x1"',
        '{"id": "x2", "text": 7}',
        "[]",
        '{"id": "x3", "text": ""}',
        "\x00garbage",
    ]
    for k, b in enumerate(bad):
        lines.insert(17 * (k + 1), b)
    src = tmp_path / "posts.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    proc = run(
        "classify", "--input", str(src), "--output", str(out), "--errors", str(err), "--no-progress"
    )
    summary = json.loads(proc.stderr.strip().splitlines()[-1])
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in records] == [g["id"] for g in good]
    assert summary["records"] == len(good) and summary["rejected"] == len(bad)
    assert len(err.read_text().splitlines()) == len(bad)
    for rec in records:
        assert rec["model"] == "tweet-sentiment" and rec["model_version"] == MODEL.name
        assert set(rec["scores"]) == {"negative", "neutral", "positive"}
        assert abs(sum(rec["scores"].values()) - 1) < 1e-3
        assert rec["label"] == max(rec["scores"], key=rec["scores"].get)


def test_dequantized_shipped_model_runs_on_the_torch_backend(tmp_path: Path) -> None:
    """The GPU path for the shipped model (`dequantize`, then `--backend torch`), here on the
    CPU: the same records as the int8 model, labels agreeing on the bundled sample posts
    (the int8 model's activation rounding is what can flip a close call)."""
    pytest.importorskip("torch")
    samples = Path(BUNDLED_MODELS).parent / "samples" / "posts.jsonl"
    checkpoint = tmp_path / "fp32"
    assert run("dequantize", "tweet-sentiment", "--output", str(checkpoint)).stdout.strip() == str(
        checkpoint
    )
    meta = json.loads((checkpoint / "checkpoint.json").read_text())
    assert meta["source"] == f"dequantized from tweet-sentiment v{MODEL.name} (int8 ONNX)"
    outs = {}
    for backend in ("onnx", "torch"):
        out = tmp_path / f"{backend}.jsonl"
        model = str(checkpoint) if backend == "torch" else "tweet-sentiment"
        run(
            "classify",
            "--backend",
            backend,
            "--model",
            model,
            "--input",
            str(samples),
            "--output",
            str(out),
            "--no-progress",
        )
        outs[backend] = [json.loads(x) for x in out.read_text().splitlines()]
    int8, fp32 = outs["onnx"], outs["torch"]
    assert [r["id"] for r in fp32] == [r["id"] for r in int8] and len(int8) >= 30
    assert {(r["model"], r["model_version"]) for r in fp32} == {("tweet-sentiment", MODEL.name)}
    agree = sum(a["label"] == b["label"] for a, b in zip(int8, fp32, strict=True)) / len(int8)
    assert agree >= 0.9, agree
    # The server on the torch backend: the one model, under its recorded name and version,
    # the labels `classify --backend torch` gave for the first sample posts.
    from sentistream.testing import ServerProcess

    with ServerProcess(
        BUNDLED_MODELS, args=["--backend", "torch", "--model", str(checkpoint)]
    ) as server:
        body = json.dumps({"texts": [r["text"] for r in int8[:4]]}).encode()
        request = urllib.request.Request(
            f"{server.url}/v1/classify", body, {"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        assert (answer["model"], answer["model_version"]) == ("tweet-sentiment", MODEL.name)
        assert [r["label"] for r in answer["results"]] == [r["label"] for r in fp32[:4]]
        with urllib.request.urlopen(f"{server.url}/v2/models/tweet-sentiment") as response:
            assert json.loads(response.read())["platform"] == "pytorch_libtorch"
        index_request = urllib.request.Request(
            f"{server.url}/v2/repository/index", b"", method="POST"
        )
        with urllib.request.urlopen(index_request, timeout=30) as response:
            index = json.loads(response.read())
        assert index == [
            {"name": "tweet-sentiment", "version": MODEL.name, "state": "READY", "reason": ""}
        ]
        # Repository operations would load the torch model again under another name: refused.
        for path in ("reviews/load", "tweet-sentiment/rollback"):
            refused = urllib.request.Request(
                f"{server.url}/v2/repository/models/{path}", b"", method="POST"
            )
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(refused, timeout=30)
            assert err.value.code == 400
            assert "needs --backend onnx" in err.value.read().decode()
    bad = run("dequantize", "no-such-model", "--output", str(tmp_path / "x"), check=False)
    assert bad.returncode != 0 and "no-such-model" in bad.stderr and "Traceback" not in bad.stderr


def test_models_lists_the_shipped_model() -> None:
    rows = json.loads(run("models", "--json").stdout)
    row = next(r for r in rows if r["name"] == "tweet-sentiment")
    assert row["valid"] and row["tasks"]["sentiment"] == ["negative", "neutral", "positive"]
    assert "tweet-sentiment:1" in run("models").stdout


def test_pick_model_by_name_and_version() -> None:
    assert run("classify", "--model", "tweet-sentiment:1", "nice").returncode == 0
    missing = run("classify", "--model", "tweet-sentiment:99", "nice", check=False)
    assert missing.returncode == 1 and "no version 99" in missing.stderr


def test_demo_replays_the_bundled_stream() -> None:
    proc = run("demo", "--rate", "0", "--json", "--no-redis")
    records = [json.loads(x) for x in proc.stdout.splitlines()]
    assert len(records) == 40
    assert {r["label"] for r in records} == {"negative", "neutral", "positive"}


def test_shipped_model_meets_its_card() -> None:
    manifest = json.loads((MODEL / "manifest.json").read_text())
    ver = manifest["metrics"]["verification"]
    assert ver["int8_official_score"] >= 0.75
    assert ver["argmax_agreement_with_source"] == 1.0  # v3 computes exactly what v2 does
    assert ver["max_abs_logit_diff_vs_source"] == 0.0
    assert abs(ver["int8_official_score"] - ver["fp32_official_score"]) <= 0.005
    quantization = manifest["quantization"]
    assert quantization["fp32_nodes"] == []
    assert quantization["rebuilt_from"] == "tweet-sentiment:2"
    assert quantization["split_attention"] == {"QAttention": 6, "Gelu": 6}
    assert quantization["opset"] == 23
    parent = json.loads((PARENT / "manifest.json").read_text())
    assert (
        ver["source_int8_official_score"]
        == (parent["metrics"]["verification"]["int8_official_score"])
    )
    # v2: v1 with every MatMul int8 and LayerNorm/GELU unfused, verified against v1
    parent_ver = parent["metrics"]["verification"]
    assert parent_ver["argmax_agreement_with_source"] >= 0.97
    assert parent["quantization"]["rebuilt_from"] == "tweet-sentiment:1"
    assert parent["quantization"]["unfused"] == {"SkipLayerNormalization": 12, "BiasGelu": 6}
    source = json.loads((SOURCE / "manifest.json").read_text())["metrics"]["verification"]
    assert source["argmax_agreement_int8_vs_fp32"] >= 0.98
    assert parent_ver["source_int8_official_score"] == source["int8_official_score"]
    assert (MODEL / "model.onnx").stat().st_size < 40_000_000
    card = (MODEL / "README.md").read_text()
    assert "sentistream train" in card and "macro_recall" in card
    assert "sentistream rebuild" in card and "Rebuilt from tweet-sentiment:2" in card


def test_evaluate_reproduces_the_card(sentiment_data: Path, tmp_path: Path) -> None:
    manifest = json.loads((MODEL / "manifest.json").read_text())
    expected = manifest["metrics"]["verification"]["int8_official_score"]
    proc = run(
        "evaluate", str(sentiment_data), "--split", "val", "--output", str(tmp_path / "r.json")
    )
    summary = json.loads(proc.stdout)
    assert summary["n"] == 2000
    assert summary["macro_recall"] == pytest.approx(expected, abs=0.005)


def test_evaluate_suite_writes_table_json_and_plot(tmp_path: Path) -> None:
    from tests.unit.test_evaluation_suite import EVERYDAY, _shared_data

    out = tmp_path / "eval"
    result = run(
        "evaluate",
        "--suite",
        str(_shared_data(tmp_path)),
        "--everyday",
        str(EVERYDAY),
        "--output-dir",
        str(out),
    )
    assert "| **check-suite mean** |" in result.stdout
    suite = json.loads((out / "suite.json").read_text())
    assert [s["name"] for s in suite["sets"]][:2] == ["validation", "tse_test"]
    assert suite["sets"][-1]["n"] == 240
    assert 0.0 <= suite["summary"]["check_mean_macro_recall"] <= 1.0
    assert (out / "suite.md").read_text().startswith("| set | n | macro-recall |")
    assert (out / "suite.png").stat().st_size > 1000
    missing = run("evaluate", "--suite", str(tmp_path / "nowhere"), check=False)
    assert missing.returncode != 0 and "missing" in missing.stderr
    assert "Traceback" not in missing.stderr
