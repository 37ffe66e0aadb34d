"""Uploaded files (web UI, API) land only in the base's own folder, under plain names, never over another
file; files too large, of no readable type, or unpacking past the ingest's limits are refused unwritten."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.loaders import ArchiveLimits
from ingest.uploads import files_dir, is_upload, safe_filename, store_upload
from tests.fixtures.bombs import docx_bomb

LIMIT = 1024 * 1024


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("../../etc/passwd.txt", "passwd.txt"),
        ("..\\..\\Windows\\evil.PDF", "evil.pdf"),
        ("/abs/path/report.md", "report.md"),
        (".hidden.txt", "hidden.txt"),
        ("..", "upload"),
        ('a<b>:c"d|e?f*.txt', "a_b__c_d_e_f_.txt"),
        ("tab\there\x00.txt", "tab_here_.txt"),
        ("说明书 第二版.pdf", "说明书 第二版.pdf"),
        ("x" * 300 + ".pdf", "x" * 100 + ".pdf"),
    ],
)
def test_names_are_reduced_to_a_plain_visible_file_name(given: str, expected: str) -> None:
    assert safe_filename(given) == expected


def test_a_path_in_the_name_cannot_leave_the_files_folder(tmp_path: Path) -> None:
    kb = tmp_path / "kb" / "docs"
    stored = store_upload(kb, "../../../outside.txt", b"hello", LIMIT, "1 MB")
    assert stored.status == "saved" and stored.path == files_dir(kb) / "outside.txt"
    assert stored.path.read_bytes() == b"hello"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["outside.txt"]


def test_same_name_other_content_gets_a_new_name_and_same_content_is_recognised(tmp_path: Path) -> None:
    first = store_upload(tmp_path, "notes.txt", b"version one", LIMIT, "1 MB")
    second = store_upload(tmp_path, "notes.txt", b"version two", LIMIT, "1 MB")
    again = store_upload(tmp_path, "notes.txt", b"version two", LIMIT, "1 MB")
    assert first.path.name == "notes.txt" and first.path.read_bytes() == b"version one"
    assert second.status == "saved" and second.path.name == "notes-2.txt"
    assert "saved as notes-2.txt" in second.message
    assert again.status == "already there" and again.path == second.path
    assert sorted(p.name for p in files_dir(tmp_path).iterdir()) == ["notes-2.txt", "notes.txt"]


def test_too_big_empty_and_unsupported_files_are_refused_with_the_reason(tmp_path: Path) -> None:
    big = store_upload(tmp_path, "big.pdf", b"x" * 2048, 1024, "0.001 MB (api.max_upload_mb)")
    assert big.status == "rejected" and big.too_large
    assert big.message == "big.pdf is 0.0 MB, over the upload limit of 0.001 MB (api.max_upload_mb)"
    assert store_upload(tmp_path, "empty.txt", b"", LIMIT, "1 MB").message == "empty.txt is empty"
    exe = store_upload(tmp_path, "setup.exe", b"MZ", LIMIT, "1 MB")
    assert exe.status == "rejected" and "unsupported file type .exe" in exe.message and ".pdf" in exe.message
    assert not files_dir(tmp_path).exists() or not any(files_dir(tmp_path).iterdir())


def test_is_upload_only_for_the_bases_own_copies(tmp_path: Path) -> None:
    stored = store_upload(tmp_path, "a.txt", b"a", LIMIT, "1 MB")
    assert is_upload(tmp_path, stored.path)
    assert not is_upload(tmp_path, tmp_path / "a.txt")


def test_a_zip_bomb_is_refused_before_it_is_written(tmp_path: Path) -> None:
    bomb = docx_bomb(tmp_path / "src" / "bomb.docx", 24).read_bytes()
    limits = ArchiveLimits(max_unpacked_mb=16, max_ratio=100)
    stored = store_upload(tmp_path / "kb", "report.docx", bomb, LIMIT * 8, "8 MB", limits)
    assert stored.status == "rejected" and stored.too_large
    assert "unpacks to" in stored.message and "decompression bomb" in stored.message
    assert not files_dir(tmp_path / "kb").exists()
    # Without the limits (the caller checks elsewhere) it is just a file.
    assert store_upload(tmp_path / "kb", "report.docx", bomb, LIMIT * 8, "8 MB").status == "saved"
