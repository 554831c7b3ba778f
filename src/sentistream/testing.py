"""Test helpers shipped with the package: tiny real models built on the spot.

``tiny_tokenizer`` builds a real WordPiece ``tokenizers`` tokenizer over a small vocabulary;
``tiny_model_folder`` writes a real ONNX model version folder (embedding -> masked mean pool ->
one linear head per task, random weights) with a valid manifest, so tests exercise the real
loading, validation and inference path without shipping or downloading weights. Building the
ONNX graph needs the ``onnx`` package (``[dev]`` or ``[train]`` extra).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from sentistream.manifest import MANIFEST_FORMAT, file_sha256
from sentistream.text import CLEANING_VERSION

__all__ = [
    "TINY_WORDS",
    "RedisServer",
    "ServerProcess",
    "TestCertificates",
    "free_port",
    "make_test_certificates",
    "tiny_model_folder",
    "tiny_tokenizer",
]

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TINY_WORDS = """
i you we they it this that is are was be the a an and or but not no so very really
love like great good happy best awesome amazing nice fun glad thanks win
hate bad worst awful terrible sad angry horrible sick fail lost boring
day today tomorrow game movie music food show team new time people
user http # @ ! ? . , ' : ( ) face with tears of joy heart red smiling
""".split()  # noqa: SIM905


def tiny_tokenizer(extra_words: list[str] | None = None) -> Tokenizer:
    """A BERT-style (uncased WordPiece) tokenizer over a tiny vocabulary."""
    words = list(dict.fromkeys(TINY_WORDS + (extra_words or [])))
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab_list = (
        SPECIALS + words + [c for c in letters if c not in words] + [f"##{c}" for c in letters]
    )
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, clean_text=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece()
    return tok


def _tiny_onnx(
    path: Path, vocab_size: int, tasks: dict[str, list[str]], dim: int, seed: int
) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(0, 1, (vocab_size, dim)).astype(np.float32), "emb"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "axis_last"),
        numpy_helper.from_array(np.array(1e-6, dtype=np.float32), "eps"),
    ]
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["tok"], axis=0),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis_last"], ["mask3"]),
        helper.make_node("Mul", ["tok", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["maskf", "axis1"], ["count"], keepdims=1),
        helper.make_node("Add", ["count", "eps"], ["count_eps"]),
        helper.make_node("Div", ["summed", "count_eps"], ["pooled"]),
    ]
    outputs = []
    for task, labels in tasks.items():
        w = rng.normal(0, 1, (dim, len(labels))).astype(np.float32)
        b = rng.normal(0, 0.1, (len(labels),)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w_{task}"), numpy_helper.from_array(b, f"b_{task}")]
        nodes += [
            helper.make_node("MatMul", ["pooled", f"w_{task}"], [f"mm_{task}"]),
            helper.make_node("Add", [f"mm_{task}", f"b_{task}"], [f"logits_{task}"]),
        ]
        outputs.append(
            helper.make_tensor_value_info(
                f"logits_{task}", TensorProto.FLOAT, ["batch", len(labels)]
            )
        )
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info(
                "attention_mask", TensorProto.INT64, ["batch", "sequence"]
            ),
        ],
        outputs,
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def tiny_model_folder(
    root: Path,
    name: str = "tiny",
    version: str = "1",
    tasks: dict[str, list[str]] | None = None,
    primary_task: str | None = None,
    *,
    dim: int = 16,
    seed: int = 0,
    max_length: int = 64,
) -> Path:
    """Write ``root/name/version`` with a real (random-weight) ONNX model and manifest."""
    tasks = tasks or {
        "sentiment": ["negative", "neutral", "positive"],
        "offensive": ["not-offensive", "offensive"],
    }
    primary_task = primary_task or next(iter(tasks))
    folder = root / name / version
    folder.mkdir(parents=True, exist_ok=True)
    tok = tiny_tokenizer()
    tok.save(str(folder / "tokenizer.json"))
    _tiny_onnx(folder / "model.onnx", tok.get_vocab_size(), tasks, dim, seed)
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": name,
        "version": version,
        "description": "tiny random test model",
        "primary_task": primary_task,
        "tasks": {t: {"labels": lbls, "output": f"logits_{t}"} for t, lbls in tasks.items()},
        "max_length": max_length,
        "cleaning_version": CLEANING_VERSION,
        "max_chars": 1000,
        "signature": {
            "inputs": [
                {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]},
                {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "sequence"]},
            ],
            "outputs": [
                {"name": f"logits_{t}", "dtype": "float32", "shape": ["batch", len(lbls)]}
                for t, lbls in tasks.items()
            ],
        },
        "base_model": "random",
        "files": {f: file_sha256(folder / f) for f in ("model.onnx", "tokenizer.json")},
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServerProcess:
    """``sentistream serve`` in a real subprocess on free ports, for tests and benchmarks.

    Use as a context manager; ``http``/``grpc`` hold ``host:port``; ``stop()`` sends SIGTERM and
    returns the exit code; ``log`` holds what the server wrote to stderr.
    """

    def __init__(
        self,
        repository: Path,
        *,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        ready_timeout: float = 60.0,
        threads: int = 1,
    ) -> None:
        self.repository = repository
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.env = env or {}
        self.args = args or []
        self.ready_timeout = ready_timeout
        self.threads = threads
        self.started_at = 0.0
        self.ready_seconds = 0.0
        self.proc: Any = None
        self._log_path: Path | None = None

    @property
    def http(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def url(self) -> str:
        scheme = "https" if "--tls-cert-file" in self.args else "http"
        return f"{scheme}://{self.http}"

    def start(self) -> ServerProcess:
        import os
        import subprocess
        import sys
        import tempfile
        import time

        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **self.env}
        fd, name = tempfile.mkstemp(prefix="sentistream-server-", suffix=".log")
        self._log_path = Path(name)
        cmd = [
            sys.executable,
            "-m",
            "sentistream",
            "serve",
            "--host",
            "127.0.0.1",
            "--http-port",
            str(self.http_port),
            "--grpc-port",
            str(self.grpc_port),
            "--model-repository",
            str(self.repository),
            "--intra-op-threads",
            str(self.threads),
            *self.args,
        ]
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=fd, stderr=fd, env=env)
        os.close(fd)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log}")
            if self.is_ready():
                self.ready_seconds = time.perf_counter() - self.started_at
                return self
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"server not ready in {self.ready_timeout}s:\n{self.log}")

    def is_ready(self) -> bool:
        import ssl
        import urllib.request

        context = ssl._create_unverified_context()  # noqa: S323 - a test server's own cert
        try:
            with urllib.request.urlopen(  # noqa: S310
                f"{self.url}/v2/health/ready", timeout=1, context=context
            ) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    @property
    def log(self) -> str:
        return self._log_path.read_text(errors="replace") if self._log_path else ""

    def stop(self, timeout: float = 60.0) -> int:
        import signal

        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)


@dataclass(frozen=True)
class TestCertificates:
    """PEM files of a throwaway CA and a server certificate it signed (for 127.0.0.1 and
    localhost), made by :func:`make_test_certificates`."""

    __test__ = False  # not a pytest test class

    ca: Path
    cert: Path
    key: Path


def make_test_certificates(folder: Path) -> TestCertificates:
    """A CA and a server certificate for 127.0.0.1/localhost, with the ``openssl`` CLI."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        raise RuntimeError("openssl is not installed (make install installs it)")
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", "ca.key",
        "-out", "ca.crt", "-subj", "/CN=sentistream test CA")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-out", "server.crt", "-extfile", "san.cnf")  # fmt: skip
    return TestCertificates(folder / "ca.crt", folder / "server.crt", folder / "server.key")


