from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with a real random-weight ONNX model `tiny` (versions 1 and 2)."""
    from sentistream.testing import tiny_model_folder

    root = tmp_path_factory.mktemp("models")
    tiny_model_folder(root, "tiny", "1", seed=1)
    tiny_model_folder(root, "tiny", "2", seed=2)
    return root


@pytest.fixture()
def tiny_classifier(tiny_repo: Path):  # type: ignore[no-untyped-def]
    from sentistream.config import Settings
    from sentistream.runtime import load_classifier

    return load_classifier(
        Settings(model_repository=tiny_repo, model="tiny:1", intra_op_threads=1, batch_size=4)
    )


@pytest.fixture(scope="session")
def sentiment_data() -> Path:
    path = SHARED_DATA / "tweeteval" / "sentiment"
    if not (path / "val_text.txt").exists():
        pytest.skip(f"TweetEval sentiment data not present at {path}")
    return path
