"""API keys are kept as hashes in a private JSON file, found by their token, limited to their
role and knowledge bases, and never lost when two commands edit the file at once."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

import pytest

from server.keys import KeyFileError, KeyProblem, KeyStore


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "api" / "keys.json")


def test_a_key_is_stored_as_its_hash_only_in_a_private_file(store: KeyStore) -> None:
    key, token = store.create("alice", ["sales"], "read")
    assert token.startswith("rag_") and len(token) > 40
    text = store.path.read_text()
    assert token not in text and token[10:] not in text, "the token is never written down"
    assert json.loads(text)["keys"][0]["name"] == "alice"
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700
    assert store.verify(token) == key
    assert store.verify(token + "x") is None and store.verify("") is None


def test_roles_include_the_ones_below_and_patterns_choose_the_bases(store: KeyStore) -> None:
    reader = store.create("r", ["sales"], "read")[0]
    writer = store.create("w", ["team-*"], "write")[0]
    admin = store.create("a", ["*"], "admin")[0]
    assert reader.allows("sales", "read") and not reader.allows("sales", "write")
    assert not reader.allows("sales-eu", "read"), "a name is not a prefix"
    assert writer.allows("team-a", "read") and writer.allows("team-b", "write")
    assert not writer.allows("team-a", "admin") and not writer.allows("other", "read")
    assert admin.allows("anything", "admin")


def test_revoked_keys_stop_verifying_even_in_a_store_that_read_the_file_before(store: KeyStore) -> None:
    _, token = store.create("bob", ["*"], "read")
    server_view = KeyStore(store.path)
    assert server_view.verify(token) is not None
    assert store.revoke("bob").name == "bob"
    assert server_view.verify(token) is None
    with pytest.raises(KeyProblem, match="no API key named 'bob'"):
        store.revoke("bob")


def test_bad_requests_are_refused_with_the_reason(store: KeyStore) -> None:
    store.create("alice", ["sales"], "read")
    with pytest.raises(KeyProblem, match="a key named 'alice' exists"):
        store.create("alice", ["sales"], "read")
    with pytest.raises(KeyProblem, match="not a knowledge-base pattern"):
        store.create("bob", ["../etc"], "read")
    with pytest.raises(KeyProblem, match="--role must be one of read, write, admin"):
        store.create("bob", ["*"], "root")  # type: ignore[arg-type]
    with pytest.raises(KeyProblem, match="say which knowledge bases"):
        store.create("bob", [], "read")


def test_an_unreadable_key_file_is_an_error_not_an_empty_list(store: KeyStore) -> None:
    assert store.all_keys() == ()  # no file yet: no keys
    store.path.parent.mkdir(parents=True)
    store.path.write_text("{not json")
    with pytest.raises(KeyFileError, match="cannot be read"):
        store.all_keys()


def test_two_commands_creating_keys_at_once_lose_neither(store: KeyStore) -> None:
    threads = [
        threading.Thread(target=lambda i=i: KeyStore(store.path).create(f"k{i}", ["*"], "read")) for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(k.name for k in store.all_keys()) == [f"k{i}" for i in range(8)]
