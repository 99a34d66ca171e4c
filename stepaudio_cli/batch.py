"""Batch processing: many files, many requests in flight, durable and resumable results.

Work per file: sha256 (streamed) -> key (content + prompt + model + sampling) -> skip if a
good record with that key exists -> check the length its header states against the context ->
decode (thread, from disk) -> request (engine, with retries) -> append the record. Identical
content under several names is computed once. A file that cannot be read or decoded is that
file's failure record, never the run's end.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import json
import os
import random
import signal
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stepaudio_cli.audio import AUDIO_EXTENSIONS, header_length, load_file, sha256_file
from stepaudio_cli.defaults import DECODED_AUDIO_BYTES
from stepaudio_cli.engines import Engine, EngineSettings, Result, collect, open_engine
from stepaudio_cli.errors import EngineError, NoServerError, StoreError, UserError
from stepaudio_cli.records import params, to_record
from stepaudio_cli.request import Request, Sampling, Thinking, generation_room
from stepaudio_cli.store import Store
from stepaudio_cli.url_audio import UrlFetching, fetch, is_url
from stepaudio_cli.windows import MapProgress, Windowing, answer_in_windows, plan


@dataclass
class BatchJob:
    prompt: str
    system: str | None = None
    sampling: Sampling = field(default_factory=Sampling)
    thinking: Thinking = field(default_factory=Thinking)
    concurrency: int = 64
    retries: int = 3
    retry_failed: bool = False
    overwrite: bool = False
    hide_reasoning: bool = False
    decode_ahead: int = 8
    windowing: Windowing = field(default_factory=Windowing)  # audio longer than one request holds
    audio_bytes: int = DECODED_AUDIO_BYTES  # decoded audio held at once (long recordings wait for room)


# Decoded float32 at 16 kHz per byte of a compressed file whose header states no length
# (AAC/Opus at 64 kbit/s: 8x), so a folder of them is not all decoded at once.
UNKNOWN_DECODE_RATIO = 8


class AudioRoom:
    """Bytes of decoded audio a batch holds at once, so that long recordings answered in windows
    (up to ~0.9 GiB each) are not all decoded together. A file waits for room before it is
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


@dataclass
class Summary:
    total: int = 0
    answered: int = 0  # answered in this run
    skipped: int = 0  # already in the results
    reused: int = 0  # same content + settings as another file
    failed: int = 0
    cut_off: int = 0  # answered, but stopped at the length limit (finish_reason "length")
    audio_seconds: float = 0.0
    # Recordings answered in windows: windows answered, of those planned (a file takes minutes).
    windows_answered: int = 0
    windows_planned: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    interrupted: bool = False
    #: Why the run stopped before the end (no server for too long, results not writable);
    #: files not attempted have no record, so a rerun continues with them.
    stopped: UserError | None = None
    elapsed: float = 0.0

    @property
    def finished(self) -> int:
        return self.answered + self.skipped + self.reused + self.failed


def discover(
    inputs: Sequence[str], patterns: Sequence[str] = (), recursive: bool = False, urls: UrlFetching = UrlFetching()
) -> list[Path]:
    """Files to process, in a stable order, each real file once.

    Directories contribute files whose names match ``patterns`` (default: known audio
    extensions); explicitly named files are always included. Symlinks are followed, but a
    file reached twice (through a link, or named twice) counts once. An http(s) URL is fetched
    into the cache now (url_audio.py): its path reads the cached file and is named the URL.
    """
    found: list[Path] = []
    for item in inputs:
        path = fetch(item, urls) if is_url(item) else Path(item)
        if not path.exists():
            raise UserError(f"{item}: no such file or directory")
        if path.is_dir():
            found += sorted(_scan(path, patterns, recursive), key=lambda p: str(p))
        else:
            found.append(path)
    seen: set[str] = set()
    unique = []
    for p in found:
        real = os.path.realpath(p)
        if real not in seen:
            seen.add(real)
            unique.append(p)
    return unique


