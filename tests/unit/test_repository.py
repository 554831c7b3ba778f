from __future__ import annotations

from pathlib import Path

import pytest

from sentistream.errors import ModelNotFoundError
from sentistream.repository import ModelRepository, parse_model_ref
from sentistream.testing import tiny_model_folder


def test_resolve_latest_and_pinned(tiny_repo: Path) -> None:
    repo = ModelRepository(tiny_repo)
    assert repo.resolve("tiny") == tiny_repo / "tiny" / "2"
    assert repo.resolve("tiny:1") == tiny_repo / "tiny" / "1"
    assert repo.versions("tiny") == ["1", "2"]


def test_versions_sort_numerically(tmp_path: Path) -> None:
    for v in ("2", "10", "9"):
        (tmp_path / "m" / v).mkdir(parents=True)
    assert ModelRepository(tmp_path).versions("m") == ["2", "9", "10"]


@pytest.mark.parametrize("ref", ["nope", "tiny:7", "Bad Name", "tiny:abc", "../etc"])
def test_not_found(tiny_repo: Path, ref: str) -> None:
    with pytest.raises(ModelNotFoundError):
        ModelRepository(tiny_repo).resolve(ref)


def test_parse_ref() -> None:
    assert parse_model_ref("tweet-sentiment:3") == ("tweet-sentiment", "3")
    assert parse_model_ref("tweet-sentiment") == ("tweet-sentiment", None)


def test_describe_reports_broken_versions(tmp_path: Path) -> None:
    tiny_model_folder(tmp_path, "ok", "1")
    broken = tiny_model_folder(tmp_path, "ok", "2")
    (broken / "manifest.json").write_text("[]")
    rows = {(r["name"], r["version"]): r for r in ModelRepository(tmp_path).describe()}
    assert rows[("ok", "1")]["valid"] is True
    assert rows[("ok", "1")]["tasks"]["sentiment"] == ["negative", "neutral", "positive"]
    assert rows[("ok", "2")]["valid"] is False
    assert "invalid" in rows[("ok", "2")]["error"]


def test_bundled_repository_has_the_default_model() -> None:
    from sentistream.config import BUNDLED_MODELS

    repo = ModelRepository(BUNDLED_MODELS)
    assert "tweet-sentiment" in repo.names()
    rows = [r for r in repo.describe() if r["name"] == "tweet-sentiment"]
    assert rows and all(r["valid"] for r in rows)
