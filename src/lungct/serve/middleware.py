"""ASGI middleware: request ids, request-body limits, security headers and privacy-safe access logs."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Mapping

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


def _too_large(limit: int) -> str:
    return f"upload too large: the limit for this endpoint is {limit / 2**20:.1f} MB"


class RequestGuard:
    """Assigns ``request.state.request_id``, enforces per-path body limits (413), adds headers, logs.

    Log lines carry only the request id, method, path, status, bytes received and duration.
    """

    def __init__(self, app: ASGIApp, limits: Mapping[str, int], default_limit: int = DEFAULT_LIMIT) -> None:
        self.app = app
        self.limits = dict(limits)
        self.default_limit = default_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = uuid.uuid4().hex[:12]
        scope.setdefault("state", {})["request_id"] = rid
        limit = self.limits.get(scope["path"], self.default_limit)
        t0, received, status = time.perf_counter(), 0, 0

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
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, _too_large(limit))
            return message

        try:
            declared = Headers(scope=scope).get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                await self._reject(send_with_headers, 413, _too_large(limit), rid)
                return
            await self.app(scope, counted_receive, send_with_headers)
        except Exception:
            status = status or 500
            raise
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
