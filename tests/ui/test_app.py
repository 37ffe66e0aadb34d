"""Starting the UI: how `rag ui` calls Streamlit (loopback by default, the config passed through,
the upload limit enforced by the server too), the optional password, and a broken config."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from rag.cli import app as cli
from rag.config import load_settings
from tests.ui.conftest import APP, open_app, texts
from ui.launch import PROJECT_ROOT, is_loopback, streamlit_command, streamlit_env


def test_streamlit_is_started_on_loopback_with_the_config_and_the_upload_limit(isolated: Path) -> None:
    settings = load_settings()
    config = isolated / "rag.toml"
    config.write_text("[ui]\nmax_upload_mb = 12.5\n", encoding="utf-8")
    cmd = streamlit_command(settings.ui.host, settings.ui.port, 12.5, config)
    assert cmd[1:5] == ["-m", "streamlit", "run", str(APP)]
    assert "--server.address=127.0.0.1" in cmd and "--server.port=8501" in cmd
    assert "--server.maxUploadSize=13" in cmd and "--server.headless=true" in cmd
    assert "--browser.gatherUsageStats=false" in cmd
    assert cmd[-3:] == ["--", "--config", str(config.resolve())]
    assert "--" not in streamlit_command("127.0.0.1", 9000, 50, None)


def test_the_streamlit_process_imports_this_checkout() -> None:
    env = streamlit_env({"PYTHONPATH": "/elsewhere"})
    assert env["PYTHONPATH"].split(":")[:2] == [str(PROJECT_ROOT), "/elsewhere"]


def test_loopback_addresses() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("my-host")


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], dict[str, str]]]:
    """What `rag ui` would exec (the real exec replaces the process: tested end to end in test_e2e)."""
    calls: list[tuple[list[str], dict[str, str]]] = []
    monkeypatch.setattr("os.execve", lambda path, argv, env: calls.append((list(argv), dict(env))))
    return calls


def test_rag_ui_starts_streamlit_on_loopback_with_the_config_file(isolated: Path, started) -> None:
    config = isolated / "team.toml"
    config.write_text("[ui]\nport = 8600\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["--config", str(config), "ui"])
    assert result.exit_code == 0, result.output
    ((argv, env),) = started
    assert "--server.address=127.0.0.1" in argv and "--server.port=8600" in argv
    assert argv[-2:] == ["--config", str(config.resolve())]
    assert str(PROJECT_ROOT) in env["PYTHONPATH"]
    assert "warning" not in result.output


def test_rag_ui_on_a_network_address_without_a_password_warns(isolated: Path, started) -> None:
    result = CliRunner().invoke(cli, ["ui", "--host", "0.0.0.0", "--port", "9000"])
    assert result.exit_code == 0 and "without a password" in result.output
    assert "--server.address=0.0.0.0" in started[0][0] and "--server.port=9000" in started[0][0]
    quiet = CliRunner().invoke(cli, ["ui", "--host", "0.0.0.0"], env={"RAG_UI__PASSWORD": "s3cret"})
    assert "without a password" not in quiet.output


def test_app_reads_the_config_file_passed_by_rag_ui() -> None:
    from ui.state import config_path

    assert config_path(["--config", "/etc/rag.toml"]) == Path("/etc/rag.toml")
    assert config_path(["--config=/x.toml"]) == Path("/x.toml")
    assert config_path(["-x", "tests/ui"]) is None


def test_password_is_asked_for_before_anything_is_shown(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_UI__PASSWORD", "open sesame")
    at = open_app()
    assert not at.title and [t.label for t in at.text_input] == ["Password"]
    at.text_input[0].input("guess")
    at.button[0].click()
    at.run()
    assert texts(at.error) == ["Wrong password."] and not at.title
    at.text_input[0].input("open sesame")
    at.button[0].click()
    at.run()
    assert [t.value for t in at.title] == ["Chat"]


def test_a_broken_config_is_shown_not_a_traceback(data_dir: Path) -> None:
    Path("rag.toml").write_text("[ui]\nmax_upload_mb = -1\n", encoding="utf-8")
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not at.exception
    assert "invalid settings" in texts(at.error)[0] and "max_upload_mb" in texts(at.error)[0]
