from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sentistream.errors import ModelLoadError
from sentistream.manifest import load_manifest
from sentistream.testing import tiny_model_folder


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    return tiny_model_folder(tmp_path, "m", "3")


def _edit(folder: Path, **changes: object) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def test_valid_folder_loads(folder: Path) -> None:
    m = load_manifest(folder)
    assert m.name == "m" and m.version == "3"
    assert m.tasks["sentiment"].labels == ["negative", "neutral", "positive"]


def test_missing_file(folder: Path) -> None:
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match="missing tokenizer.json"):
        load_manifest(folder)


def test_not_json(folder: Path) -> None:
    (folder / "manifest.json").write_text("{nope")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_manifest(folder)


def test_missing_field(folder: Path) -> None:
    _edit(folder, tasks=None)
    with pytest.raises(ModelLoadError, match="tasks"):
        load_manifest(folder)


def test_primary_task_must_exist(folder: Path) -> None:
    _edit(folder, primary_task="emotion")
    with pytest.raises(ModelLoadError, match="primary_task"):
        load_manifest(folder)


def test_unsupported_cleaning_version(folder: Path) -> None:
    _edit(folder, cleaning_version="99")
    with pytest.raises(ModelLoadError, match="cleaning_version"):
        load_manifest(folder)


def test_task_output_must_be_in_signature(folder: Path) -> None:
    data = json.loads((folder / "manifest.json").read_text())
    data["tasks"]["sentiment"]["output"] = "nope"
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="nope"):
        load_manifest(folder)


def test_checksum_mismatch(folder: Path) -> None:
    with (folder / "model.onnx").open("ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(ModelLoadError, match="checksum"):
        load_manifest(folder)


def test_pickle_weights_refused(folder: Path) -> None:
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(ModelLoadError, match="pickle"):
        load_manifest(folder)


def test_folder_name_must_match_version(folder: Path, tmp_path: Path) -> None:
    other = tmp_path / "m" / "4"
    shutil.copytree(folder, other)
    with pytest.raises(ModelLoadError, match="differs"):
        load_manifest(other)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_manifest(tmp_path / "nothing" / "1")
