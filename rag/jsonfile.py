"""JSON files written whole or not at all: reports, training records and calibrations are read by
other commands (and by `rag eval show` while a run writes the next one), which must never find
half of one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(path: Path, obj: Any) -> None:
    """`obj` as indented UTF-8 JSON, written to a temporary file that is then renamed over `path`."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)
