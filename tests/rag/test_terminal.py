"""Text from documents, file names and models is shown on the terminal, never obeyed."""

from __future__ import annotations

import os

import pytest

from rag.terminal import printable


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain 文本 café", "plain 文本 café"),
        ("erase\x1b[2K", "erase\\x1b[2K"),
        ("up\x1b[1A", "up\\x1b[1A"),
        ("clip\x1b]52;c;ZXZpbA==\x07", "clip\\x1b]52;c;ZXZpbA==\\x07"),
        ("c1\x9b31m", "c1\\x9b31m"),
        ("rtl\u202eexe.txt", "rtl\\u202eexe.txt"),
        ("del\x7f", "del\\x7f"),
        (os.fsdecode(b"caf\xe9.txt"), "caf\\xe9.txt"),
    ],
)
def test_control_characters_are_shown_as_escapes(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def test_layout_survives_in_text_and_not_in_one_line() -> None:
    assert printable("line one\n\tline two") == "line one\n\tline two"
    assert printable("name\nwith\tbreaks", one_line=True) == "name\\x0awith\\x09breaks"


def test_a_streamed_answer_is_printed_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    from cli.ask import stream_answer
    from rag.qa import Answer

    class FakeQA:
        def stream(self, question, history, **kw):
            yield "The model copied \x1b[2Kthis"
            yield Answer(question, "The model copied \x1b[2Kthis", False, "en", question)

    stream_answer(FakeQA(), "q", ())
    assert "\x1b" not in capsys.readouterr().out
