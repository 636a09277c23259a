"""The request id of the request being served, in a contextvar, so every response and log line carries it."""

import logging
import re
import uuid
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "X-Request-ID"
NO_REQUEST = "-"
request_id_var: ContextVar[str] = ContextVar("request_id", default=NO_REQUEST)
# a client's id is echoed only when it is a short plain token (no spaces, quotes or control characters)
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def sane_request_id(value: str | None) -> str:
    """The client's id when it is a sane token, else a fresh uuid4 (hex)."""
    if value is not None and _SANE_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Pure ASGI: pick the request id, expose it to handlers and logs, and add it to the response headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Wrap one HTTP request; other scopes pass through."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        raw = headers.get(REQUEST_ID_HEADER.lower().encode())
        request_id = sane_request_id(raw.decode("latin-1") if raw is not None else None)
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *(h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


class RequestIdFilter(logging.Filter):
    """Prefix each record with the current request id (`-` outside requests) and set `record.request_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Tag a record once, whichever logger or handler sees it first."""
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
            record.msg = f"[request {record.request_id}] {record.getMessage()}"
            record.args = ()
        return True


def install_request_id_logging(*loggers: logging.Logger) -> None:
    """Attach the filter to the root handlers (every propagated record) and to `loggers` (idempotent)."""
    targets = [*logging.getLogger().handlers, *loggers]
    for target in targets:
        if not any(isinstance(f, RequestIdFilter) for f in target.filters):
            target.addFilter(RequestIdFilter())
