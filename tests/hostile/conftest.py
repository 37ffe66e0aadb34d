"""Hostile and careless use, through the real command line: `python -m rag` in its own process,
as a user's shell would run it, with a private data folder."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import MODEL_CACHE, REPO

# Stands for the terminal control a hostile document or file name may carry.
ESC = "\x1b"


@dataclass
class Run:
    code: int
    out: str
    err: str
    peak_mb: float  # the command's peak resident memory

    @property
    def text(self) -> str:
        return self.out + self.err


def user_env(data: Path, **extra: str) -> dict[str, str]:
    """A user's shell: no RAG_* left over from the developer's, this checkout importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    return env | {
        "RAG_DATA_DIR": str(data),
        "RAG_CACHE_DIR": str(MODEL_CACHE),
        "PYTHONPATH": str(REPO),
        "COLUMNS": "200",
        **extra,
    }


# Runs the command as a child and reports the child's own peak memory (RUSAGE_CHILDREN of a
# process with exactly one child), so a test can say a bomb was refused within its limits.
_MEASURE = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    "print('\\npeak-kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
    "sys.exit(r.returncode)"
)


def rag(*args: str, data: Path, cwd: Path | None = None, prefix: list[str] | None = None, **env: str) -> Run:
    """`rag ARGS` as a user runs it; `prefix` wraps it (unshare, setpriv)."""
    cmd = [*(prefix or []), sys.executable, "-c", _MEASURE, sys.executable, "-m", "rag", *args]
    proc = subprocess.run(
        cmd,
        cwd=cwd or data.parent,
        env=user_env(data, **env),
        capture_output=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    err, _, peak = proc.stderr.decode("utf-8", "replace").rpartition("\npeak-kb ")
    return Run(proc.returncode, proc.stdout.decode("utf-8", "replace"), err, int(peak) / 1024)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    """A folder of the user's own: two small documents."""
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "warranty.txt").write_text("The battery is covered by the warranty for ten years.\n", encoding="utf-8")
    (folder / "care.md").write_text("# Care\n\nWipe the casing with a dry cloth once a month.\n", encoding="utf-8")
    return folder
