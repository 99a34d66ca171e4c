"""Servers behind one engine: requests go to the least busy server that is up; a server
that cannot be reached, hangs or drops its connections leaves the pool and is probed again
with backoff; while none is up, requests wait (up to ``wait`` seconds) instead of failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from stepaudio_cli.durations import format_duration
from stepaudio_cli.engines.base import Engine, Final
from stepaudio_cli.engines.remote import RemoteEngine
from stepaudio_cli.errors import EngineError, NoServerError
from stepaudio_cli.request import Request
from stepaudio_cli.splitter import Delta

FIRST_PROBE_S = 1.0
MAX_PROBE_S = 10.0  # a probe is one cheap GET: a server that is back is used within seconds
#: Sends of one request before its failure goes to the caller (batch counts them against
#: --retries): a server that lists its model but never answers a request must not hold a
#: request forever, however often its probe succeeds.
MAX_SENDS = 3


class _Member:
    def __init__(self, server: RemoteEngine) -> None:
        self.server = server
        self.up = False
        self.error = ""  # why it is down
        self.strikes = 0  # failures since its last good request: the probe backoff grows with them
        self.prober: asyncio.Task | None = None


class ServerPool(Engine):
    def __init__(
        self, servers: list[RemoteEngine], *, wait: float = 0.0, on_status: Callable[[str | None], None] | None = None
    ) -> None:
        self.members = [_Member(s) for s in servers]
        self.wait = wait
        self._status = on_status or (lambda text: None)
        self._any_up = asyncio.Event()
        self._none_up_since: float | None = None
        self._closed = False

    # --- start ----------------------------------------------------------------------------
    async def start(self) -> None:
        results = await asyncio.gather(*(m.server.start() for m in self.members), return_exceptions=True)
        for member, outcome in zip(self.members, results):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, EngineError) or not outcome.server_down:
                    raise outcome  # a wrong model name, a wrong key: waiting will not help
                self._down(member, outcome)
            else:
                self._up(member)
        if not self._any_up.is_set() and not self.wait:
            down = [m for m in self.members if not m.up]
            raise EngineError(down[0].error if len(down) == 1 else self._none_message(), server_down=True)
        await self._pick()  # waits for a first server when none is up
        self._describe()

    def _describe(self) -> None:
        up = [m.server for m in self.members if m.up]
        self.model = up[0].model
        lens = [s.max_model_len for s in up if s.max_model_len]
        self.max_model_len = min(lens) if lens else None

    # --- requests ----------------------------------------------------------------------------
    async def stream(self, request: Request) -> AsyncIterator[Delta | Final]:
        sends = 0
        failed_on: list[_Member] = []  # servers this request already failed on: others first
        while True:
            member = await self._pick(avoid=failed_on)
            sent = False
            sends += 1
            try:
                async for event in member.server.stream(request):
                    sent = True
                    yield event
            except EngineError as e:
                e.attempts = sends
                if not e.server_down:
                    raise
                self._down(member, e)
                failed_on.append(member)
                if sent or not self.wait or sends >= min(MAX_SENDS, self.max_sends or MAX_SENDS):
                    raise  # text already went out, or sent enough: the caller decides (batch retries the file)
                continue  # nothing sent yet: another server, or wait for one
            member.strikes = 0
            return

    async def _pick(self, avoid: list[_Member] | tuple = ()) -> _Member:
        while True:
            up = [m for m in self.members if m.up]
            if up:
                fresh = [m for m in up if m not in avoid] or up
                return min(fresh, key=lambda m: m.server.in_flight)
            waited = time.monotonic() - (self._none_up_since or time.monotonic())
            left = self.wait - waited
            if left <= 0:
                raise NoServerError(f"{self._none_message()}; waited {format_duration(self.wait)}")
            self._status(f"{self._none_message()}; waiting up to {format_duration(self.wait)} for one")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._any_up.wait(), timeout=min(left, 5.0))

    def _none_message(self) -> str:
        if len(self.members) == 1:
            return f"no answer from the server: {self.members[0].error}"
        reasons = "; ".join(m.error for m in self.members)
        return f"none of the {len(self.members)} servers answers ({reasons})"

    # --- membership ----------------------------------------------------------------------------
    def _up(self, member: _Member) -> None:
        member.up = True
        member.error = ""
        if not self._any_up.is_set():
            self._any_up.set()
            if self._none_up_since is not None:
                self._status(None)
            self._none_up_since = None

    def _down(self, member: _Member, error: EngineError) -> None:
        member.error = error.message
        if not member.up and member.prober is not None:
            return
        member.up = False
        member.strikes += 1
        if not any(m.up for m in self.members):
            self._any_up.clear()
            self._none_up_since = time.monotonic()
        elif len(self.members) > 1:
            left = sum(m.up for m in self.members)
            self._status(f"{member.server.url} left the pool ({error.message}); {left} of {len(self.members)} up")
        if self.wait and not self._closed:
            member.prober = asyncio.create_task(self._probe(member))

    async def _probe(self, member: _Member) -> None:
        """Ask a down server again, waiting longer after each failure, until it answers."""
        delay = min(FIRST_PROBE_S * 2 ** (member.strikes - 1), MAX_PROBE_S)
        try:
            while not self._closed:
                await asyncio.sleep(delay)
                try:
                    await member.server.start()
                except EngineError as e:
                    member.error = e.message
                    delay = min(delay * 2, MAX_PROBE_S)
                    continue
                was_none = not self._any_up.is_set()
                self._up(member)
                if not was_none and len(self.members) > 1:
                    self._status(None)
                return
        finally:
            member.prober = None

    async def close(self) -> None:
        self._closed = True
        for m in self.members:
            if m.prober is not None:
                m.prober.cancel()
        await asyncio.gather(*(m.prober for m in self.members if m.prober), return_exceptions=True)
        for m in self.members:
            await m.server.close()
