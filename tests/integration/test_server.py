"""The model server as a real process on free ports, driven by real clients (tritonclient
HTTP and gRPC, TF-Serving-style gRPC, plain HTTP)."""

from __future__ import annotations

import concurrent.futures as cf
import json
import shutil
import signal
import threading
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from sentistream.testing import ServerProcess, tiny_model_folder

pytestmark = pytest.mark.integration
TEXTS = ["i love this game", "the worst day ever, awful", "new music today", "so sad", "great"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve-repo")
    tiny_model_folder(root, "tiny", "1", seed=1)
    tiny_model_folder(root, "other", "1", seed=5, tasks={"mood": ["calm", "tense"]})
    return root


@pytest.fixture(scope="module")
def server(repo: Path):  # type: ignore[no-untyped-def]
    with ServerProcess(
        repo,
        args=[
            "--model",
            "tiny",
            "--lanes",  # the server's default shape: one single-threaded lane per core
            "2",
            "--max-delay-ms",
            "5",
            "--max-texts-per-request",
            "16",
            "--max-body-bytes",
            "65536",
            "--max-text-chars",
            "2000",
        ],
    ) as s:
        yield s


def test_plain_json_api(server: ServerProcess) -> None:
    r = httpx.post(f"{server.url}/v1/classify", json={"texts": TEXTS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny" and body["model_version"] == "1"
    assert len(body["results"]) == len(TEXTS)
    first = body["results"][0]
    assert set(first["scores"]) == {"negative", "neutral", "positive"}
    assert first["label"] == max(first["scores"], key=first["scores"].get)
    assert set(first["tasks"]) == {"offensive"}
    one = httpx.post(f"{server.url}/v1/classify", json={"text": TEXTS[0], "tasks": ["offensive"]})
    assert one.json()["results"][0]["label"] == first["tasks"]["offensive"]["label"]
    assert r.headers["x-request-id"]


def test_several_models_at_once(server: ServerProcess) -> None:
    r = httpx.post(f"{server.url}/v1/classify", json={"text": "hello", "model": "other"})
    assert r.status_code == 200 and set(r.json()["results"][0]["scores"]) == {"calm", "tense"}
    meta = httpx.get(f"{server.url}/v2/models/other").json()
    assert meta["outputs"][0] == {"name": "mood_label", "datatype": "BYTES", "shape": [-1]}
    assert meta["parameters"]["tasks"] == {"mood": ["calm", "tense"]}


def test_tritonclient_http_round_trip(server: ServerProcess) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny")
    meta = client.get_model_metadata("tiny")
    assert meta["inputs"][0]["name"] == "text"
    for binary in (True, False):
        inp = httpclient.InferInput("text", [len(TEXTS)], "BYTES")
        inp.set_data_from_numpy(
            np.array([t.encode() for t in TEXTS], dtype=object), binary_data=binary
        )
        outputs = [
            httpclient.InferRequestedOutput("sentiment_label", binary_data=binary),
            httpclient.InferRequestedOutput("sentiment_probabilities", binary_data=binary),
        ]
        result = client.infer("tiny", [inp], outputs=outputs, request_id="req-1")
        labels = result.as_numpy("sentiment_label")
        probs = result.as_numpy("sentiment_probabilities")
        assert probs.shape == (len(TEXTS), 3)
        np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-4)
        expected = [["negative", "neutral", "positive"][i] for i in probs.argmax(axis=1)]
        assert [x.decode() if isinstance(x, bytes) else x for x in labels] == expected
        assert result.as_numpy("offensive_label") is None  # not requested: not computed


def test_tritonclient_grpc_round_trip(server: ServerProcess) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")
    meta = client.get_model_metadata("tiny", as_json=True)
    assert [o["name"] for o in meta["outputs"]] == [
        "sentiment_label",
        "offensive_label",
        "sentiment_probabilities",
        "offensive_probabilities",
    ]
    inp = grpcclient.InferInput("text", [len(TEXTS)], "BYTES")
    inp.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object))
    result = client.infer("tiny", [inp])
    probs = result.as_numpy("sentiment_probabilities")
    labels = [x.decode() for x in result.as_numpy("sentiment_label")]
    rest = httpx.post(f"{server.url}/v1/classify", json={"texts": TEXTS}).json()["results"]
    assert labels == [r["label"] for r in rest]
    np.testing.assert_allclose(probs[:, 2], [r["scores"]["positive"] for r in rest], atol=1e-5)
    assert result.as_numpy("offensive_probabilities").shape == (len(TEXTS), 2)


def _tfs_request(
    texts: list[bytes],
    name: str = "tiny",
    version: int | None = None,
    signature: str = "serving_default",
):  # type: ignore[no-untyped-def]
    from sentistream.protos.tensorflow.core.framework import tensor_pb2, types_pb2
    from sentistream.protos.tensorflow_serving.apis import predict_pb2

    req = predict_pb2.PredictRequest()
    req.model_spec.name = name
    req.model_spec.signature_name = signature
    if version is not None:
        req.model_spec.version.value = version
    t = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=texts)
    t.tensor_shape.dim.add(size=len(texts))
    req.inputs["text"].CopyFrom(t)
    return req


def test_tf_serving_grpc_predict_round_trip(server: ServerProcess) -> None:
    from sentistream.protos.tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(server.grpc) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        resp = stub.Predict(_tfs_request([t.encode() for t in TEXTS], version=1), timeout=10)
    assert resp.model_spec.name == "tiny" and resp.model_spec.version.value == 1
    probs = np.array(resp.outputs["sentiment_probabilities"].float_val).reshape(len(TEXTS), 3)
    assert [d.size for d in resp.outputs["sentiment_probabilities"].tensor_shape.dim] == [5, 3]
    labels = [x.decode() for x in resp.outputs["sentiment_label"].string_val]
    assert labels == [["negative", "neutral", "positive"][i] for i in probs.argmax(axis=1)]


def test_tf_serving_rest_predict(server: ServerProcess) -> None:
    rows = httpx.post(f"{server.url}/v1/models/tiny:predict", json={"instances": TEXTS[:2]})
    assert rows.status_code == 200
    preds = rows.json()["predictions"]
    assert len(preds) == 2 and len(preds[0]["sentiment_probabilities"]) == 3
    cols = httpx.post(
        f"{server.url}/v1/models/tiny/versions/1:predict", json={"inputs": {"text": TEXTS[:2]}}
    )
    assert cols.json()["outputs"]["sentiment_label"] == [p["sentiment_label"] for p in preds]
    assert (
        httpx.get(f"{server.url}/v1/models/tiny").json()["model_version_status"][0]["state"]
        == "AVAILABLE"
    )


def test_batched_answer_equals_unbatched(repo: Path) -> None:
    texts = [f"{w} game today" for w in ["love", "hate", "great", "sad", "awful", "fun"] * 5]
    with ServerProcess(repo, args=["--model", "tiny", "--max-delay-ms", "50"]) as s:
        alone = [
            httpx.post(f"{s.url}/v1/classify", json={"text": t}).json()["results"][0] for t in texts
        ]
        with cf.ThreadPoolExecutor(len(texts)) as pool:
            together = list(
                pool.map(
                    lambda t: httpx.post(
                        f"{s.url}/v1/classify", json={"text": t}, timeout=30
                    ).json()["results"][0],
                    texts,
                )
            )
        metrics = httpx.get(f"{s.url}/metrics").text
    for a, b in zip(alone, together, strict=True):
        assert a["label"] == b["label"]
        for k in a["scores"]:
            assert a["scores"][k] == pytest.approx(b["scores"][k], abs=1e-5)
    # the concurrent requests really were merged: some batch held more than one text
    counts = {
        line.split("le=")[1].split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith('sentistream_batch_texts_bucket{le="1.0"')
        or line.startswith('sentistream_batch_texts_bucket{le="+Inf"')
    }
    assert counts["+Inf"] > counts["1.0"]


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        ({"texts": ["x"] * 17}, 400, "limit is 16"),
        ({"text": "x" * 2001}, 400, "limit is 2000"),
        ({"text": "   "}, 400, "empty"),
        ({"texts": []}, 400, "no texts"),
        ({"text": "a", "texts": ["b"]}, 400, "exactly one"),
        ({"text": 5}, 422, "text"),
        ({"text": "a", "model": "nope"}, 404, "not served"),
        ({"text": "a", "version": "9"}, 404, "version"),
        ({"text": "a", "tasks": ["irony"]}, 400, "unknown task"),
        ({"text": "a", "extra": 1}, 422, "extra"),
    ],
)
def test_plain_api_limits_and_errors(
    server: ServerProcess, payload: dict, status: int, message: str
) -> None:
    r = httpx.post(f"{server.url}/v1/classify", json=payload)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_http_body_limits(server: ServerProcess) -> None:
    big = httpx.post(
        f"{server.url}/v1/classify",
        content=b'{"text": "' + b"a" * 70000 + b'"}',
        headers={"content-type": "application/json"},
    )
    assert big.status_code == 413 and "larger than 65536" in big.json()["error"]
    bad = httpx.post(f"{server.url}/v2/models/tiny/infer", content=b"{nope")
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]
    utf = httpx.post(f"{server.url}/v1/models/tiny:predict", content=b'{"instances": ["\xff"]}')
    assert utf.status_code == 400


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([{"name": "text", "datatype": "INT64", "shape": [1], "data": [1]}], "BYTES"),
        ([{"name": "text", "datatype": "BYTES", "shape": [3], "data": ["a"]}], "holds 3"),
        ([{"name": "text", "datatype": "BYTES", "shape": [1, 2], "data": ["a", "b"]}], "shape"),
        ([], "no input"),
        ([{"name": "text", "datatype": "BYTES", "shape": [1], "data": [5]}], "strings"),
    ],
)
def test_v2_rest_malformed(server: ServerProcess, inputs: list, message: str) -> None:
    r = httpx.post(f"{server.url}/v2/models/tiny/infer", json={"inputs": inputs})
    assert r.status_code == 400 and message in r.json()["error"], r.text


