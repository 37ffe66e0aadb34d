"""A brake on password guessing: after a few wrong passwords from one client, each further
attempt waits longer (doubling, up to MAX_WAIT_S) before another is even checked.

Kept per client address and shared by every session of the process, so opening a new browser tab
does not reset it; a right password clears it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import streamlit as st

FREE_ATTEMPTS = 3
MAX_WAIT_S = 300.0


@dataclass
class _Record:
    failures: int = 0
    blocked_until: float = 0.0


class PasswordBrake:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.records: dict[str, _Record] = {}

    def wait_s(self, client: str) -> float:
        """Seconds before `client` may try again (0: now)."""
        with self.lock:
            record = self.records.get(client)
            return max(0.0, record.blocked_until - self.clock()) if record else 0.0

    def failed(self, client: str) -> float:
        """Count a wrong password; returns the wait it earned."""
        with self.lock:
            record = self.records.setdefault(client, _Record())
            record.failures += 1
            extra = record.failures - FREE_ATTEMPTS
            wait = min(MAX_WAIT_S, 2.0 ** (extra - 1)) if extra > 0 else 0.0
            record.blocked_until = self.clock() + wait
            return wait

    def succeeded(self, client: str) -> None:
        with self.lock:
            self.records.pop(client, None)


@st.cache_resource(show_spinner=False)
def shared_brake() -> PasswordBrake:
    """One per process: every session from one address shares its count of wrong passwords."""
    return PasswordBrake()
