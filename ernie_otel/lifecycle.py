"""How ``ernie-serve`` stops: SIGTERM drains instead of dropping requests.

uvicorn's own handling of SIGTERM closes the listening socket at once (new clients see "connection
refused" rather than a 503 they can retry elsewhere), gives open connections a fixed few seconds,
and then re-raises the signal, so the process dies by SIGTERM before the telemetry is flushed.

Here the first SIGTERM (or SIGINT) starts a drain: ``/health`` answers 503 at once, new API
requests get 503 with ``Retry-After`` while the listener stays open, and requests in flight get up
to ``--shutdown-grace`` seconds to finish. Then, or at a second signal, what still runs is
cancelled: a stream ends with an OpenAI error event saying the server shut down, a non-streamed
request gets a 503. A third signal exits without waiting. The process exits 0 and ``main`` flushes
the telemetry.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType
from typing import Any

import uvicorn

from .server import ErnieServer

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app_server: ErnieServer, grace: float) -> None:
        super().__init__(config)
        self.app_server = app_server
        self.grace = grace
        self._signals = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig not in STOP_SIGNALS or self._loop is None:
            super().handle_exit(sig, frame)
            return
        # Not recorded in _captured_signals: uvicorn would re-raise it after shutdown and the
        # process would die by the signal instead of exiting 0 after flushing its telemetry.
        self._signals += 1
        name = signal.Signals(sig).name
        if self._signals == 1:
            log.info("%s: draining (grace %gs; send it again to cancel what is in flight)", name, self.grace)
            self._start(self._drain())
        elif self._signals == 2:
            log.warning("%s again: cancelling the requests in flight", name)
            self._start(self._cancel())
        else:
            self.should_exit = self.force_exit = True

    def _start(self, work: Any) -> None:
        # Signal handlers run between bytecodes of the loop's thread: hand the work to the loop.
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._spawn, work)

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        try:
            await self.app_server.drain(self.grace)
        finally:
            self.should_exit = True

    async def _cancel(self) -> None:
        try:
            await self.app_server.cancel_in_flight("a second stop signal")
        finally:
            self.should_exit = True
