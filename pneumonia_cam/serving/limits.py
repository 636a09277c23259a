"""Request-size limit as pure ASGI middleware: counts body bytes while they stream in, never buffers them."""

import contextlib
import json

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
        """Send the 413 with a JSON detail and close the connection (the rest of the body is never read)."""
        body = json.dumps({"detail": f"Request body too large: {what}; the limit is {self.max_bytes} bytes"})
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body.encode()})
