"""`rag keys` as a user types it: a key printed once and kept only as a hash, listed without it,
revoked; and `rag api`, which will not listen beyond loopback before a key exists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app


@pytest.fixture
def run(isolated: Path):
    env = {"RAG_DATA_DIR": str(isolated / "data"), "COLUMNS": "200"}

    def invoke(*args: str):
        return CliRunner().invoke(app, list(args), env=env)

    return invoke


def test_create_prints_the_key_once_and_keeps_only_its_hash(run, isolated: Path) -> None:
    created = run("keys", "create", "--name", "open-webui", "--kb", "sales", "--kb", "team-*", "--role", "write")
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()
    assert token.startswith("rag_") and "\n" not in token, "standard output is the key alone"
    assert "shown only now" in created.stderr and "write on sales, team-*" in created.stderr
    stored = (isolated / "data" / "api" / "keys.json").read_text()
    assert token not in stored and json.loads(stored)["keys"][0]["role"] == "write"

    listed = run("keys", "list")
    assert listed.exit_code == 0 and token not in listed.output
    row = next(line for line in listed.output.splitlines() if "open-webui" in line)
    assert "write" in row and "sales, team-*" in row and token[:10] in row


def test_revoke_by_name_and_the_exit_statuses(run) -> None:
    assert run("keys", "create", "--name", "bot", "--kb", "*").exit_code == 0
    assert run("keys", "create", "--name", "bot", "--kb", "*").exit_code == 2  # the name is taken
    assert run("keys", "create", "--name", "x", "--kb", "a/b").exit_code == 2
    assert run("keys", "create", "--name", "x", "--kb", "*", "--role", "root").exit_code == 2
    revoked = run("keys", "revoke", "bot")
    assert revoked.exit_code == 0 and "revoked API key 'bot'" in revoked.output
    again = run("keys", "revoke", "bot")
    assert again.exit_code == 2 and "no API key named 'bot'" in again.output
    assert "no API keys" in run("keys", "list").output


def test_api_refuses_another_address_until_a_key_exists(run) -> None:
    refused = run("api", "--host", "0.0.0.0")
    assert refused.exit_code == 2
    assert "refusing to listen on 0.0.0.0 with no API keys" in refused.output and "rag keys create" in refused.output
