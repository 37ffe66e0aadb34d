"""The UI's pages run in-process with Streamlit's AppTest (no browser), against a private data
folder and the repo's converted LLM cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import MODEL_CACHE, REPO

APP = REPO / "ui" / "app.py"
PAGES = {
    "chat": "views/chat.py",
    "knowledge": "views/knowledge_bases.py",
    "evaluation": "views/evaluation.py",
}


@pytest.fixture
def data_dir(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The app reads its settings like `rag ui` does: from the environment (and no rag.toml)."""
    data = isolated / "data"
    monkeypatch.setenv("RAG_DATA_DIR", str(data))
    monkeypatch.setenv("RAG_CACHE_DIR", str(MODEL_CACHE))
    monkeypatch.setenv("RAG_LLM__MAX_NEW_TOKENS", "48")  # keeps the real model quick
    return data


@pytest.fixture
def sample_data(data_dir: Path, sample_kb_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The app on the demo corpus, ingested once per session."""
    monkeypatch.setenv("RAG_DATA_DIR", str(sample_kb_dir))
    return sample_kb_dir


def open_app(page: str = "chat"):
    """The app as a browser session would see it, on one of its pages."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=240)
    at.run()
    if page != "chat":
        at.switch_page(PAGES[page]).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(elements) -> list[str]:
    return [str(e.value) for e in elements]


def all_markdown(at) -> str:
    return "\n".join(texts(at.markdown))
