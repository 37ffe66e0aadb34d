"""Shared fixtures: isolated settings, the real default embedder, and documents written on the fly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fixtures.documents import write_pdf

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"


def pytest_configure(config: pytest.Config) -> None:
    # Nothing in the test suite may reach the network: the default models are packaged.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or a skip: a user's clone has no ../shared."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the team's shared data folder beside the repo), absent here")
    return path


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Settings with a private data dir, no rag.toml from the developer's cwd, no RAG_* leaks."""
    from rag.config import load_settings

    for key in list(os.environ):
        if key.startswith("RAG_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return load_settings(data_dir=tmp_path / "data")


@pytest.fixture(scope="session")
def embedder():
    """The real default embedding model, loaded once per test session."""
    from rag.config import EmbedSettings
    from rag.embed import Embedder

    emb = Embedder(EmbedSettings())
    emb.model  # noqa: B018 - load now, so tests time their own work
    return emb


@pytest.fixture
def pdf_file(tmp_path: Path) -> Path:
    """A three-page PDF with a text layer; page N says 'page N' and a distinct fact."""
    return write_pdf(
        tmp_path / "docs" / "handbook.pdf",
        [
            ["Page one is about installation.", "The unit weighs 120 kilograms."],
            ["Page two is about warranty.", "The warranty lasts ten years."],
            ["Page three is about cleaning.", "Wipe the casing with a dry cloth."],
        ],
    )
