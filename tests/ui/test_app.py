"""Starting the UI: how `rag ui` calls Streamlit (loopback by default, the config passed through,
the upload limit enforced by the server too), the optional password, and a broken config."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app as cli
from rag.config import is_loopback, load_settings
from tests.ui.conftest import APP, PAGES, open_app, texts
from ui.launch import PROJECT_ROOT, streamlit_command, streamlit_env


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


@pytest.fixture
def password(monkeypatch: pytest.MonkeyPatch) -> str:
    from ui.auth import shared_brake

    shared_brake.clear()  # a fresh count of wrong passwords, as in a new process
    monkeypatch.setenv("RAG_UI__PASSWORD", "open sesame")
    return "open sesame"


def everything_sent(at) -> str:
    """All the app sent to the browser: every element's text and its whole message."""

    def walk(node) -> list[str]:
        parts = [str(getattr(node, "proto", "")), *(str(getattr(node, a, "")) for a in ("value", "label", "body"))]
        return parts + [text for child in getattr(node, "children", {}).values() for text in walk(child)]

    return "\n".join(walk(at._tree))


def sign_in(at, given: str):
    at.text_input[0].input(given)
    at.button[0].click()
    return at.run()


@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_asks_for_the_password_and_sends_nothing_of_the_bases(
    sample_data: Path, password: str, page: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = open_app(page)
    assert not at.title and [t.label for t in at.text_input] == ["Password"]
    sent = everything_sent(at)
    if page != "evaluation":  # without a password the same page shows the base: the check can fail
        monkeypatch.delenv("RAG_UI__PASSWORD")
        assert "sample" in everything_sent(open_app(page))
    for secret in ("sample", "Helios", "warranty", "海川", "helios-h10"):
        assert secret not in sent, f"{secret!r} reached the browser before the password"
    assert not at.sidebar.children, "not even the navigation"


def test_the_right_password_opens_the_app(data_dir: Path, password: str) -> None:
    at = open_app()
    sign_in(at, "guess")
    assert texts(at.error) == ["Wrong password."] and not at.title
    sign_in(at, password)
    assert [t.value for t in at.title] == ["Chat"]


def test_wrong_passwords_from_one_client_are_slowed_down(data_dir: Path, password: str) -> None:
    at = open_app()
    for _ in range(3):
        sign_in(at, "guess")
        assert texts(at.error) == ["Wrong password."]
    sign_in(at, "guess")
    assert texts(at.error) == ["Wrong password. Try again in 1 s."]
    sign_in(at, password)  # right, but too soon: not even checked
    assert texts(at.error)[0].startswith("Too many wrong passwords. Try again in") and not at.title
    other_tab = open_app()  # a new session from the same client waits too
    sign_in(other_tab, password)
    assert texts(other_tab.error)[0].startswith("Too many wrong passwords") and not other_tab.title


def test_the_brake_doubles_each_wait_and_a_right_password_clears_it() -> None:
    from ui.auth import FREE_ATTEMPTS, MAX_WAIT_S, PasswordBrake

    now = [100.0]
    brake = PasswordBrake(clock=lambda: now[0])
    waits = [brake.failed("1.2.3.4") for _ in range(FREE_ATTEMPTS + 12)]
    assert waits[:FREE_ATTEMPTS] == [0.0] * FREE_ATTEMPTS
    assert waits[FREE_ATTEMPTS : FREE_ATTEMPTS + 4] == [1.0, 2.0, 4.0, 8.0] and waits[-1] == MAX_WAIT_S
    assert brake.wait_s("1.2.3.4") == MAX_WAIT_S and brake.wait_s("5.6.7.8") == 0.0, "per client"
    now[0] += MAX_WAIT_S
    assert brake.wait_s("1.2.3.4") == 0.0
    brake.succeeded("1.2.3.4")
    assert brake.failed("1.2.3.4") == 0.0, "a right password starts the count again"


def test_a_broken_config_is_shown_not_a_traceback(data_dir: Path) -> None:
    Path("rag.toml").write_text("[ui]\nmax_upload_mb = -1\n", encoding="utf-8")
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not at.exception
    assert "invalid settings" in texts(at.error)[0] and "max_upload_mb" in texts(at.error)[0]
