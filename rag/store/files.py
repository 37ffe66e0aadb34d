"""Durable file operations for the local store: a rename is only a commit once its folder is
fsynced, and a crash may leave a temporary file, never a half-written one under its real name."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    for file in path.iterdir():
        with open(file, "rb") as fh:
            os.fsync(fh.fileno())
    fsync_dir(path)


def replace(src: Path, dst: Path) -> None:
    """Rename `src` to `dst` and make the rename durable."""
    os.replace(src, dst)
    fsync_dir(dst.parent)


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
