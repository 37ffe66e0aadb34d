"""A knowledge base on a read-only filesystem can be searched, and says plainly that it cannot
be written: it is not "missing"."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.hostile.conftest import rag

pytestmark = pytest.mark.slow


def read_only_mount(folder: Path) -> list[str]:
    """A command prefix that runs its command with `folder` mounted read-only (a private mount
    namespace: nothing changes outside that one command)."""
    unshare = shutil.which("unshare")
    probe = f"mount --bind {folder} {folder} && mount -o remount,ro,bind {folder} {folder}"
    if unshare is None or subprocess.run([unshare, "-m", "sh", "-c", probe], capture_output=True).returncode:
        pytest.skip(
            "needs `unshare -m` and mount (root in a container that allows mount namespaces) for a read-only mount"
        )
    return [unshare, "-m", "sh", "-c", f'{probe} && exec "$0" "$@"']


def test_a_read_only_base_answers_and_refuses_writes(data: Path, docs: Path) -> None:
    assert rag("ingest", str(docs), "--kb", "manuals", data=data).code == 0
    ro = read_only_mount(data)

    listing = rag("kb", "list", data=data, prefix=ro)
    assert listing.code == 0 and "manuals (read-only)" in listing.out, listing.text
    show = rag("kb", "show", "manuals", data=data, prefix=ro)
    assert show.code == 0 and "read-only" in show.out and "warranty.txt" in show.out, show.text
    ask = rag(
        "ask", "How long is the battery covered by the warranty?", "--kb", "manuals", "--json", data=data, prefix=ro
    )
    assert ask.code == 0, ask.text
    assert "warranty.txt" in ask.out and "no knowledge base" not in ask.text

    (docs / "new.txt").write_text("A new document.\n", encoding="utf-8")
    ingest = rag("ingest", str(docs), "--kb", "manuals", data=data, prefix=ro)
    assert ingest.code == 1 and "is read-only" in ingest.err and "nothing can be added" in ingest.err, ingest.text
    assert "Traceback" not in ingest.text
    delete = rag("kb", "delete", "manuals", "--yes", data=data, prefix=ro)
    assert delete.code == 1 and "is read-only" in delete.err
