"""Text from documents and file names, made safe to print on a terminal.

A document (or a file name) may hold control sequences: ESC[2K erases a line, ESC[1A moves up,
OSC 52 writes the clipboard, a bidirectional override reorders what is shown.  Printed raw, a
document could rewrite what the user sees.  Everything the CLI prints that came from a document,
a file name or a model goes through :func:`printable` first.
"""

from __future__ import annotations

import re

# C0 controls (but tab and newline, which are layout), DEL, C1 controls, and the bidirectional
# embeddings, overrides and isolates.
# Lone surrogates: the bytes of a file name that are not UTF-8 (Python keeps byte B as U+DC00+B).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_CONTROL_ONE_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte of a file name: show the byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, *, one_line: bool = False) -> str:
    """`text` with every control character shown as an escape (``\\x1b``), so it is seen, not
    obeyed; with `one_line`, tabs and newlines are escaped too (file names, table cells).
    The bytes of a file name that are not UTF-8 are shown as escapes as well."""
    return (_CONTROL_ONE_LINE if one_line else _CONTROL).sub(_escape, text)
