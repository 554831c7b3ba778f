"""Conversions between wire formats and the core: KServe V2 (REST JSON, binary extension,
gRPC) and TF Serving (REST and gRPC). One place, so transports stay a few lines each.

Tensor naming for a model with tasks T1..Tn: one input ``text`` (BYTES, shape ``[batch]`` or
``[batch, 1]``); outputs ``<task>_label`` (BYTES ``[batch]``) and ``<task>_probabilities``
(FP32 ``[batch, n_labels]``) per task, in the manifest's label order.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from sentistream.errors import InvalidInputError
from sentistream.runtime.base import Prediction

__all__ = [
    "INPUT_NAME",
    "decode_bytes_elements",
    "encode_bytes_elements",
    "output_names",
    "output_tensors",
    "tasks_for_outputs",
    "texts_from_bytes",
]

INPUT_NAME = "text"
_INPUT_ALIASES = {"text", "texts", "input", "inputs", "text_input", "INPUT0", "TEXT"}


def output_names(tasks: dict[str, list[str]]) -> list[str]:
    return [name for t in tasks for name in (f"{t}_label", f"{t}_probabilities")]


def tasks_for_outputs(tasks: dict[str, list[str]], requested: Sequence[str]) -> list[str] | None:
    """Tasks needed for the requested output names (None: all)."""
    if not requested:
        return None
    known = set(output_names(tasks))
    unknown = [r for r in requested if r not in known]
    if unknown:
        raise InvalidInputError(
            f"unknown output(s) {', '.join(unknown)}; this model has {', '.join(sorted(known))}"
        )
    return [t for t in tasks if f"{t}_label" in requested or f"{t}_probabilities" in requested]


def output_tensors(
    tasks: dict[str, list[str]], preds: list[Prediction], requested: Sequence[str] = ()
) -> list[tuple[str, str, list[int], Any]]:
    """(name, datatype, shape, numpy array) per output, in a stable order."""
    wanted = set(requested) if requested else set(output_names(tasks))
    out: list[tuple[str, str, list[int], Any]] = []
    n = len(preds)
    for task, labels in tasks.items():
        if not preds or task not in preds[0].tasks:
            continue
        if f"{task}_label" in wanted:
            arr = np.array([p.tasks[task].label.encode() for p in preds], dtype=object)
            out.append((f"{task}_label", "BYTES", [n], arr))
        if f"{task}_probabilities" in wanted:
            probs = np.array(
                [[p.tasks[task].scores[lab] for lab in labels] for p in preds], dtype=np.float32
            ).reshape(n, len(labels))
            out.append((f"{task}_probabilities", "FP32", [n, len(labels)], probs))
    return out


# -- BYTES tensors --------------------------------------------------------------------------------
def decode_bytes_elements(raw: bytes, limit: int) -> list[bytes]:
    """Split a raw BYTES tensor: each element is a 4-byte little-endian length, then the bytes."""
    out: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if len(out) >= limit:
            raise InvalidInputError(f"more than {limit} elements in the BYTES tensor")
        if offset + 4 > len(raw):
            raise InvalidInputError("truncated BYTES tensor: incomplete length prefix")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise InvalidInputError(
                f"truncated BYTES tensor: element {len(out)} declares {size} bytes, "
                f"{len(raw) - offset} left"
            )
        out.append(raw[offset : offset + size])
        offset += size
    return out


def encode_bytes_elements(values: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def texts_from_bytes(values: Sequence[bytes | str]) -> list[str]:
    texts = []
    for i, v in enumerate(values):
        if isinstance(v, str):
            texts.append(v)
            continue
        try:
            texts.append(v.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"element {i} of the text tensor is not valid UTF-8") from exc
    return texts


def check_shape(shape: Sequence[int], count: int) -> None:
    if not shape:
        raise InvalidInputError("input tensor shape is missing")
    if any(d < 0 for d in shape):
        raise InvalidInputError(f"input shape {list(shape)} has a negative dimension")
    if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
        raise InvalidInputError(
            f"text input must have shape [batch] or [batch, 1], got {list(shape)}"
        )
    if int(np.prod(shape)) != count:
        raise InvalidInputError(
            f"input shape {list(shape)} holds {int(np.prod(shape))} elements but {count} were sent"
        )


def pick_input(names: Sequence[str]) -> int:
    if not names:
        raise InvalidInputError(f"no input tensor; send one BYTES input named {INPUT_NAME!r}")
    if len(names) == 1:
        return 0
    for i, name in enumerate(names):
        if name in _INPUT_ALIASES:
            return i
    raise InvalidInputError(f"expected one input named {INPUT_NAME!r}, got {list(names)}")


# -- KServe V2 REST -------------------------------------------------------------------------------
def v2_rest_texts(
    body: dict[str, Any], binary: bytes, limit: int
) -> tuple[list[str], list[str], set[str], bool]:
    """Texts, requested outputs, outputs wanted in binary, and whether all outputs are binary."""
    inputs = body.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidInputError("'inputs' must be a list of tensors")
    if not all(isinstance(i, dict) for i in inputs):
        raise InvalidInputError("every input must be an object")
    idx = pick_input([str(i.get("name", "")) for i in inputs])
    offset = 0
    texts: list[str] = []
    for k, tensor in enumerate(inputs):
        params = tensor.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        chunk = None
        if size is not None:
            if not _is_int(size):
                raise InvalidInputError("binary_data_size must be an integer")
            if size < 0 or offset + size > len(binary):
                raise InvalidInputError("binary_data_size does not match the binary body")
            chunk = binary[offset : offset + size]
            offset += size
        if k != idx:
            continue
        if tensor.get("datatype") != "BYTES":
            raise InvalidInputError(
                f"input {tensor.get('name')!r} must have datatype BYTES, got "
                f"{tensor.get('datatype')!r}"
            )
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
            raise InvalidInputError("input 'shape' must be a list of integers")
        if chunk is not None:
            values: list[Any] = decode_bytes_elements(chunk, limit)
        else:
            data = tensor.get("data")
            if not isinstance(data, list):
                raise InvalidInputError("input 'data' must be a list of strings")
            values = _flatten(data)
            if not all(isinstance(v, str) for v in values):
                raise InvalidInputError("input 'data' must hold strings")
        if len(values) > limit:
            raise InvalidInputError(f"{len(values)} texts in one request; the limit is {limit}")
        check_shape(shape, len(values))
        texts = texts_from_bytes(values)
    if offset != len(binary):
        raise InvalidInputError("binary body is longer than the inputs' binary_data_size")
    outputs = body.get("outputs") or []
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise InvalidInputError("'outputs' must be a list of objects")
    if not all(isinstance(o.get("parameters") or {}, dict) for o in outputs):
        raise InvalidInputError("an output's 'parameters' must be an object")
    requested = [str(o.get("name")) for o in outputs]
    binary_out = {
        str(o.get("name")) for o in outputs if (o.get("parameters") or {}).get("binary_data")
    }
    params = body.get("parameters") or {}
    all_binary = bool(isinstance(params, dict) and params.get("binary_data_output"))
    return texts, requested, binary_out, all_binary


def _is_int(value: object) -> bool:
    """A JSON integer: ``true``/``false`` are not dimensions or sizes (Python's bool is an int)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    for item in data:
        if isinstance(item, list):
            out.extend(_flatten(item))
        else:
            out.append(item)
    return out


def v2_rest_response(
    model: str,
    version: str,
    request_id: str | None,
    tensors: list[tuple[str, str, list[int], Any]],
    binary_out: set[str],
    all_binary: bool,
) -> tuple[bytes, int | None]:
    """JSON (and binary tail) of an infer response; returns (body, json header length or None)."""
    outputs = []
    chunks: list[bytes] = []
    for name, dtype, shape, arr in tensors:
        entry: dict[str, Any] = {"name": name, "datatype": dtype, "shape": shape}
        if all_binary or name in binary_out:
            raw = (
                encode_bytes_elements(list(arr))
                if dtype == "BYTES"
                else arr.astype("<f4").tobytes()
            )
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif dtype == "BYTES":
            entry["data"] = [v.decode("utf-8") for v in arr]
        else:
            entry["data"] = [float(x) for x in arr.reshape(-1)]
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": outputs}
    if request_id:
        body["id"] = request_id
    header = json.dumps(body).encode()
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)