class RedisServer:
    """A real ``redis-server`` (Debian package) on a free port, AOF on, in its own folder;
    with ``tls``, only a TLS port (``rediss://``).

    ``kill()`` sends SIGKILL (no shutdown save), ``start()`` restarts it on the same port and
    AOF, so tests can show what survives a crash.
    """

    def __init__(
        self, folder: Path, *, password: str | None = None, tls: TestCertificates | None = None
    ) -> None:
        self.folder = folder
        self.port = free_port()
        self.password = password
        self.tls = tls
        self.proc: Any = None

    @property
    def url(self) -> str:
        """``redis://``, or with ``tls`` ``rediss://...?ssl_ca_certs=<ca>`` (TLS only: the
        plain port is off)."""
        auth = f":{self.password}@" if self.password else ""
        if self.tls is not None:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls.ca}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        import shutil
        import subprocess
        import time

        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (make install installs it)")
        self.folder.mkdir(parents=True, exist_ok=True)
        ports = ["--port", str(self.port)]
        if self.tls is not None:
            ports = [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(self.tls.cert),
                "--tls-key-file",
                str(self.tls.key),
                "--tls-ca-cert-file",
                str(self.tls.ca),
                "--tls-auth-clients",
                "no",
            ]
        cmd = [
            binary,
            *ports,
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.folder),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--logfile",
            str(self.folder / "redis.log"),
        ]
        if self.password:
            cmd += ["--requirepass", self.password]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.ping():
                return self
            time.sleep(0.05)
        raise TimeoutError(f"redis-server did not start on port {self.port}")

    def ping(self) -> bool:
        import socket
        import ssl

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
                s = raw
                if self.tls is not None:
                    context = ssl.create_default_context(cafile=str(self.tls.ca))
                    s = context.wrap_socket(raw, server_hostname="127.0.0.1")
                auth = (f"AUTH {self.password}\r\n" if self.password else "").encode()
                s.sendall(auth + b"PING\r\n")
                return b"PONG" in s.recv(100) or b"PONG" in s.recv(100)
        except OSError:
            return False

    def kill(self) -> None:
        import signal

        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def tiny_backbone_folder(folder: Path, layers: int = 2, seed: int = 0) -> Path:
    """A random-weight BERT encoder folder (config.json + safetensors + tokenizer.json) usable
    as ``--base-model``: for training tests (needs the ``[train]`` extra)."""
    import torch
    from transformers import BertConfig, BertModel

    tok = tiny_tokenizer()
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder
