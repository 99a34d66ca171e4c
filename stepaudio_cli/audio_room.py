"""What a batch reads at once: how much decoded audio it holds, so that long recordings
answered in windows (up to ~0.9 GiB each) are not all decoded together, and how many files it
reads (header, hash, decode) at the same time."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass


class AudioRoom:
    """Bytes of decoded audio a batch holds at once. A file waits for room before it is
    decoded; one larger than the whole room still goes, alone."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.used = capacity, 0
        self._waiting: list[asyncio.Future] = []

    async def take(self, n: int) -> None:
        while self.used and self.used + n > self.capacity:
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                await waiter
            finally:
                self._waiting.remove(waiter)
        self.used += n

    def add(self, n: int) -> None:
        """Count ``n`` bytes already in memory, room or not (the next takers wait for them)."""
        self.used += n

    def give(self, n: int) -> None:
        self.used -= n
        for waiter in self._waiting:  # each checks again whether it fits now
            if not waiter.done():
                waiter.set_result(None)


@dataclass
class Held:
    """One file's share of the :class:`AudioRoom`."""

    room: AudioRoom
    n: int = 0

    async def take(self, n: int) -> None:
        await self.room.take(n)
        self.n += n

    def keep(self, n: int) -> None:
        """Hold ``n`` bytes from now on (what the decoded audio takes, once decoding is over)."""
        if n > self.n:
            self.room.add(n - self.n)
        else:
            self.room.give(self.n - n)
        self.n = n

    def release(self) -> None:
        self.room.give(self.n)
        self.n = 0


#: Files read (header, hash, decode) at once: one per core, each in a thread of its own. Files
#: started all at once share the cores and all finish at the end; one per core, the first
#: ones reach the engine after one file's decoding (~10 ms for 10 s of 44.1 kHz stereo).
READERS = max(2, os.cpu_count() or 2)


class ReadingPlace:
    """A place among the :data:`READERS`, held at most once and given back at most once."""

    def __init__(self, places: asyncio.Semaphore) -> None:
        self.places, self.held = places, False

    async def take(self) -> None:
        await self.places.acquire()
        self.held = True

    def leave(self) -> None:
        if self.held:
            self.held = False
            self.places.release()
