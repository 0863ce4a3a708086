"""One security layer in front of every route (reliability-security research, sections 1.2 and 6B/6C).

`SecurityMiddleware` wraps the whole ASGI app, so no route can be forgotten (A1111's bugs #17161/#17411 came
from routes that neither of its two auth systems covered). In order:

1. Host check (DNS rebinding): a server bound to loopback without credentials answers only requests whose
   `Host` is a loopback name (plus `--allowed-hosts`); a web page on evil.example that rebinds its name to
   127.0.0.1 gets 403.
2. Authentication, default deny: with credentials configured, every path needs HTTP Basic auth except the
   explicit public list (only the health probe). The check compares against every configured pair with
   `hmac.compare_digest` and no early exit, so timing says nothing about which part was wrong. An address
   that sends `max_failed_logins` wrong credentials within a minute gets 429 until that minute has passed,
   so passwords cannot be guessed at network speed.
3. Cross-site requests: a state-changing request (POST, PUT, PATCH, DELETE) that carries an `Origin` other
   than the server's own or a `--cors-allow-origins` entry gets 403, so a page in the user's browser cannot
   queue jobs or change settings on a loopback server (browsers always send `Origin` on such requests).
4. Body size: `Content-Length` over the limit gets 413 before anything is read; a chunked body is counted as it
   arrives and cut off at the limit.
5. CORS is decided in one place: `Access-Control-*` headers that anything inside sets are removed (Gradio, for
   one, adds its own CORS middleware that admits any localhost origin with credentials, so a page served by
   another local program could read the API's answers). Only `--cors-allow-origins` adds them back, through
   the one `CORSMiddleware` outside this middleware (A1111 strips Gradio's CORS middleware for the same reason).

`confine()` is the one helper for turning a client-supplied relative path into a file inside a folder.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import math
import time
from collections import OrderedDict, deque
from pathlib import Path
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException

from sdwebui.server.config import Credentials, ServerConfig

PUBLIC_PATHS = frozenset({"/api/v1/health"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


class _BodyTooLarge(HTTPException):
    """Raised while a chunked body is read, once it passes the limit. An `HTTPException`, so FastAPI's body
    reader passes it through to the error handlers (a plain exception there becomes a 400)."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body over the limit of {limit} bytes")


class FailedLogins:
    """Wrong credentials per client address. Once an address has sent `limit` of them within `window` seconds,
    it must wait until the oldest is `window` seconds old; any request from it meanwhile is refused, the right
    password included (telling it apart would be the very guess being limited). Used from the event loop only."""

    MAX_ADDRESSES = 10_000

    def __init__(self, limit: int, window: float = 60.0, clock=time.monotonic):
        self.limit = limit
        self.window = window
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def wait_seconds(self, address: str) -> float:
        """How long `address` must wait before it may try again (0: it may)."""
        failures = self._failures.get(address)
        if not self.limit or not failures:
            return 0.0
        now = self.clock()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if len(failures) < self.limit:
            return 0.0
        return failures[0] + self.window - now

    def record(self, address: str) -> None:
        if not self.limit:
            return
        failures = self._failures.pop(address, None) or deque(maxlen=self.limit)
        failures.append(self.clock())
        self._failures[address] = failures  # most recent last; the oldest addresses are forgotten first
        while len(self._failures) > self.MAX_ADDRESSES:
            self._failures.popitem(last=False)


