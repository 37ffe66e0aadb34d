"""The Knowledge bases page, driven like a user would: create, upload, read the table, remove,
delete — and see what another process commits, never what it has only half written."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.store.local import LocalStore
from rag.store.local import exists as local_exists
from tests.ui.conftest import open_app, texts

pytestmark = pytest.mark.slow


def create(at, name: str):
    at.text_input(key="new_kb_name").input(name)
    at.button[0].click()  # the form's submit button comes first on the page
    return at.run()


def upload(at, *files: tuple[str, bytes]):
    for name, data in files:
        at.file_uploader[0].upload(name, data)
    at.run()
    at.button(key="add_files").click()
    return at.run()


def documents(at) -> list[dict]:
    """The document table, as rows."""
    return at.dataframe[-1].value.to_dict("records")


def test_create_a_knowledge_base(data_dir: Path) -> None:
    at = open_app("knowledge")
    assert "No knowledge base yet" in texts(at.info)[0]
    create(at, "manuals")
    assert "Knowledge base 'manuals' created" in texts(at.success)[0]
    assert local_exists(data_dir / "kb" / "manuals")
    assert at.dataframe[0].value["Knowledge base"].tolist() == ["manuals"]
    assert at.selectbox[0].value == "manuals"  # the new base is the one being managed


@pytest.mark.parametrize(
    ("name", "reason"),
    [("../escape", "Use letters, digits"), ("", "Give the knowledge base a name"), ("taken", "already exists")],
)
def test_bad_names_are_refused_with_the_reason(data_dir: Path, name: str, reason: str) -> None:
    at = open_app("knowledge")
    create(at, "taken")
    create(at, name)
    assert any(reason in e for e in texts(at.error))
    assert sorted(p.name for p in (data_dir / "kb").iterdir()) == ["taken"]


def test_uploaded_pdf_is_ingested_and_listed_with_pages_and_passages(data_dir: Path, pdf_file: Path) -> None:
    at = open_app("knowledge")
    create(at, "manuals")
    upload(at, ("handbook.pdf", pdf_file.read_bytes()))
    assert "Added 1 document" in texts(at.success)[0]
    (row,) = documents(at)
    assert (row["Document"], row["Status"], row["Pages"]) == ("handbook.pdf", "ready", 3)
    assert row["Passages"] >= 1 and row["Reason"] == ""
    assert (data_dir / "kb" / "manuals" / "files" / "handbook.pdf").read_bytes() == pdf_file.read_bytes()
    assert at.file_uploader[0].value == []  # a fresh uploader, ready for the next files


def test_upload_names_are_sanitized_never_overwrite_and_failures_say_why(data_dir: Path) -> None:
    at = open_app("knowledge")
    create(at, "notes")
    upload(
        at,
        ("../../../escape.txt", b"The first note talks about pumps and valves."),
        ("broken.pdf", b"%PDF-1.4 this is not really a pdf"),
    )
    upload(at, ("escape.txt", b"A different note about solar panels."))
    files = data_dir / "kb" / "notes" / "files"
    assert sorted(p.name for p in files.iterdir()) == ["broken.pdf", "escape-2.txt", "escape.txt"]
    assert not (data_dir / "escape.txt").exists() and not (data_dir.parent / "escape.txt").exists()
    rows = {r["Document"]: r for r in documents(at)}
    assert rows["escape.txt"]["Status"] == rows["escape-2.txt"]["Status"] == "ready"
    assert rows["broken.pdf"]["Status"] == "failed"
    assert "not a readable PDF" in rows["broken.pdf"]["Reason"]


def test_a_file_over_the_size_limit_is_refused_with_a_clear_message(data_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("RAG_UI__MAX_UPLOAD_MB", "0.001")
    at = open_app("knowledge")
    create(at, "small")
    upload(at, ("big.txt", b"word " * 1000))
    assert any("big.txt is 0.0 MB, over the upload limit of 0.001 MB (ui.max_upload_mb)" in e for e in texts(at.error))
    assert not (data_dir / "kb" / "small" / "files" / "big.txt").exists()
    assert "No documents yet" in " ".join(texts(at.info))


def test_removing_a_document_asks_first_and_removes_the_stored_file(data_dir: Path) -> None:
    at = open_app("knowledge")
    create(at, "notes")
    upload(at, ("keep.txt", b"Keep this note about pumps."), ("drop.txt", b"Drop this note about valves."))
    with LocalStore.open(data_dir / "kb" / "notes") as kb:
        doc_id = next(d.doc_id for d in kb.documents() if d.path.endswith("drop.txt"))
    at.multiselect(key="remove_notes").set_value([doc_id])
    at.run()
    assert at.button(key="remove_go_notes").disabled  # not without the confirmation
    at.checkbox(key="remove_confirm_notes").check()
    at.run()
    at.button(key="remove_go_notes").click()
    at.run()
    assert "Removed 1 document" in texts(at.success)[0]
    assert [r["Document"] for r in documents(at)] == ["keep.txt"]
    assert sorted(p.name for p in (data_dir / "kb" / "notes" / "files").iterdir()) == ["keep.txt"]


def test_deleting_a_base_needs_its_name_typed(data_dir: Path) -> None:
    at = open_app("knowledge")
    create(at, "old")
    at.text_input(key="delete_confirm_old").input("ol")
    at.run()
    assert at.button(key="delete_go_old").disabled
    at.text_input(key="delete_confirm_old").input("old")
    at.run()
    at.button(key="delete_go_old").click()
    at.run()
    assert "Knowledge base 'old' deleted" in texts(at.success)[0]
    assert not (data_dir / "kb" / "old").exists()
    assert "No knowledge base yet" in texts(at.info)[0]


def test_commits_by_another_process_show_up_and_uncommitted_work_never_does(data_dir: Path, pdf_file) -> None:
    at = open_app("knowledge")
    create(at, "shared")
    upload(at, ("handbook.pdf", pdf_file.read_bytes()))
    # A base being created right now (no committed metadata yet) is not offered.
    (data_dir / "kb" / "half").mkdir()
    (data_dir / "kb" / "half" / "kb.sqlite").write_bytes(b"")
    with LocalStore.open(data_dir / "kb" / "shared") as kb, kb.writer() as writer:
        writer.put_document(path=str(data_dir / "late.txt"), status="failed", error="could not parse")
        at.run()  # the writer's transaction is open: the page still shows the last generation
        assert [r["Document"] for r in documents(at)] == ["handbook.pdf"]
        assert at.selectbox[0].options == ["shared"]
        writer.commit()
    at.run()
    assert [r["Document"] for r in documents(at)] == ["handbook.pdf", "late.txt"]
