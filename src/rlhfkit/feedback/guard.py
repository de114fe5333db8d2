"""What every request meets before a handler: security headers, the bearer token, failed-login limits, body size.

Order matters. The token is checked from the headers alone, before a byte of the body is read, so a caller
without a valid token cannot make the server receive, buffer or parse anything (a 20 MB body with no token
costs one header check). Then the body is read up to the limit (from Content-Length when given, and counted
while it streams in) and handed on; anything larger is a 413.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from typing import Awaitable, Callable, Optional

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY = 1024 * 1024  # bytes; the largest real body (an edit and a comment of 100 000 characters) fits
MAX_TOKEN = 512  # characters; real tokens are 43, and a longer one is not looked up
LOGIN_FAILURES, LOGIN_WINDOW = 10, 60.0  # this many bad tokens from one address within this many seconds: 429
MAX_CLIENTS = 10_000  # addresses whose failures are remembered
PUBLIC_API = {"/api/openapi.json"}  # under /api but readable without a token
# The page is one HTML file with its script and style sheet from /static: nothing inline, nothing from elsewhere
# (a task's clip plays from a blob: URL the page made from the audio it fetched with its token).
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; media-src blob:; "
                                 b"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]

audit = logging.getLogger("rlhfkit.feedback.audit")


def error_response(status: int, field: str, problem: str, headers: Optional[dict] = None) -> JSONResponse:
    """The API's error shape: ``{"detail": "field: problem", "field": field}``."""
    headers = {**(headers or {}), **({"WWW-Authenticate": "Bearer"} if status == 401 else {})}
    detail = f"{field}: {problem}" if field else problem
    return JSONResponse({"detail": detail, "field": field}, status_code=status, headers=headers)


def with_security_headers(send: Send, path: str) -> Send:
    """``send`` that puts the security headers on the response (and no-store on API replies: they carry tokens)."""
    extra = SECURITY_HEADERS + ([(b"cache-control", b"no-store")] if path.startswith("/api/") else [])

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            present = {k.lower() for k, _ in message.get("headers", [])}
            message["headers"] = list(message.get("headers", [])) + [(k, v) for k, v in extra if k not in present]
        await send(message)

    return wrapped


class LoginFailure(Exception):
    """A presented token that does not log in (unknown, or its annotator is disabled)."""

    def __init__(self, problem: str):
        self.problem = problem
        super().__init__(problem)


class FailedLogins:
    """Bad tokens per client address: each one goes to the audit log, and LOGIN_FAILURES of them within
    LOGIN_WINDOW seconds get the address a 429 until the oldest is out of the window."""

    def __init__(self):
        self._times: dict[str, deque[float]] = {}  # client address → times of its recent failures

    def _recent(self, client: str) -> deque[float]:
        times = self._times.get(client, deque())
        while times and times[0] <= time.monotonic() - LOGIN_WINDOW:
            times.popleft()
        return times

    def retry_after(self, client: str) -> int:
        """Seconds until ``client`` may try again (0: now)."""
        times = self._recent(client)
        return math.ceil(times[0] + LOGIN_WINDOW - time.monotonic()) if len(times) >= LOGIN_FAILURES else 0

    def record(self, client: str, method: str, path: str, problem: str) -> None:
        if client not in self._times and len(self._times) >= MAX_CLIENTS:
            # Bounded memory under many addresses: forget the one whose last failure is oldest.
            del self._times[min(self._times, key=lambda c: self._times[c][-1] if self._times[c] else 0.0)]
        times = self._recent(client)
        times.append(time.monotonic())
        self._times[client] = times
        # Never the token: the address, what was asked and why it failed (the log line carries the time);
        # the path quoted, so that a newline in it cannot forge a log line.
        audit.warning("failed login from %s: %s %r: %s (%d in the last %.0f s)", client, method, path[:200], problem,
                      len(times), LOGIN_WINDOW)
        if len(times) >= LOGIN_FAILURES:
            audit.warning("login blocked for %s for %d s after %d failed logins", client, self.retry_after(client),
                          len(times))


class Guard:
    """ASGI middleware: authenticates /api requests from their headers, then reads the body within the limit.

    ``authenticate(token)`` returns who is calling or raises :class:`LoginFailure`; the caller is left in
    ``request.state.caller`` for the handlers.
    """

    def __init__(self, app: ASGIApp, authenticate: Callable[[str], Awaitable[object]], max_body: int = MAX_BODY):
        self.app, self.authenticate, self.max_body = app, authenticate, max_body
        self.failed = FailedLogins()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if (path == "/api" or path.startswith("/api/")) and path not in PUBLIC_API:
            refusal = await self._login(scope)
            if refusal is not None:
                return await refusal(scope, receive, send)
        body = await self._read_body(scope, receive, send)
        if body is None:
            return
        sent = False

        async def replay() -> Message:
            # The body once, as read; then the real channel (a handler may wait for the client to go away).
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _login(self, scope: Scope) -> Optional[JSONResponse]:
        """None when the request carries a valid token (the caller is then in the scope's state), else the reply."""
        client = scope["client"][0] if scope.get("client") else "unknown"
        wait = self.failed.retry_after(client)
        if wait:
            return error_response(429, "Authorization", f"too many failed logins from {client}; try again in {wait} s",
                                  {"Retry-After": str(wait)})
        header = _header(scope, b"authorization")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            problem = "missing" if not header.strip() else "not a bearer token"
            return error_response(401, "Authorization", f"{problem}; send 'Authorization: Bearer <token>'")
        try:
            if len(token) > MAX_TOKEN:
                raise LoginFailure("unknown token")
            caller = await self.authenticate(token)
        except LoginFailure as e:
            self.failed.record(client, scope["method"], scope["path"], e.problem)
            return error_response(401, "Authorization", e.problem)
        scope.setdefault("state", {})["caller"] = caller
        return None

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> Optional[bytes]:
        """The whole body, or None when a reply was sent instead (too large) or the client left."""
        length = _header(scope, b"content-length")
        if length and not length.isdigit():
            await error_response(400, "Content-Length", "expected a number of bytes")(scope, receive, send)
            return None
        if length and int(length) > self.max_body:
            await self._too_large(scope, receive, send)
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:  # no Content-Length (chunked), or a false one: stop reading at the limit
                await self._too_large(scope, receive, send)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        reply = error_response(413, "body", f"larger than the server's limit of {self.max_body} bytes")
        await reply(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str:
    for k, v in scope.get("headers", []):
        if k.lower() == name:
            return v.decode("latin-1")
    return ""

