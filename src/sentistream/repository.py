"""The model repository: ``<root>/<name>/<version>/`` folders, versions are integers.

``resolve("tweet-sentiment")`` gives the newest version, ``resolve("tweet-sentiment:1")`` a pinned
one. Watching for new versions and hot reload build on this (model server).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sentistream.errors import ModelLoadError, ModelNotFoundError
from sentistream.manifest import load_manifest

__all__ = ["ModelRepository", "parse_model_ref"]

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def parse_model_ref(ref: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME:VERSION`` -> (name, version or None)."""
    name, _, version = ref.partition(":")
    if not _NAME.match(name):
        raise ModelNotFoundError(f"invalid model name {name!r}")
    if version and not version.isdigit():
        raise ModelNotFoundError(f"invalid model version {version!r} (versions are integers)")
    return name, version or None


class ModelRepository:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME.match(p.name))

    def versions(self, name: str) -> list[str]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        return sorted(
            (p.name for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=int
        )

    def has(self, ref: str) -> bool:
        try:
            self.resolve(ref)
        except ModelNotFoundError:
            return False
        return True

    def resolve(self, ref: str) -> Path:
        """The folder of ``NAME[:VERSION]`` (newest version when none is given)."""
        name, version = parse_model_ref(ref)
        versions = self.versions(name)
        if not versions:
            known = ", ".join(self.names()) or "none"
            raise ModelNotFoundError(f"no model {name!r} in {self.root} (installed: {known})")
        if version is None:
            return self.root / name / versions[-1]
        if version not in versions:
            raise ModelNotFoundError(
                f"model {name!r} has no version {version} (versions: {', '.join(versions)})"
            )
        return self.root / name / version

    def describe(self) -> list[dict[str, Any]]:
        """One row per model version, broken ones included with their error."""
        rows: list[dict[str, Any]] = []
        for name in self.names():
            for version in self.versions(name):
                folder = self.root / name / version
                try:
                    m = load_manifest(folder, verify_hashes=False)
                    rows.append(
                        {
                            "name": name,
                            "version": version,
                            "valid": True,
                            "error": None,
                            "primary_task": m.primary_task,
                            "tasks": {t: s.labels for t, s in m.tasks.items()},
                            "metrics": m.metrics.get("summary", {}),
                            "path": str(folder),
                        }
                    )
                except ModelLoadError as exc:
                    rows.append(
                        {
                            "name": name,
                            "version": version,
                            "valid": False,
                            "error": exc.message,
                            "tasks": {},
                            "path": str(folder),
                        }
                    )
        return rows