def _v2_grpc(server: ServerProcess, request):  # type: ignore[no-untyped-def]
    # tritonclient's own generated stubs: the real client's messages, not ours.
    from tritonclient.grpc import service_pb2_grpc

    with grpc.insecure_channel(server.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        return stub.ModelInfer(request, timeout=10)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda r: r.inputs.add(name="text", datatype="FP32", shape=[1]), "BYTES"),
        (
            lambda r: (
                r.inputs.add(name="text", datatype="BYTES", shape=[2]),
                r.raw_input_contents.append(b"\x01\x00\x00\x00a"),
            ),
            "holds 2",
        ),
        (lambda r: None, "no input"),
        (
            lambda r: (
                r.inputs.add(name="text", datatype="BYTES", shape=[1]),
                r.raw_input_contents.append(b"\xff\x00\x00\x00ab"),
            ),
            "truncated",
        ),
        (
            lambda r: (
                r.inputs.add(name="text", datatype="BYTES", shape=[1]),
                r.raw_input_contents.append(b"\x02\x00\x00\x00\xff\xfe"),
            ),
            "UTF-8",
        ),
        (
            lambda r: (
                r.inputs.add(name="text", datatype="BYTES", shape=[1]),
                r.raw_input_contents.append(b"\x00\x00\x01\x00" + b"a" * 65536),
            ),
            "limit",
        ),
    ],
)
def test_v2_grpc_malformed_is_invalid_argument(server: ServerProcess, build, message: str) -> None:
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="tiny")
    build(request)
    with pytest.raises(grpc.RpcError) as err:
        _v2_grpc(server, request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()


def test_grpc_unknown_model_and_signature(server: ServerProcess) -> None:
    from sentistream.protos.tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(server.grpc) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(_tfs_request([b"x"], name="nope"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(_tfs_request([b"x"], signature="classify"), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_full_queue_answers_429_and_resource_exhausted(repo: Path) -> None:
    import tritonclient.grpc as grpcclient

    args = [
        "--model",
        "tiny",
        "--max-queue-texts",
        "4",
        "--max-delay-ms",
        "300",
        "--max-batch-texts",
        "1000",
    ]
    with ServerProcess(repo, args=args) as s:
        with cf.ThreadPoolExecutor(12) as pool:
            codes = list(
                pool.map(
                    lambda _: (
                        httpx.post(
                            f"{s.url}/v1/classify", json={"texts": ["a", "b"]}, timeout=30
                        ).status_code
                    ),
                    range(12),
                )
            )
        assert 429 in codes and 200 in codes and set(codes) <= {200, 429}
        client = grpcclient.InferenceServerClient(s.grpc)
        inp = grpcclient.InferInput("text", [3], "BYTES")
        inp.set_data_from_numpy(np.array([b"a", b"b", b"c"], dtype=object))
        with cf.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(client.infer, "tiny", [inp]) for _ in range(8)]
            errors = [f.exception() for f in futures]
        exhausted = [e for e in errors if e is not None]
        assert exhausted and all("RESOURCE_EXHAUSTED" in str(e.status()) for e in exhausted)
        assert 'code="429"' in httpx.get(f"{s.url}/metrics").text


def test_auth(repo: Path) -> None:
    import tritonclient.grpc as grpcclient

    secret = "s3cret-token-value"
    with ServerProcess(repo, env={"SENTISTREAM_AUTH_TOKEN": secret}, args=["--model", "tiny"]) as s:
        url = f"{s.url}/v1/classify"
        assert httpx.post(url, json={"text": "hi"}).status_code == 401
        wrong = httpx.post(url, json={"text": "hi"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        ok = httpx.post(url, json={"text": "hi"}, headers={"Authorization": f"Bearer {secret}"})
        assert ok.status_code == 200
        assert httpx.get(f"{s.url}/v2/health/ready").status_code == 200
        assert httpx.get(f"{s.url}/metrics").status_code == 200
        assert httpx.get(f"{s.url}/v2/models/tiny").status_code == 401
        client = grpcclient.InferenceServerClient(s.grpc)
        assert client.is_server_live()
        inp = grpcclient.InferInput("text", [1], "BYTES")
        inp.set_data_from_numpy(np.array([b"hi"], dtype=object))
        with pytest.raises(Exception, match="UNAUTHENTICATED"):
            client.infer("tiny", [inp])
        with pytest.raises(Exception, match="UNAUTHENTICATED"):
            client.infer("tiny", [inp], headers={"authorization": "Bearer nope"})
        good = client.infer("tiny", [inp], headers={"authorization": f"Bearer {secret}"})
        assert good.as_numpy("sentiment_label").shape == (1,)
        log = s.log
    assert secret not in log


def test_hot_reload_under_load_loses_nothing(repo: Path, tmp_path: Path) -> None:
    live = tmp_path / "repo"
    tiny_model_folder(live, "tiny", "1", seed=1)
    staged = tiny_model_folder(tmp_path / "staging", "tiny", "2", seed=2)
    broken = tiny_model_folder(tmp_path / "staging", "tiny", "3", seed=3)
    (broken / "model.onnx").write_bytes(b"this is not an onnx file")
    stop = threading.Event()
    seen: list[tuple[int, str]] = []

    with ServerProcess(live, args=["--model-poll-seconds", "0.2"]) as s:

        def load() -> None:
            with httpx.Client(timeout=30) as c:
                while not stop.is_set():
                    r = c.post(f"{s.url}/v1/classify", json={"texts": TEXTS})
                    seen.append((r.status_code, r.json().get("model_version", r.text)))

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        shutil.copytree(staged, live / "tiny" / "2")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(v == "2" for _, v in seen[-20:]):
            time.sleep(0.1)
        shutil.copytree(broken, live / "tiny" / "3")
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join()
        after = httpx.post(f"{s.url}/v1/classify", json={"text": "hi"}).json()
        log = s.log
    assert seen and all(code == 200 for code, _ in seen), [x for x in seen if x[0] != 200][:3]
    assert {v for _, v in seen} == {"1", "2"}
    assert after["model_version"] == "2"
    assert "rejected model tiny:3" in log


def test_admin_load_unload_rollback(repo: Path, tmp_path: Path) -> None:
    live = tmp_path / "repo"
    tiny_model_folder(live, "tiny", "1", seed=1)
    tiny_model_folder(live, "tiny", "2", seed=2)
    with ServerProcess(live, args=["--model-poll-seconds", "0"]) as s:

        def version() -> str:
            return str(
                httpx.post(f"{s.url}/v1/classify", json={"text": "x"}).json()["model_version"]
            )

        assert version() == "2"
        r = httpx.post(f"{s.url}/v2/repository/models/tiny/rollback")
        assert r.status_code == 200 and r.json()["serving"] == "tiny:1"
        assert version() == "1"
        assert httpx.post(f"{s.url}/v2/repository/models/tiny/load?version=2").status_code == 200
        assert version() == "2"
        assert httpx.post(f"{s.url}/v2/repository/models/tiny/unload?version=2").status_code == 200
        assert version() == "1"
        index = httpx.post(f"{s.url}/v2/repository/index").json()
        assert {(i["version"], i["state"]) for i in index} == {("1", "READY"), ("2", "UNAVAILABLE")}


def test_sigterm_drains_in_flight_requests(repo: Path) -> None:
    import tritonclient.grpc as grpcclient

    # A long batching delay keeps requests queued inside the server when SIGTERM arrives.
    with ServerProcess(
        repo, args=["--model", "tiny", "--max-delay-ms", "400", "--max-batch-texts", "1000"]
    ) as s:
        client = grpcclient.InferenceServerClient(s.grpc)
        inp = grpcclient.InferInput("text", [1], "BYTES")
        inp.set_data_from_numpy(np.array([b"hello"], dtype=object))
        with cf.ThreadPoolExecutor(16) as pool:
            rest = [
                pool.submit(httpx.post, f"{s.url}/v1/classify", json={"text": "hi"}, timeout=30)
                for _ in range(8)
            ]
            rpc = [pool.submit(client.infer, "tiny", [inp]) for _ in range(8)]
            time.sleep(0.2)  # the requests are in the server, waiting for their batch
            s.proc.send_signal(signal.SIGTERM)
            codes = [f.result().status_code for f in rest]
            labels = [f.result().as_numpy("sentiment_label")[0] for f in rpc]
        assert codes == [200] * 8 and len(labels) == 8
        assert s.proc.wait(30) == 0
        assert '"msg": "draining"' in s.log


def test_readiness_false_until_loaded(tmp_path: Path) -> None:
    import subprocess
    import sys

    from sentistream.testing import free_port

    empty = tmp_path / "empty"
    empty.mkdir()
    port = free_port()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sentistream",
            "serve",
            "--model-repository",
            str(empty),
            "--http-port",
            str(port),
            "--grpc-port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "no models to serve" in proc.stderr


def test_metrics_and_openapi(server: ServerProcess) -> None:
    httpx.post(f"{server.url}/v1/classify", json={"text": "hello"})
    text = httpx.get(f"{server.url}/metrics").text
    for name in (
        "sentistream_requests_total",
        "sentistream_queue_seconds_bucket",
        "sentistream_inference_seconds_bucket",
        "sentistream_batch_tokens_bucket",
        'sentistream_model_loaded{model="tiny",version="1"} 1.0',
        "sentistream_ready 1.0",
    ):
        assert name in text, name
    schema = httpx.get(f"{server.url}/openapi.json").json()
    assert "/v1/classify" in schema["paths"] and "/v2/models/{model}/infer" in schema["paths"]
    assert httpx.get(f"{server.url}/docs").status_code == 200
    json.dumps(schema)


def test_tls_on_http_and_grpc(repo: Path, tmp_path: Path) -> None:
    import shutil as sh
    import subprocess

    if sh.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    args = ["--model", "tiny", "--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    with ServerProcess(repo, args=args) as s:
        assert s.url.startswith("https://")
        r = httpx.post(f"{s.url}/v1/classify", json={"text": "hi"}, verify=str(cert))
        assert r.status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.post(f"http://{s.http}/v1/classify", json={"text": "hi"}, timeout=5)
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        from sentistream.protos.tensorflow_serving.apis import prediction_service_pb2_grpc

        with grpc.secure_channel(s.grpc, creds) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            resp = stub.Predict(_tfs_request([b"hello"]), timeout=10)
        assert resp.outputs["sentiment_label"].string_val


def test_requests_of_gone_clients_are_dropped(repo: Path) -> None:
    args = ["--model", "tiny", "--max-delay-ms", "500", "--max-batch-texts", "1000"]
    with ServerProcess(repo, args=args) as s:
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{s.url}/v1/classify", json={"texts": ["gone"] * 7}, timeout=0.1)
        time.sleep(0.8)  # the batch the request was waiting for has run
        ok = httpx.post(f"{s.url}/v1/classify", json={"text": "stays"}, timeout=10)
        assert ok.status_code == 200
        texts = [
            line
            for line in httpx.get(f"{s.url}/metrics").text.splitlines()
            if line.startswith("sentistream_texts_total")
        ]
    # only the text of the client that waited was classified (plus none of the 7 gone ones)
    assert texts == ['sentistream_texts_total{model="tiny"} 1.0']


def test_several_worker_processes_share_the_ports(repo: Path) -> None:
    with ServerProcess(repo, args=["--model", "tiny", "--workers", "2"]) as s:
        with cf.ThreadPoolExecutor(8) as pool:
            codes = list(
                pool.map(
                    lambda _: (
                        httpx.post(
                            f"{s.url}/v1/classify", json={"text": "hi"}, timeout=30
                        ).status_code
                    ),
                    range(32),
                )
            )
        assert codes == [200] * 32
        assert s.stop() == 0


def test_not_ready_until_every_version_is_loaded(tmp_path: Path) -> None:
    """Version policy `all`, and readiness that stays false until the last version is warm.

    The models load on a thread from process start (``ModelRegistry.preload``), so on a fast
    machine all 40 may be warm before the first probe gets through: then the order is checked
    in the server's log (listeners up, then ready) instead of in the probes."""
    import subprocess
    import sys

    from sentistream.testing import free_port

    for v in range(1, 41):
        tiny_model_folder(tmp_path, "many", str(v), seed=v)
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sentistream",
            "serve",
            "--model-repository",
            str(tmp_path),
            "--version-policy",
            "all",
            "--http-port",
            str(port),
            "--grpc-port",
            str(free_port()),
            "--intra-op-threads",
            "1",
            "--log-level",
            "INFO",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "server.log").open("w"),
    )
    seen: list[tuple[int, int]] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                live = httpx.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=1).status_code
                ready = httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code
            except httpx.HTTPError:
                time.sleep(0.01)
                continue
            seen.append((live, ready))
            if ready == 200:
                break
            time.sleep(0.01)
        assert seen and all(live == 200 for live, _ in seen), seen[:3]  # live throughout
        ready = [r for _, r in seen]
        assert ready == sorted(ready, reverse=True), seen  # 503s (if any), then only 200
        assert seen[-1] == (200, 200)
        meta = httpx.get(f"http://127.0.0.1:{port}/v2/models/many").json()
        assert len(meta["versions"]) == 40
        one = httpx.post(
            f"http://127.0.0.1:{port}/v1/classify",
            json={"text": "x", "model": "many", "version": "7"},
        ).json()
        assert one["model_version"] == "7"
    finally:
        proc.terminate()
        proc.wait(30)
    messages = [
        json.loads(line)["msg"]
        for line in (tmp_path / "server.log").read_text().splitlines()
        if line.startswith("{")
    ]
    assert messages.index("listening") < messages.index("ready")
    loaded = [i for i, m in enumerate(messages) if m.startswith("loaded model many:")]
    assert len(loaded) == 40 and max(loaded) < messages.index("ready")


def test_bytes_contents_request_ids_logs_and_no_cors(server: ServerProcess) -> None:
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name="tiny", id="abc")
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=[2, 1])
    tensor.contents.bytes_contents.extend([b"i love it", b"awful"])
    with grpc.insecure_channel(server.grpc) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            request, timeout=10
        )
    assert response.id == "abc" and response.outputs[0].shape == [2]
    r = httpx.post(
        f"{server.url}/v1/classify",
        json={"text": "hi"},
        headers={"X-Request-ID": "req-42", "Origin": "http://evil.example"},
    )
    assert r.headers["x-request-id"] == "req-42"
    assert "access-control-allow-origin" not in r.headers
    lines = [json.loads(x) for x in server.log.splitlines() if x.startswith("{")]
    assert any(x.get("request_id") == "req-42" and x.get("status") == 200 for x in lines)


def test_http_only_server_has_no_grpc(repo: Path) -> None:
    """``--no-grpc-enabled`` (the serverless shape): HTTP answers, the gRPC port stays closed,
    and the server module does not import grpc at all (it is imported only to serve gRPC)."""
    import socket
    import subprocess
    import sys

    code = "import sys, sentistream.server.app; print('grpc' in sys.modules)"
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert imported.stdout.strip() == "False", imported.stderr
    with ServerProcess(repo, args=["--model", "tiny", "--no-grpc-enabled"]) as s:
        answer = httpx.post(f"{s.url}/v1/classify", json={"text": "i love this"}, timeout=10)
        assert answer.status_code == 200 and answer.json()["model"] == "tiny"
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", s.grpc_port)) != 0  # nothing listens
        assert s.stop() == 0