# -- TF Serving REST ------------------------------------------------------------------------------
def _is_b64(value: object) -> bool:
    """TF Serving's encoding of a binary string value: an object whose only key is ``b64``."""
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _tfs_value(value: Any, where: str) -> Any:
    """A TF Serving REST input value; ``{"b64": ...}`` is decoded as TF Serving does (base64 to
    bytes), and the bytes must be UTF-8 text. Anything else goes on as is (the core checks it)."""
    if not _is_b64(value):
        return value
    encoded = value["b64"]
    if not isinstance(encoded, str):
        raise InvalidInputError(f"{where}: 'b64' must be a base64 string")
    try:  # standard alphabet; like TF Serving, the padding may be left out
        raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except ValueError as exc:  # binascii.Error, or a non-ASCII character
        raise InvalidInputError(f"{where}: 'b64' is not valid base64") from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{where}: the base64 value is not UTF-8 text") from exc


def tfs_rest_texts(body: dict[str, Any]) -> tuple[list[Any], bool]:
    """Texts from ``instances`` (row format) or ``inputs`` (columnar); returns (texts, row).

    A value may be a string or ``{"b64": "<base64 of UTF-8 text>"}``; a row is the value itself
    or an object holding it under the one input's name (``text``)."""
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list):
            raise InvalidInputError("'instances' must be a list")
        texts = []
        for i, row in enumerate(rows):
            if isinstance(row, dict) and not _is_b64(row):
                if len(row) != 1 and INPUT_NAME not in row:
                    raise InvalidInputError(f"each instance needs one input named {INPUT_NAME!r}")
                row = row.get(INPUT_NAME, next(iter(row.values()), None))
            texts.append(_tfs_value(row, f"instances[{i}]"))
        return texts, True
    if "inputs" in body:
        cols = body["inputs"]
        if isinstance(cols, dict) and not _is_b64(cols):
            if len(cols) != 1 and INPUT_NAME not in cols:
                raise InvalidInputError(f"'inputs' needs one input named {INPUT_NAME!r}")
            cols = cols.get(INPUT_NAME, next(iter(cols.values()), None))
        if isinstance(cols, str) or _is_b64(cols):
            cols = [cols]
        if not isinstance(cols, list):
            raise InvalidInputError("'inputs' must be a list of texts or {'text': [...]}")
        return [_tfs_value(v, f"inputs[{i}]") for i, v in enumerate(cols)], False
    raise InvalidInputError("request needs 'instances' or 'inputs'")


def tfs_rest_response(tensors: list[tuple[str, str, list[int], Any]], row: bool) -> dict[str, Any]:
    def value(dtype: str, arr: Any, i: int | None = None) -> Any:
        if dtype == "BYTES":
            return arr[i].decode() if i is not None else [v.decode() for v in arr]
        return arr[i].tolist() if i is not None else arr.tolist()

    if not row:
        return {"outputs": {name: value(dtype, arr) for name, dtype, _, arr in tensors}}
    n = tensors[0][2][0] if tensors else 0
    return {
        "predictions": [
            {name: value(dtype, arr, i) for name, dtype, _, arr in tensors} for i in range(n)
        ]
    }
