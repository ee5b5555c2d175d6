"""The console's guards: who is signed in, CSRF tokens, and the headers every response gets.

- Sessions are Starlette's signed cookie (``SessionMiddleware``, itsdangerous): HttpOnly,
  SameSite=Lax, and Secure when the request came over TLS (``SecureCookies``: the scheme, or
  ``X-Forwarded-Proto`` when ``[console] trust_forwarded_proto`` says to believe it).
- Every form carries the session's CSRF token; every POST must send it back (``csrf_ok``),
  else 403.
- ``SecurityHeaders`` adds the CSP (no inline scripts or styles), frame denial, nosniff and
  the referrer policy to every response, static files and errors included.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "CSP",
    "PUBLIC_PATHS",
    "SecureCookies",
    "SecurityHeaders",
    "csrf_ok",
    "csrf_token",
    "route_path",
    "signed_in",
]

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
}
PUBLIC_PATHS = ("/login", "/static/")
"""What may be reached without signing in (a path equal to, or under, one of these)."""


def route_path(scope: Scope) -> str:
    """The request's path inside the console (without the prefix it is mounted at)."""
    path: str = scope.get("path", "/")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


def is_public(path: str) -> bool:
    """Whether ``path`` (inside the console) is reachable without a session."""
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in PUBLIC_PATHS)


def signed_in(request: Request) -> str | None:
    """The signed-in user's name, or None."""
    user = request.session.get("user")
    return user if isinstance(user, str) and user else None


def csrf_token(request: Request) -> str:
    """The session's CSRF token (made on first use; a new session gets a new one)."""
    token = request.session.get("csrf")
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def csrf_ok(request: Request, form: Any) -> bool:
    """Whether the form's ``csrf`` field is the session's token (compared in constant
    time); a session without a token never matches."""
    expected = request.session.get("csrf")
    given = form.get("csrf") if form is not None else None
    if not isinstance(expected, str) or not isinstance(given, str) or not expected:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


class SecurityHeaders:
    """ASGI middleware: the security headers on every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    headers[name] = value
                if "cache-control" not in headers:
                    headers["cache-control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


class SecureCookies:
    """ASGI middleware: marks the cookies it sets ``Secure`` when the request came over TLS
    (its scheme is https, or ``trust_forwarded_proto`` and ``X-Forwarded-Proto: https``)."""

    def __init__(self, app: ASGIApp, *, trust_forwarded_proto: bool = False) -> None:
        self.app = app
        self.trust_forwarded_proto = trust_forwarded_proto

    def over_tls(self, scope: Scope) -> bool:
        """Whether the request reached us (or the trusted proxy) over TLS."""
        if scope.get("scheme") == "https":
            return True
        if not self.trust_forwarded_proto:
            return False
        for name, value in scope.get("headers", []):
            if name == b"x-forwarded-proto":
                return bool(value.split(b",")[0].strip().lower() == b"https")
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.over_tls(scope):
            await self.app(scope, receive, send)
            return

        async def send_secure(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                cookies = headers.getlist("set-cookie")
                if cookies:
                    del headers["set-cookie"]
                    for cookie in cookies:
                        secure = "; secure" in cookie.lower()
                        headers.append("set-cookie", cookie if secure else cookie + "; Secure")
            await send(message)

        await self.app(scope, receive, send_secure)
