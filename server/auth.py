"""Who is asking, and may they: API keys, roles and knowledge-base patterns, checked on every request.

Roles, each including the one before: ``read`` (list bases and documents, search, ask, download
a document), ``write`` (upload and remove documents), ``admin`` (create and delete bases).  A key
holds one role on the bases its patterns match; the rest do not exist for it (lists leave them
out, and asking about one is 403 whether or not it exists).

With no keys created at all, the server is as open as the command line on the same machine:
every request is allowed, and it listens only on a loopback address (`rag api` refuses any other
until a key exists, and this gate refuses every request if it is ever reached another way).
Those keyless requests must name a loopback host and come from no other web origin, so a web
page the user visits cannot drive it through their browser (DNS rebinding, cross-site POSTs).
Once a key exists, every request needs one, loopback included.

401: no key, or one that is not (or no longer) valid.  403: a valid key without the role or the
knowledge base.  429: the caller's rate limit (see server.limits).  All in the one error shape.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from rag.config import is_loopback
from server.errors import APIError
from server.keys import ApiKey, KeyFileError, KeyStore, Role, role_at_least
from server.limits import RateLimiter

# Served to anyone: the API's description and a health check for load balancers.
PUBLIC_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/health"})


@dataclass(frozen=True)
class Principal:
    """The caller of one request: a key, or the local user when no keys exist."""

    id: str
    name: str
    role: Role
    kbs: tuple[str, ...]
    key: ApiKey | None = None

    def may(self, kb: str, role: Role = "read") -> bool:
        if self.key is None:
            return role_at_least(self.role, role)
        return self.key.allows(kb, role)

    def require(self, kb: str, role: Role = "read") -> None:
        """APIError 403 unless the caller may do `role`'s work on `kb`."""
        if self.may(kb, role):
            return
        if self.key is not None and not self.key.covers(kb):
            raise APIError(403, f"this API key ({self.name}) is not for knowledge base {kb!r}", "kb_forbidden")
        raise APIError(403, f"this API key ({self.name}) has the {self.role} role; this needs {role}", "role_forbidden")


LOCAL = Principal("local", "local user, no API keys", "admin", ("*",))


class Access:
    """Turns a request's Authorization header into a Principal, or refuses it."""

    def __init__(self, keys: KeyStore, limiter: RateLimiter, loopback_only: bool) -> None:
        self.keys = keys
        self.limiter = limiter
        self.loopback_only = loopback_only  # the server listens on a loopback address only

    def identify(self, headers: Mapping[str, str], client: str | None) -> Principal:
        """The caller, counted against its rate limit; APIError 401/403/429/500 otherwise.
        `headers`: lower-case names.  `client`: the peer's address."""
        try:
            keys = self.keys.all_keys()
        except KeyFileError as exc:
            raise APIError(500, f"{exc}; every request is refused until it is", "key_file_unreadable") from exc
        if not keys:
            return self._keyless(headers, client)
        token = _bearer(headers.get("authorization", ""))
        key = self.keys.verify(token) if token else None
        self.limiter.take(key.id if key else f"address {client}")
        if key is None:
            if not token:
                raise APIError(
                    401, "this server needs an API key: send 'Authorization: Bearer <key>'", "missing_api_key"
                )
            raise APIError(401, "invalid or revoked API key", "invalid_api_key")
        return Principal(key.id, key.name, key.role, key.kbs, key)

    def _keyless(self, headers: Mapping[str, str], client: str | None) -> Principal:
        if not self.loopback_only:
            raise APIError(
                401,
                "no API keys exist, and this server listens beyond loopback: create one with "
                "`rag keys create --name NAME --kb '*' --role admin`",
                "no_api_keys",
            )
        host = urlsplit("//" + headers.get("host", "")).hostname or ""
        origin = headers.get("origin")
        if not is_loopback(host) or (origin and not is_loopback(urlsplit(origin).hostname or "")):
            raise APIError(
                403,
                "without API keys this server answers only local programs (Host 127.0.0.1 or localhost, no "
                "other web origin); create a key with `rag keys create` to use it from elsewhere",
                "not_local",
            )
        self.limiter.take(f"address {client}")
        return LOCAL


def _bearer(value: str) -> str:
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class Gate:
    """ASGI middleware: every request outside PUBLIC_PATHS is identified before any route or
    the MCP app sees it; the Principal is left in the request's state."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        client = scope.get("client")
        try:
            principal = self.access.identify(headers, client[0] if client else None)
        except APIError as exc:
            await exc.response()(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


# ---- what the routes declare -----------------------------------------------------------------
# Declared so that /docs offers an "Authorize" box; the Gate has already checked the key.
_bearer_scheme = HTTPBearer(auto_error=False, description="an API key from `rag keys create`")


def caller(request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)]) -> Principal:
    """The Principal the Gate identified for this request."""
    return request.state.principal


def needs(role: Role) -> Callable[..., Principal]:
    """A dependency for routes with a {kb} in their path: the caller must hold `role` on it."""

    def check(kb: str, principal: Annotated[Principal, Depends(caller)]) -> Principal:
        principal.require(kb, role)
        return principal

    return check