def _scan(root: Path, patterns: Sequence[str], recursive: bool):
    def wanted(name: str) -> bool:
        if patterns:
            return any(fnmatch.fnmatch(name, pat) for pat in patterns)
        return Path(name).suffix.lower() in AUDIO_EXTENSIONS and not name.startswith(".")

    walker = os.walk(root, followlinks=False) if recursive else [(str(root), [], os.listdir(root))]
    for dirpath, dirnames, filenames in walker:
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            p = Path(dirpath) / name
            if wanted(name) and p.is_file():
                yield p


def request_key(sha256: str, job: BatchJob, model: str) -> str:
    parts = [sha256, job.prompt, job.system, model, job.sampling.as_dict(), job.thinking.as_dict()]
    if job.windowing.as_dict():  # only when not the default, so earlier results keep their keys
        parts.append(job.windowing.as_dict())
    blob = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class BatchRunner:
    def __init__(
        self,
        job: BatchJob,
        engine: Engine,
        store: Store,
        files: list[Path],
        on_progress: Callable[[Summary], None] | None = None,
    ) -> None:
        self.job = job
        self.engine = engine
        self.store = store
        self.files = files
        self.on_progress = on_progress or (lambda s: None)
        self.summary = Summary(total=len(files))
        self._by_file: dict[str, list[dict]] = {}  # earlier records of each file of this run
        self._by_key: dict[str, dict] = {}  # good records by key, for reuse
        self._inflight: dict[str, asyncio.Future] = {}
        self._final: dict[str, dict] = {}  # the record that stands for each file of this run
        self._params = params(job.sampling, job.thinking, job.system)

    # --- resume -------------------------------------------------------------------------
    def _load(self) -> None:
        records = self.store.load()  # refuses a file that is not ours before anything changes
        if self.job.overwrite:
            self.store.rewrite(lambda on_disk: [])
            return
        names = {str(p) for p in self.files}
        for record in records:
            if record["file"] in names:
                self._by_file.setdefault(record["file"], []).append(record)
                if not record["error"] and record["key"]:
                    self._by_key[record["key"]] = record

    def _previous(self, name: str, key: str) -> dict | None:
        """The last record for ``name`` with this key, if any (good or failed)."""
        matching = [r for r in self._by_file.get(name, []) if r.get("key") == key]
        return matching[-1] if matching else None

    # --- the run --------------------------------------------------------------------------
    async def run(self) -> Summary:
        self._load()
        self._room = AudioRoom(self.job.audio_bytes)
        queue: asyncio.Queue[Path] = asyncio.Queue()
        for p in self.files:
            queue.put_nowait(p)
        infer = asyncio.Semaphore(max(1, self.job.concurrency))
        workers = [
            asyncio.create_task(self._worker(queue, infer))
            for _ in range(min(len(self.files), self.job.concurrency + self.job.decode_ahead))
        ]
        try:
            await asyncio.gather(*workers)
        except NoServerError as e:  # what is in flight stays unrecorded: a rerun does it
            self.summary.stopped = NoServerError(f"{e.message}; rerun the same command to continue")
        except StoreError as e:
            self.summary.stopped = e
        except asyncio.CancelledError:
            self.summary.interrupted = True
            raise
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            if not isinstance(self.summary.stopped, StoreError):
                self._compact()
        return self.summary

    async def _worker(self, queue: asyncio.Queue, infer: asyncio.Semaphore) -> None:
        while True:
            try:
                path = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await self._one(path, infer)
            self.on_progress(self.summary)

    async def _one(self, path: Path, infer: asyncio.Semaphore) -> dict | None:
        name = str(path)
        try:
            sha, stamp = await asyncio.to_thread(_hash, path)  # off the event loop
        except OSError as e:
            return await self._record_failure(name, None, None, f"cannot read ({e.strerror or e})")
        key = request_key(sha, self.job, self.engine.model)
        previous = self._previous(name, key)
        if previous is not None and (not previous.get("error") or not self.job.retry_failed):
            self._final[name] = previous
            if previous.get("error"):
                self.summary.failed += 1
                self.summary.failures.append((name, previous["error"]))
            else:
                self.summary.skipped += 1
            return None
        if key in self._by_key:  # same audio and settings already answered under another name
            return await self._reuse(name, self._by_key[key])
        if key in self._inflight:
            source = await asyncio.shield(self._inflight[key])
            if source is not None and not source.get("error"):
                return await self._reuse(name, source)
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        record = None
        try:
            record = await self._compute(name, path, stamp, sha, key, infer)
            return record
        finally:
            future.set_result(record)
            self._inflight.pop(key, None)

    async def _compute(self, name: str, path: Path, stamp: tuple, sha: str, key: str, infer: asyncio.Semaphore) -> dict:
        held = Held(self._room)
        try:
            return await self._decode_and_answer(name, path, stamp, sha, key, infer, held)
        finally:
            held.release()

    async def _decode_and_answer(
        self, name: str, path: Path, stamp: tuple, sha: str, key: str, infer: asyncio.Semaphore, held: Held
    ) -> dict:
        length = None
        # One request holds at most the context; a recording answered in windows may be longer.
        context = None if self.job.windowing.enabled else self.engine.max_model_len
        try:
            length = await asyncio.to_thread(header_length, path, name)
            if length is not None and context:  # audio one request cannot hold is refused before it is read
                generation_room([length], self.job.sampling, context)
            # Room for decoding it (a length the header does not state: a guess from the file's size).
            size = stamp[2]  # _stamp: device, inode, size, mtime
            await held.take(length.decode_bytes if length is not None else UNKNOWN_DECODE_RATIO * size)
            audio = await asyncio.to_thread(load_file, path, name, context)
            held.keep(audio.samples.nbytes)
            if await asyncio.to_thread(_stamp, path) != stamp:
                raise UserError(f"{name}: changed while it was being read; rerun to try it again")
        except UserError as e:
            seconds = length.duration if length is not None else None
            return await self._record_failure(name, sha, key, _strip_name(e.message, name), seconds)
        except Exception as e:  # noqa: BLE001 - whatever a decoder raises (MemoryError too): this file's failure
            return await self._record_failure(name, sha, key, f"cannot decode ({type(e).__name__}: {e})")
        request = Request(
            audios=(audio,),
            question=self.job.prompt,
            system=self.job.system,
            sampling=self.job.sampling,
            thinking=self.job.thinking,
            stream=False,
        )
        try:
            windows = plan(request, self.engine.max_model_len, self.job.windowing)
            if windows is None:
                async with infer:
                    result = await self._send(request)
            else:  # each window takes a place among the requests in flight
                self.summary.windows_planned += len(windows)
                result = await answer_in_windows(
                    request,
                    windows,
                    lambda r, _: self._send(r, infer),
                    max_model_len=self.engine.max_model_len,
                    on_progress=self._window_answered,
                )
        except NoServerError:
            raise  # stops the run: not this file's fault
        except UserError as e:  # the server failed it (after retries), or the audio does not fit
            return await self._record_failure(name, sha, key, _strip_name(e.message, name), audio.duration)
        record = self._record(name, sha, key, audio.duration, result=result, hide_reasoning=self.job.hide_reasoning)
        await self._write(record)
        self._by_key[key] = record
        self.summary.answered += 1
        self.summary.cut_off += result.finish_reason == "length"
        self.summary.audio_seconds += audio.duration
        return record

    def _window_answered(self, progress: MapProgress) -> None:
        if progress.answered:  # the first call says how many there are: counted when planned
            self.summary.windows_answered += 1
            self.on_progress(self.summary)

    async def _send(self, request: Request, infer: asyncio.Semaphore | None = None) -> Result:
        """One request to the end, retrying what a server may do better next time (holding a
        place in ``infer`` while in flight, when given)."""
        attempt = 0
        while True:
            try:
                async with infer or contextlib.nullcontext():
                    return await collect(self.engine, request)
            except NoServerError:
                raise
            except EngineError as e:
                attempt += e.attempts  # every send counts against --retries, a pool's included
                if not e.retryable or attempt > self.job.retries:
                    tries = f" (after {attempt} tries)" if attempt > 1 else ""
                    raise EngineError(e.message + tries) from None
            await asyncio.sleep(min(30.0, 0.5 * 2**attempt) * (0.5 + random.random()))

    async def _reuse(self, name: str, source: dict) -> dict:
        record = dict(source, file=name)
        await self._write(record)
        self.summary.reused += 1
        self.summary.audio_seconds += source.get("audio_seconds") or 0.0
        return record

    async def _record_failure(self, name, sha, key, message: str, seconds: float | None = None) -> dict:
        record = self._record(name, sha, key, seconds, error=message)
        await self._write(record)
        self.summary.failed += 1
        self.summary.failures.append((name, message))
        return record

    def _record(self, name: str, sha, key, seconds: float | None, **outcome) -> dict:
        """File ``name``'s record in this job; ``outcome``: its ``result`` (and ``hide_reasoning``) or ``error``."""
        return to_record(
            file=name,
            prompt=self.job.prompt,
            model=self.engine.model,
            params=self._params,
            sha256=sha,
            key=key,
            audio_seconds=seconds,
            **outcome,
        )

    async def _write(self, record: dict) -> None:
        """The one way a record is stored: it stands for its file, and is on disk on return."""
        self._final[record["file"]] = record
        # fsync off the event loop, so streaming of other requests is not held up.
        await asyncio.to_thread(self.store.append, record)

    def _compact(self) -> None:
        self.store.rewrite(self._standing)

    def _standing(self, on_disk: list[dict]) -> list[dict]:
        """Compaction, from the records on disk now: records of files outside this run as they
        are, then one per file of this run, in input order: the last one with the key of the
        record that stands for it, or (a file not reached) its last one."""
        names = {str(p) for p in self.files}
        by_key: dict[tuple[str, str | None], dict] = {}
        latest: dict[str, dict] = {}
        for record in on_disk:
            if record["file"] in names:
                by_key[record["file"], record["key"]] = latest[record["file"]] = record
        ordered = []
        for p in self.files:
            name = str(p)
            final = self._final.get(name)
            chosen = by_key.get((name, final["key"])) if final is not None else None
            if chosen is not None or name in latest:
                ordered.append(chosen or latest[name])
        return [r for r in on_disk if r["file"] not in names] + ordered


def _stamp(path: Path, info: os.stat_result | None = None) -> tuple:
    info = info or os.stat(path)
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def _hash(path: Path) -> tuple[str, tuple]:
    """The file's sha256, read in blocks, and its stamp (to tell that it changed before it was decoded)."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise OSError("not a regular file")
    sha = sha256_file(path)
    if _stamp(path) != _stamp(path, info):
        raise OSError("it changed while it was being read")
    return sha, _stamp(path, info)


def _strip_name(message: str, name: str) -> str:
    prefix = name + ": "
    return message[len(prefix) :] if message.startswith(prefix) else message


async def run_batch(
    job: BatchJob, engine: Engine, store: Store, files: list[Path], on_progress: Callable[[Summary], None] | None = None
) -> Summary:
    """Run every file on a started engine. Ctrl-C or SIGTERM stops it cleanly: in-flight
    requests are cancelled, everything finished is already on disk, and the returned
    summary says ``interrupted``."""
    runner = BatchRunner(job, engine, store, files, on_progress)
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    started = time.monotonic()
    try:
        await runner.run()
    except asyncio.CancelledError:
        runner.summary.interrupted = True
    finally:
        runner.summary.elapsed = time.monotonic() - started
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGTERM)
    return runner.summary


async def execute(
    settings: EngineSettings,
    job: BatchJob,
    store: Store,
    files: list[Path],
    *,
    on_status: Callable[[str | None], None] | None = None,
    on_start: Callable[[], None] | None = None,
    on_progress: Callable[[Summary], None] | None = None,
) -> Summary:
    """An engine session for the whole batch: ``on_status`` hears what the engine waits for
    (loading, a server to come back), ``on_start`` that files are being sent, ``on_progress``
    the summary after each file."""
    async with open_engine(settings, on_status) as engine:
        if on_start:
            on_start()
        return await run_batch(job, engine, store, files, on_progress)
