"""`--kb` is a name, never a path: `rag kb delete` can remove nothing but a knowledge base inside
the data directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from rag.embed import EmbedderIdentity
from rag.store.local import LocalStore
from rag.store.local import exists as local_exists
from tests.hostile.conftest import rag, user_env

RULE = "letters, digits, '-', '_' and '.'"
MINILM = EmbedderIdentity("sentence-transformers/all-MiniLM-L6-v2", 384, True)


def make_base(data: Path, name: str) -> Path:
    """A real (empty) knowledge base, without loading a model."""
    root = data / "kb" / name
    LocalStore.create(root, MINILM).close()
    return root


def test_a_folder_given_as_kb_is_neither_written_nor_deleted(data: Path, docs: Path) -> None:
    # The first report: `rag ingest ~/docs --kb ~/docs && rag kb delete ~/docs --yes`.
    before = sorted(p.name for p in docs.iterdir())
    ingest = rag("ingest", str(docs), "--kb", str(docs), data=data)
    assert ingest.code == 2 and RULE in ingest.err, ingest.text
    delete = rag("kb", "delete", str(docs), "--yes", data=data)
    assert delete.code == 2 and RULE in delete.err, delete.text
    assert sorted(p.name for p in docs.iterdir()) == before and not (docs / "kb.sqlite").exists()
    assert "Traceback" not in ingest.text + delete.text


def test_dot_cannot_delete_every_knowledge_base(data: Path, docs: Path) -> None:
    # The second: `rag ingest x --kb . && rag kb delete . --yes` deleted all of them.
    keep = make_base(data, "keep")
    assert rag("ingest", str(docs), "--kb", ".", data=data).code == 2
    delete = rag("kb", "delete", ".", "--yes", data=data)
    assert delete.code == 2 and RULE in delete.err
    assert local_exists(keep)


NAMES = [".", "..", "../escape", "a/b", "/tmp/x", "x" * 300, "", ".hidden", "bad\x1b[2Kname", "new\nline"]
COMMANDS = [
    ["ingest", "{docs}", "--kb", "{name}"],
    ["ask", "what is covered?", "--kb", "{name}"],
    ["chat", "--kb", "{name}"],
    ["kb", "show", "{name}"],
    ["kb", "rm", "{name}", "warranty.txt"],
    ["kb", "delete", "{name}", "--yes"],
    ["eval", "answers", "--qa", "{docs}/qa.jsonl", "--kb", "{name}"],
    ["tune", "data", "--kb", "{name}", "--qa", "{docs}/qa.jsonl", "--out", "{docs}/sft.jsonl"],
]


@pytest.mark.parametrize("name", NAMES, ids=repr)
def test_every_command_refuses_a_name_that_is_not_one_with_the_rule(isolated: Path, docs: Path, name: str) -> None:
    """In-process (the same `rag` app) to cover every command and name quickly; exit 2, one line."""
    data = isolated / "data"
    (docs / "qa.jsonl").write_text('{"id": "1", "question": "q?", "answers": ["a"]}\n', encoding="utf-8")
    for command in COMMANDS:
        args = [part.format(docs=docs, name=name) for part in command]
        result = CliRunner().invoke(app, args, env=user_env(data))
        assert result.exit_code == 2, (args, result.output)
        assert RULE in result.output and "Traceback" not in result.output, (args, result.output)
        assert "\x1b" not in result.output, "a name is shown escaped, never obeyed"
    assert not (data / "kb").exists() or not any((data / "kb").iterdir())
    assert not list(isolated.rglob("kb.sqlite")), "no base was created anywhere"


def test_kb_delete_leaves_a_folder_that_is_not_a_knowledge_base_alone(data: Path) -> None:
    notes = data / "kb" / "notes"
    notes.mkdir(parents=True)
    (notes / "mine.txt").write_text("not rag's", encoding="utf-8")
    result = rag("kb", "delete", "notes", "--yes", data=data)
    assert result.code == 2 and "no knowledge base named 'notes'" in result.err
    assert (notes / "mine.txt").read_text(encoding="utf-8") == "not rag's"


def test_kb_delete_and_rm_never_follow_a_link_out_of_the_data_directory(data: Path, tmp_path: Path) -> None:
    outside = make_base(tmp_path / "elsewhere", "real")
    (data / "kb").mkdir(parents=True)
    (data / "kb" / "linked").symlink_to(outside)
    delete = rag("kb", "delete", "linked", "--yes", data=data)
    assert delete.code == 2 and "symbolic link" in delete.err, delete.text
    rm = rag("kb", "rm", "linked", "anything.txt", data=data)
    assert rm.code == 2 and "symbolic link" in rm.err, rm.text
    assert local_exists(outside)


def test_kb_delete_removes_a_real_base_and_only_it(data: Path) -> None:
    gone, kept = make_base(data, "old-notes"), make_base(data, "manuals")
    result = rag("kb", "delete", "old-notes", "--yes", data=data)
    assert result.code == 0 and "deleted old-notes" in result.out
    assert not gone.exists() and local_exists(kept)
