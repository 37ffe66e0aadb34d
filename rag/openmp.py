"""Idle OpenMP threads given back after a query's torch work, so that generation is not slowed.

torch, and llama.cpp (xllamacpp is built with OpenMP), run their parallel steps on libgomp, which
keeps a pool of worker threads for every thread that has run a parallel region.  Once the threads
it keeps outnumber the cores, libgomp stops spinning at barriers and sleeps in the kernel instead,
for everyone's barriers; a model that decodes a token at a time passes hundreds of them per token.
This matters when idle OpenMP threads spin (OMP_WAIT_POLICY unset, see the README's "OpenMP
threads"): after one query embedding on the main thread, transformers decoded 10.7 pieces/s
instead of 19.5 and llama.cpp on two threads 25 tokens/s instead of 54 (2 cores, idle).  Ending
the pool of the thread that ran the query (OpenMP 5's `omp_pause_resource_all`) lifts the
throttle; the next torch call starts its workers again in well under a millisecond.  Written here
because neither torch nor llama.cpp gives its idle threads back.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Callable
from typing import ClassVar, ParamSpec, TypeVar

__all__ = ["gives_back_threads", "release_idle_threads"]

_OMP_PAUSE_SOFT = 1
P = ParamSpec("P")
R = TypeVar("R")


def release_idle_threads() -> bool:
    """End the calling thread's OpenMP worker pool in every libgomp loaded in the process (torch's,
    and private copies such as scikit-learn's); True when a libgomp took the request.  Nothing
    happens where none is loaded, or inside a parallel region (libgomp refuses)."""
    return any([pause(_OMP_PAUSE_SOFT) == 0 for pause in _pauses()])  # a list: every libgomp is asked


def gives_back_threads(work: Callable[P, R]) -> Callable[P, R]:
    """`work`, followed by `release_idle_threads()` in the same thread, however it ends."""

    @functools.wraps(work)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return work(*args, **kwargs)
        finally:
            release_idle_threads()

    return wrapper


class _Found:
    """The pause functions found, and how many modules were imported when they were looked for."""

    modules: ClassVar[int] = -1
    pauses: ClassVar[list[Callable[[int], int]]] = []


def _pauses() -> list[Callable[[int], int]]:
    """omp_pause_resource_all of each libgomp already in the process; none is ever loaded here.
    Looked for again only after new imports, the way a libgomp arrives: reading /proc/self/maps
    costs about a millisecond, and every search calls this."""
    if len(sys.modules) != _Found.modules:
        _Found.modules = len(sys.modules)
        _Found.pauses = _lookup()
    return _Found.pauses


def _lookup() -> list[Callable[[int], int]]:
    found = []
    for path in _loaded_libgomps():
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        except OSError:
            continue
        pause = getattr(lib, "omp_pause_resource_all", None)
        if pause is not None:
            found.append(pause)
    return found


def _loaded_libgomps() -> list[str]:
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = {line.split(None, 5)[-1].strip() for line in maps if "libgomp" in line}
    except OSError:  # no /proc: not Linux
        return []
    return sorted(p for p in paths if p.startswith("/"))
