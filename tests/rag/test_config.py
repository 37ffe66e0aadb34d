"""One Settings object: defaults with no file, rag.toml, --config, RAG_* overrides, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def clean_env(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(isolated / "xdg"))


def test_defaults_work_with_no_file(tmp_path: Path) -> None:
    s = load_settings()
    assert s.embed.model == "sentence-transformers/all-MiniLM-L6-v2"
    assert s.data_dir == tmp_path / "xdg" / "rag"
    assert s.kb_dir("docs") == tmp_path / "xdg" / "rag" / "kb" / "docs"
    assert 0 <= s.chunk.overlap < s.chunk.size


def test_rag_toml_in_the_current_folder_is_read(tmp_path: Path) -> None:
    (tmp_path / "rag.toml").write_text('data_dir = "~/kbs"\n[chunk]\nsize = 120\noverlap = 10\n')
    s = load_settings()
    assert s.data_dir == Path("~/kbs").expanduser()
    assert (s.chunk.size, s.chunk.overlap) == (120, 10)


def test_env_overrides_the_file_and_nested_keys_use_double_underscore(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "rag.toml").write_text("[chunk]\nsize = 120\n[embed]\nbatch_size = 8\n")
    monkeypatch.setenv("RAG_CHUNK__SIZE", "200")
    monkeypatch.setenv("RAG_DATA_DIR", str(tmp_path / "env-data"))
    s = load_settings()
    assert s.chunk.size == 200  # env wins
    assert s.embed.batch_size == 8  # file still applies where env is silent
    assert s.data_dir == tmp_path / "env-data"


def test_explicit_config_path(tmp_path: Path) -> None:
    other = tmp_path / "profiles" / "test.toml"
    other.parent.mkdir()
    other.write_text('default_kb = "papers"\n')
    (tmp_path / "rag.toml").write_text('default_kb = "ignored"\n')
    assert load_settings(other).default_kb == "papers"


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")


def test_a_typo_in_the_file_is_an_error_not_silence(tmp_path: Path) -> None:
    (tmp_path / "rag.toml").write_text("[chunk]\nsise = 100\n[retrieve]\ntopk = 3\n")
    with pytest.raises(ConfigError, match=r"rag\.toml") as err:
        load_settings()
    assert "chunk.sise: not a setting; did you mean 'chunk.size'?" in str(err.value)
    assert "retrieve.topk: not a setting; did you mean 'retrieve.top_k'?" in str(err.value)


def test_a_bad_environment_value_names_the_variable_and_nothing_internal(monkeypatch) -> None:
    monkeypatch.setenv("RAG_RETRIEVE__TOP_K", "ten")
    monkeypatch.setenv("RAG_LLM__API_KEY", "sk-123")
    monkeypatch.setenv("RAG_LLM__BACKEND", "vllm")
    with pytest.raises(ConfigError) as err:
        load_settings()
    lines = str(err.value).splitlines()
    assert lines[0] == "invalid settings:"
    assert sorted(lines[1:]) == [
        "  llm.backend = 'vllm' (from RAG_LLM__BACKEND): Input should be 'local' or 'openai'",
        "  retrieve.top_k = 'ten' (from RAG_RETRIEVE__TOP_K): Input should be a valid integer,"
        " unable to parse string as an integer",
    ]
    assert "_FileSettings" not in str(err.value) and "errors.pydantic.dev" not in str(err.value)


def test_overlap_must_be_below_size(tmp_path: Path) -> None:
    (tmp_path / "rag.toml").write_text("[chunk]\nsize = 50\noverlap = 50\n")
    with pytest.raises(ConfigError, match="overlap"):
        load_settings()


def test_bad_toml_syntax_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "rag.toml").write_text("[chunk\nsize = 1\n")
    with pytest.raises(ConfigError, match=r"rag\.toml"):
        load_settings()
