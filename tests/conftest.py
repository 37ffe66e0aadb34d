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


def ctrl_c_works() -> None:
    """preexec_fn for a child the test stops with SIGINT, as Ctrl-C would.  A test run started in
    the background of a script (`cmd &`, nohup) ignores SIGINT, children inherit that, and a
    Python started with SIGINT ignored never raises KeyboardInterrupt: restore the default."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or a skip: a user's clone has no ../shared."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the team's shared data folder beside the repo), absent here")
    return path


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No RAG_* variables from the developer's shell and no rag.toml from their cwd."""
    for key in list(os.environ):
        if key.startswith("RAG_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def settings(isolated: Path):
    """Settings with a private data dir."""
    from rag.config import load_settings

    return load_settings(data_dir=isolated / "data")


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


# ---- answering: the real default LLM and a knowledge base of the sample documents ------------
MODEL_CACHE = REPO / ".cache" / "rag"  # the packaged SmolLM2 is converted here once (~1 min)
SAMPLES = REPO / "samples" / "docs"


def qa_settings(data_dir: Path, **overrides):
    """Settings for answering tests: a short generation budget keeps the real model quick."""
    from rag.config import load_settings

    llm = {"max_new_tokens": 48, **overrides.pop("llm", {})}
    return load_settings(data_dir=data_dir, cache_dir=MODEL_CACHE, llm=llm, **overrides)


@pytest.fixture(scope="session")
def chat_model():
    from rag.llm import make_chat_model

    return make_chat_model(qa_settings(REPO / ".cache" / "unused"))


@pytest.fixture(scope="session")
def sample_kb_dir(tmp_path_factory: pytest.TempPathFactory, embedder) -> Path:
    """The demo corpus (samples/docs) ingested once per session; tests open it read-only."""
    from ingest.pipeline import IngestPipeline, open_for_ingest

    data = tmp_path_factory.mktemp("sample-data")
    settings = qa_settings(data)
    with open_for_ingest(settings, "sample", embedder) as kb:
        report = IngestPipeline(settings, embedder, kb).run([SAMPLES])
    assert report.added == 5 and report.exit_code == 0
    return data
