"""ASGI middleware: Host allow-list, same-origin POSTs, request ids, request-body limits and read
timeout, security headers on every response (errors included) and privacy-safe access logs."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Mapping
from urllib.parse import urlsplit

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("lungct.serve")

DEFAULT_LIMIT = 2**20
"""Body limit (bytes) for paths without their own (nothing else takes a body)."""

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
"""Host names accepted by default (the server binds to loopback by default)."""

BODY_TIMEOUT_S = 60.0
"""A request body must arrive within this many seconds (stalled uploads are cut off with 408)."""


def _host_name(value: str) -> str:
    """'example.org:8000' -> 'example.org'; '[::1]:8000' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _too_large(limit: int) -> str:
    return f"upload too large: the limit for this endpoint is {limit / 2**20:.1f} MB"


class RequestGuard:
    """Assigns ``request.state.request_id``, enforces per-path body limits (413), adds headers, logs.

    Log lines carry only the request id, method, path, status, bytes received and duration.
    """

    def __init__(
        self,
        app: ASGIApp,
        limits: Mapping[str, int],
        default_limit: int = DEFAULT_LIMIT,
        allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS,
        allowed_origins: tuple[str, ...] = (),
        body_timeout: float = BODY_TIMEOUT_S,
    ) -> None:
        self.app = app
        self.limits = dict(limits)
        self.default_limit = default_limit
        self.allowed_hosts = {h.lower() for h in allowed_hosts}
        self.allowed_origins = {o.rstrip("/").lower() for o in allowed_origins}
        self.body_timeout = body_timeout

    def _refusal(self, scope: Scope) -> tuple[int, str] | None:
        """(status, reason) when the Host is not allowed (DNS rebinding) or a POST comes from another
        origin (cross-site request); None otherwise."""
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if "*" not in self.allowed_hosts and _host_name(host) not in self.allowed_hosts:
            return 400, "host not allowed (start the server with --allowed-host NAME to serve other names)"
        origin = headers.get("origin")
        if scope["method"] not in ("GET", "HEAD", "OPTIONS") and origin and origin != "null":
            same = urlsplit(origin).netloc.lower() == host.lower()
            if not same and origin.rstrip("/").lower() not in self.allowed_origins:
                return 403, "cross-origin request refused"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = uuid.uuid4().hex[:12]
        scope.setdefault("state", {})["request_id"] = rid
        limit = self.limits.get(scope["path"], self.default_limit)
        t0, received, status = time.perf_counter(), 0, 0
        deadline = t0 + self.body_timeout

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                extra = [(b"x-request-id", rid.encode()), *SECURITY_HEADERS]
                if scope["path"].startswith("/api/"):
                    extra.append((b"cache-control", b"no-store"))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        async def counted_receive() -> Message:
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.perf_counter()))
            except TimeoutError:
                raise HTTPException(
                    408, f"request body not received within {self.body_timeout:.0f} s"
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, _too_large(limit))
            return message

        try:
            refused = self._refusal(scope)
            if refused is not None:
                await self._reject(send_with_headers, *refused, rid)
                return
            declared = Headers(scope=scope).get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                await self._reject(send_with_headers, 413, _too_large(limit), rid)
                return
            await self.app(scope, counted_receive, send_with_headers)
        except Exception as exc:
            log.error("request %s: unhandled %s", rid, type(exc).__name__)
            if status:  # the response had started: nothing more can be sent
                raise
            await self._reject(send_with_headers, 500, f"internal error (request id {rid})", rid)
        finally:
            log.info(
                "%s %s %s %d %dB %.0fms",
                rid,
                scope["method"],
                scope["path"],
                status,
                received,
                1000 * (time.perf_counter() - t0),
            )

    @staticmethod
    async def _reject(send: Send, status: int, detail: str, rid: str) -> None:
        body = json.dumps({"detail": detail, "request_id": rid}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
