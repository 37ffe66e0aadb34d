"""JSON and JSONL files written whole or not at all: reports, training records, calibrations and
question sets are read by other commands (and by `rag eval show` while a run writes the next
one), which must never find half of one."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def write_json(path: Path, obj: Any) -> None:
    """`obj` as indented UTF-8 JSON, written to a temporary file that is then renamed over `path`."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)


def write_jsonl(path: Path, rows: Iterable[Any]) -> None:
    """One JSON object per line, in UTF-8, written beside `path` and renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
