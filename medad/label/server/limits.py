"""Upload size limit, enforced while the request body is read (before anything is written to disk).

MONAI Label copies every upload to a temporary file first and looks at it afterwards, so a 1 GiB body is accepted
and stored. :class:`BodySizeLimit` wraps the ASGI app: a request whose ``Content-Length`` is above the limit is
answered 413 at once; a body sent without a length (chunked) is counted as it arrives and cut off with 413 when it
passes the limit. The limit is read per request from a callable (the app's ``--conf max_upload_mb``).

The rest of a refused body is read and dropped (up to twice the limit) before the 413 is sent: HTTP/1.1 clients that
send the whole body before reading the answer (Python's ``http.client``, which MONAI Label's client and 3D Slicer
use) would otherwise see a broken pipe instead of the 413. A body even larger than that is cut off.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = ["BodySizeLimit"]

# multipart framing around the file: boundaries, headers, the small 'params' field
_OVERHEAD = 64 * 1024


class _TooLarge(BaseException):
    """Raised from ``receive`` past the limit; a BaseException so that FastAPI's body parsing (which turns any
    Exception into "400 There was an error parsing the body") lets it through to :class:`BodySizeLimit`."""


class BodySizeLimit:
    """ASGI middleware: 413 for request bodies above ``limit() + 64 KiB`` (``limit()`` in bytes, None = no limit)."""

    def __init__(self, app: Any, limit: Callable[[], int | None]) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        limit = self.limit()
        if limit is None:
            return await self.app(scope, receive, send)
        allowed = int(limit) + _OVERHEAD
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > allowed:
            await self._drain(receive, 0, 2 * allowed)
            return await self._reject(send, int(length), limit)
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > allowed:
                    raise _TooLarge()
            return message

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                seen = await self._drain(receive, seen, 2 * allowed)
                await self._reject(send, seen, limit)

    @staticmethod
    async def _drain(receive, seen: int, cap: int) -> int:
        """Read and drop the rest of the body (until ``cap`` bytes in all); returns the bytes seen."""
        while seen <= cap:
            message = await receive()
            if message["type"] != "http.request":
                break
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        return seen

    @staticmethod
    async def _reject(send, size: int, limit: int) -> None:
        body = json.dumps({"detail": f"the request body is {size / 2**20:.1f} MiB or more; this server accepts "
                                     f"uploads of at most {limit / 2**20:.0f} MiB (--conf max_upload_mb)."}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
