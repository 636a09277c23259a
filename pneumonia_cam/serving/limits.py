"""What the server refuses before the app reads a body: a wrong API key, and a body over the size limit.

Both are pure ASGI middleware, so a refused upload is never read (FastAPI parses a form before it runs
dependencies).
"""

import contextlib
import hmac
import json
import os

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(Exception):
    """Raised from `receive` once the streamed body passes the limit, to stop the app reading it."""


class BodySizeLimitMiddleware:
    """413 at once for a declared Content-Length over the limit, else as soon as the streamed body passes it.

    The app's own answer to a body cut short (e.g. FastAPI's 400 for a broken form) is replaced by the 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Guard one HTTP request; other scopes pass through."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send, f"declared Content-Length {int(declared)}")
            return
        received = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        with contextlib.suppress(BodyTooLarge):  # the app stopped reading: answer 413 below
            await self.app(scope, counting_receive, guarded_send)
        if exceeded and not started:
            await self._refuse(send, f"body passed {self.max_bytes} bytes while streaming")

    async def _refuse(self, send: Send, what: str) -> None:
        """Send the 413 and close the connection (the rest of the body is never read)."""
        detail = f"Request body too large: {what}; the limit is {self.max_bytes} bytes"
        await send_error(send, 413, detail, [(b"connection", b"close")])


class ApiKeyMiddleware:
    """When the environment variable is set, paths under `prefix` need `Authorization: Bearer <key>`.

    The key is compared in constant time; other paths (health, readiness, the viewer, the docs) stay open.
    """

    def __init__(self, app: ASGIApp, env: str, prefix: str = "/v1/") -> None:
        self.app = app
        self.env = env
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 401 before the app sees the request when the key is missing or wrong."""
        expected = os.environ.get(self.env)
        if scope["type"] == "http" and expected and scope["path"].startswith(self.prefix):
            header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            scheme, _, given = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), expected.encode()):
                await send_error(send, 401, "Missing or wrong API key", [(b"www-authenticate", b"Bearer")])
                return
        await self.app(scope, receive, send)


async def send_error(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]]) -> None:
    """A JSON `{"detail": ...}` error response, as FastAPI's own errors look."""
    body = json.dumps({"detail": detail}).encode()
    start_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": start_headers + headers})
    await send({"type": "http.response.body", "body": body})
