"""Plain-ASGI middleware in front of the service: body size (413) and body deadline (408) checks.

Plain ASGI, not ``BaseHTTPMiddleware``: its per-request task and stream wrapping cost more than a whole /rank
encoding. ``BodyLimit`` wraps both the FastAPI app (outermost middleware) and the /rank lane.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from serving.errors import ReadTimeout, error_response

if TYPE_CHECKING:
    from serving.app import ServiceState


def _deadline_receive(receive, seconds: float):
    """``receive`` that raises ``ReadTimeout`` if the body is not complete ``seconds`` from now; once it is,
    later calls (waiting for a disconnect) pass straight through.

    One timer per request, which cancels the task only while it waits in ``receive``: ``asyncio.timeout``
    around each call cost ~10 us a request, this ~3."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    waiting = expired = done = False

    def expire() -> None:
        nonlocal expired
        expired = True
        if waiting:
            task.cancel()

    timer = loop.call_later(seconds, expire)

    async def timed():
        nonlocal waiting, done
        if done:
            return await receive()
        if expired:  # the deadline passed while the app was busy elsewhere: only what has arrived by now
            try:
                async with asyncio.timeout(0):
                    return finish(await receive())
            except TimeoutError:
                raise ReadTimeout(seconds) from None
        waiting = True
        try:
            message = await receive()
        except asyncio.CancelledError:
            if expired and task.uncancel() == 0:  # our cancellation, not the server's
                raise ReadTimeout(seconds) from None
            raise
        finally:
            waiting = False
        return finish(message)

    def finish(message):
        nonlocal done
        done = message["type"] != "http.request" or not message.get("more_body", False)
        if done:
            timer.cancel()
        return message

    return timed


class BodyLimit:
    """Refuse bodies over the limit (413) before anything parses them: by Content-Length, or by counting the
    chunks of a body without one; and bodies that do not arrive within ``read_timeout_s`` (408). Plain ASGI
    (no ``BaseHTTPMiddleware``: its per-request task and stream wrapping cost more than a whole /rank encoding)."""

    def __init__(self, app, state: ServiceState):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        settings = self.state.settings
        limit = settings.max_body_bytes
        if settings.read_timeout_s > 0 and scope["method"] != "GET":
            receive = _deadline_receive(receive, settings.read_timeout_s)
        try:
            return await self._limited(scope, receive, send, limit)
        except ReadTimeout as exc:  # from the lane or this class: FastAPI's routes answer it themselves
            return await error_response(408, exc.detail, "body", headers={"connection": "close"})(scope, receive, send)

    async def _limited(self, scope, receive, send, limit: int):
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None:
            if length.isdigit() and int(length) > limit:
                text = length.decode()
                return await error_response(413, f"request body of {text} bytes exceeds the limit of {limit}", "body")(
                    scope, receive, send)
            return await self.app(scope, receive, send)
        if scope["method"] != "POST":
            return await self.app(scope, receive, send)
        messages, size = [], 0
        while True:  # chunked body: buffer it, counting, then replay it to the app
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > limit:
                return await error_response(413, f"request body exceeds the limit of {limit} bytes", "body")(
                    scope, receive, send)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)