class SecurityMiddleware:
    def __init__(self, app, config: ServerConfig):
        self.app = app
        self.credentials: Credentials = config.credentials
        self.check_host = config.loopback_only and not config.credentials
        self.allowed_hosts = LOOPBACK_NAMES | {h.lower() for h in config.allowed_hosts}
        self.allowed_origins = frozenset(o.rstrip("/") for o in config.cors_allow_origins)
        self.max_body = config.max_body_bytes
        self._pairs = [(u.encode(), p.encode()) for u, p in self.credentials.pairs]
        self.failed_logins = FailedLogins(config.max_failed_logins)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if self.check_host and _hostname(host) not in self.allowed_hosts:
            return await _reply(scope, send, 403, "forbidden", "this server only answers requests addressed to "
                                "localhost (Host header not allowed; see --allowed-hosts)")
        if self._pairs and scope["path"] not in PUBLIC_PATHS:
            address = (scope.get("client") or ("unknown",))[0]
            wait = self.failed_logins.wait_seconds(address)
            if wait > 0:
                seconds = math.ceil(wait)
                return await _reply(scope, send, 429, "too_many_requests", "too many wrong passwords from this "
                                    f"address; try again in {seconds} s",
                                    extra_headers=[(b"retry-after", str(seconds).encode())])
            authorization = headers.get("authorization")
            if not self._authorized(authorization):
                if authorization is not None:  # a request without credentials is the browser asking how to log in
                    self.failed_logins.record(address)
                return await _reply(scope, send, 401, "unauthorized", "authentication required",
                                    extra_headers=[(b"www-authenticate", b'Basic realm="sdwebui"')])
        method = scope.get("method", "GET")
        origin = headers.get("origin")
        if method not in SAFE_METHODS and origin is not None and not self._origin_allowed(origin, host):
            return await _reply(scope, send, 403, "forbidden", "cross-origin request refused "
                                "(allow the origin with --cors-allow-origins)")
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        length = headers.get("content-length")
        if length is not None:
            try:
                too_large = int(length) > self.max_body
            except ValueError:
                return await _reply(scope, send, 400, "bad_request", "invalid Content-Length")
            if too_large:
                return await _reply(scope, send, 413, "payload_too_large",
                                    f"request body over the limit of {self.max_body} bytes")
        received = 0
        started = False

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _BodyTooLarge(self.max_body)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = message.get("headers") or []
                if any(key.lower().startswith(b"access-control-") for key, _ in headers):
                    message = {**message, "headers": [(key, value) for key, value in headers
                                                      if not key.lower().startswith(b"access-control-")]}
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _reply(scope, send, 413, "payload_too_large",
                             f"request body over the limit of {self.max_body} bytes")

    def _authorized(self, header: str | None) -> bool:
        if not header or not header[:6].lower() == "basic ":
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, password = decoded.partition(b":")
        if not sep:
            return False
        ok = False
        for want_user, want_password in self._pairs:
            # Both comparisons always run (no short-circuit): time does not reveal which part matched.
            user_ok = hmac.compare_digest(user, want_user)
            password_ok = hmac.compare_digest(password, want_password)
            ok |= user_ok & password_ok
        return ok

    def _origin_allowed(self, origin: str, host: str) -> bool:
        origin = origin.rstrip("/")
        if origin in self.allowed_origins or "*" in self.allowed_origins:
            return True
        if origin == "null":
            return False
        parts = urlsplit(origin)
        return bool(parts.netloc) and parts.netloc.lower() == host.lower()


def _hostname(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def _reply(scope, send, status: int, code: str, detail: str, extra_headers=()):
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = json.dumps({"error": code, "detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def confine(root: Path, relative: str) -> Path | None:
    """`root/relative` when that file, symlinks resolved, lies inside `root`; None otherwise.

    No string checks for ".." (they miss encodings, backslashes and symlinks): the joined path is resolved and
    then tested for containment. Absolute paths, NUL bytes and absurd lengths are refused outright."""
    if not relative or "\x00" in relative or len(relative) > 4096:
        return None
    if Path(relative).is_absolute() or relative.startswith(("/", "\\")) or (len(relative) > 1 and relative[1] == ":"):
        return None
    try:
        base = root.resolve()
        target = (base / relative).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    if target == base or not target.is_relative_to(base):
        return None
    return target


__all__ = ["SecurityMiddleware", "confine", "PUBLIC_PATHS"]
