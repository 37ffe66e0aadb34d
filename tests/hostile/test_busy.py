"""A base being written is "busy, try again": exit 75 (EX_TEMPFAIL) from every command that
writes, not a usage error."""

from __future__ import annotations

from pathlib import Path

from rag.store.local import LocalStore
from rag.store.local import exists as local_exists
from tests.hostile.conftest import rag

BUSY = 75


def test_ingest_rm_and_delete_say_busy_with_the_same_code(data: Path, docs: Path) -> None:
    assert rag("ingest", str(docs), "--kb", "shared", data=data).code == 0
    (docs / "new.txt").write_text("Something new to ingest.\n", encoding="utf-8")
    root = data / "kb" / "shared"
    with LocalStore.open(root) as kb, kb.writer():  # another process is writing
        runs = {
            "ingest": rag("ingest", str(docs), "--kb", "shared", data=data),
            "rm": rag("kb", "rm", "shared", "warranty.txt", data=data),
            "delete": rag("kb", "delete", "shared", "--yes", data=data),
        }
    for command, run in runs.items():
        assert run.code == BUSY, (command, run.text)
        assert "is being written by another process" in run.err and "try again" in run.err, (command, run.err)
        assert "Traceback" not in run.text
    assert local_exists(root)
    assert rag("ingest", str(docs), "--kb", "shared", data=data).code == 0, "free again: the same command works"
