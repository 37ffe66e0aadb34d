"""API keys: who may use the server, with which role, on which knowledge bases.

A key is a random token (`rag_` + 32 random bytes, base64url) that is shown once, when it is
created, and never stored: the key file keeps its SHA-256.  A plain hash is enough because the
token has 256 bits of entropy (nothing to guess, so nothing for a slow hash to slow down), and
a stolen key file gives no usable key.  Presented tokens are compared with every stored hash in
constant time.

The file is JSON (never pickle), written whole to a temporary file and renamed over the old one
(a reader sees the old list or the new one), with mode 0600, under a lock so that two `rag keys`
commands cannot lose each other's change.  A running server re-reads it when it changes, so a
revoked key stops working at its next request.  Nothing here logs or prints a token; `rag keys
create` prints the one it has just made.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

Role = Literal["read", "write", "admin"]
ROLES: tuple[Role, ...] = ("read", "write", "admin")  # each includes the ones before it
TOKEN_PREFIX = "rag_"
FORMAT_VERSION = 1
# A knowledge-base pattern: a name (letters, digits, - _ .) with shell wildcards (* ? [...]).
_PATTERN = re.compile(r"[A-Za-z0-9_.\-*?\[\]!]{1,64}")


class KeyFileError(RuntimeError):
    """The key file cannot be read or written; the message names it and says why."""


class KeyProblem(ValueError):
    """A request to `rag keys` that cannot be done as asked (a name taken, a key not found)."""


@dataclass(frozen=True)
class ApiKey:
    """One key as stored: everything but the token itself."""

    id: str
    name: str
    role: Role
    kbs: tuple[str, ...]  # knowledge-base name patterns (fnmatch), e.g. ("sales", "team-*")
    sha256: str
    prefix: str  # the token's first characters, so a user can tell which key is which
    created_at: float

    def allows(self, kb: str, role: Role) -> bool:
        """True when this key may do what `role` allows on knowledge base `kb`."""
        return role_at_least(self.role, role) and self.covers(kb)

    def covers(self, kb: str) -> bool:
        return any(fnmatch.fnmatchcase(kb, pattern) for pattern in self.kbs)


def role_at_least(held: Role, needed: Role) -> bool:
    return ROLES.index(held) >= ROLES.index(needed)


def check_pattern(pattern: str) -> str:
    """A knowledge-base pattern as `--kb` takes it; ValueError saying what is allowed."""
    if not _PATTERN.fullmatch(pattern):
        raise KeyProblem(
            f"{pattern!r} is not a knowledge-base pattern: use a name, or shell wildcards such as 'team-*' or '*'"
        )
    return pattern


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class KeyStore:
    """The key file at `path`: read (cached until it changes), verified against, and edited."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cache: tuple[tuple[int, int, int], tuple[ApiKey, ...]] | None = None
        self._cache_lock = threading.Lock()

    # ---- reading ---------------------------------------------------------------------------
    def all_keys(self) -> tuple[ApiKey, ...]:
        """Every key, re-read only when the file has changed (a stat per call).  No file: none.
        KeyFileError when it cannot be read: a server then refuses every request rather than
        guess that there are no keys."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return ()
        except OSError as exc:
            raise KeyFileError(f"cannot read the API key file {self.path}: {exc.strerror or exc}") from exc
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        with self._cache_lock:
            if self._cache is None or self._cache[0] != stamp:
                self._cache = (stamp, self._read())
            return self._cache[1]

    def _read(self) -> tuple[ApiKey, ...]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return tuple(
                ApiKey(**{**item, "kbs": tuple(item["kbs"])}) for item in data["keys"] if isinstance(item, dict)
            )
        except FileNotFoundError:
            return ()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeyFileError(f"the API key file {self.path} cannot be read ({exc}); fix or remove it") from exc

    def verify(self, token: str) -> ApiKey | None:
        """The key whose token this is, or None.  Every stored hash is compared, in constant time."""
        digest = _digest(token)
        found = None
        for key in self.all_keys():
            if hmac.compare_digest(digest, key.sha256):
                found = key
        return found

    # ---- changing --------------------------------------------------------------------------
    def create(self, name: str, kbs: Sequence[str], role: Role) -> tuple[ApiKey, str]:
        """A new key; returns it and its token, which exists nowhere else from now on."""
        name = name.strip()
        if not name or len(name) > 64 or not name.isprintable():
            raise KeyProblem("give the key a name of 1 to 64 printable characters (--name)")
        if role not in ROLES:
            raise KeyProblem(f"--role must be one of {', '.join(ROLES)}, not {role!r}")
        if not kbs:
            raise KeyProblem("say which knowledge bases the key is for (--kb NAME or --kb 'PATTERN*')")
        patterns = tuple(dict.fromkeys(check_pattern(p) for p in kbs))
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            id="key_" + secrets.token_hex(4),
            name=name,
            role=role,
            kbs=patterns,
            sha256=_digest(token),
            prefix=token[: len(TOKEN_PREFIX) + 6],
            created_at=time.time(),
        )
        with self._editing() as keys:
            if any(k.name == name for k in keys):
                raise KeyProblem(f"a key named {name!r} exists; revoke it first, or choose another name")
            keys.append(key)
        return key, token

    def revoke(self, which: str) -> ApiKey:
        """Remove the key with this name or id; KeyProblem when there is none."""
        with self._editing() as keys:
            hits = [k for k in keys if which in (k.name, k.id)]
            if not hits:
                raise KeyProblem(f"no API key named {which!r}; see `rag keys list`")
            keys[:] = [k for k in keys if k not in hits]
        return hits[0]

    @contextlib.contextmanager
    def _editing(self) -> Iterator[list[ApiKey]]:
        """The list of keys to change in place, under the file's lock; written back if no error."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock = open(self.path.with_name(self.path.name + ".lock"), "a")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise KeyFileError(f"cannot write the API key file {self.path}: {exc.strerror or exc}") from exc
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            keys = list(self._read())
            yield keys
            self._write(keys)

    def _write(self, keys: list[ApiKey]) -> None:
        payload = {"version": FORMAT_VERSION, "keys": [asdict(k) | {"kbs": list(k.kbs)} for k in keys]}
        folder = self.path.parent
        try:
            fd, tmp = tempfile.mkstemp(prefix=".keys-", dir=folder)  # created with mode 0600
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump(payload, fh, indent=1)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.chmod(tmp, 0o600)
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise KeyFileError(f"cannot write the API key file {self.path}: {exc.strerror or exc}") from exc
