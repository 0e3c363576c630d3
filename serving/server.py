"""uvicorn's HTTP protocols with a deadline on request headers: a connection that opens and sends nothing,
or trickles its headers, is closed ``read_timeout_s`` after it opened or after its last response.

uvicorn (0.55) has no such deadline: ``timeout_keep_alive`` is armed only after a response and is cancelled
by the first byte of the next request, so an idle socket or a 1 byte/s header is held forever. The body's
deadline is the app's (``serving.middleware.BodyLimit``, a 408). ``ctrzoo serve`` passes ``http=protocol_class()``;
the class reads ``CTRZOO_READ_TIMEOUT_S`` (workers are processes: they read settings from the environment).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol

from serving.settings import ServeSettings


class _HeaderDeadline:
    """Mixin over a uvicorn HTTP protocol: close the connection when no request is in progress at the deadline."""

    read_timeout_s: float | None = None  # None: ServeSettings.from_env() on first use

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        seconds = self._timeout()
        if seconds > 0:
            self._header_deadline: asyncio.TimerHandle | None = self.loop.call_later(seconds, self._expire)

    def _disarm(self) -> None:
        handle = getattr(self, "_header_deadline", None)
        if handle is not None:
            handle.cancel()
            self._header_deadline = None

    def _expire(self) -> None:
        self._header_deadline = None
        busy = self.cycle is not None and not self.cycle.response_complete  # a request is being served
        if not busy and not self.transport.is_closing():
            self.transport.close()

    @classmethod
    def _timeout(cls) -> float:
        if cls.read_timeout_s is None:
            cls.read_timeout_s = ServeSettings.from_env().read_timeout_s
        return cls.read_timeout_s


class TimedH11Protocol(_HeaderDeadline, H11Protocol):
    pass


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools not installed: h11 only
    HttpToolsProtocol = None
    TimedHttpToolsProtocol = None
else:
    class TimedHttpToolsProtocol(_HeaderDeadline, HttpToolsProtocol):
        pass


def protocol_class() -> type:
    """What uvicorn's ``http="auto"`` would pick (httptools when installed), with the header deadline."""
    return TimedHttpToolsProtocol or TimedH11Protocol
