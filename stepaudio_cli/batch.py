"""Batch processing: many files, many requests in flight, durable and resumable results.

Work per file: check the length its header states against the context (before anything is
read) -> sha256 (streamed) -> key (content + question + the parameters that shape the
answer) -> skip if a record of that file with that key exists -> decode (thread, from disk) ->
request (engine, with retries) -> append the record. Identical content under several names is
computed once. A file that cannot be read or decoded is that file's failure record, never the
run's end.

A results file holds many questions: a record stands for one file (its real path) and one
question (prompt, model, parameters); compaction keeps one record per file and question, and
never drops another question's records. With every record already there, ``batch_settle``
finishes the run without an engine. What a batch asks and how a run stands: ``batch_job``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from stepaudio_cli import audio_room
from stepaudio_cli.audio import load_file
from stepaudio_cli.audio_length import check_length
from stepaudio_cli.audio_room import AudioRoom, Held, ReadingPlace
from stepaudio_cli.batch_inputs import content_hash, discover, header, identity, stamp
from stepaudio_cli.batch_job import BatchJob, NeedsEngine, Summary, request_key
from stepaudio_cli.engines import Engine, EngineSettings, Result, open_engine
from stepaudio_cli.engines.base import send_with_retries
from stepaudio_cli.errors import NoServerError, StoreError, UserError
from stepaudio_cli.records import params, same_question, to_record
from stepaudio_cli.request import Request, generation_room
from stepaudio_cli.store import Store
from stepaudio_cli.windows import MapProgress, answer_in_windows, plan

__all__ = ["BatchJob", "BatchRunner", "NeedsEngine", "Summary", "discover", "execute", "request_key", "run_batch"]


# Decoded float32 at 16 kHz per byte of a compressed file whose length neither its header nor
# its container states (AAC/Opus at 64 kbit/s: 8x), so a folder of them is not all decoded at once.
UNKNOWN_DECODE_RATIO = 8


class BatchRunner:
    def __init__(
        self,
        job: BatchJob,
        engine: Engine,
        store: Store,
        files: list[Path],
        on_progress: Callable[[Summary], None] | None = None,
        hashes: dict[str, tuple[str, tuple]] | None = None,
        offline: bool = False,
    ) -> None:
        """``offline``: no engine behind ``engine`` (only its model name): a file that needs an
        answer raises :class:`NeedsEngine` (``batch_settle``)."""
        self.job = job
        self.engine = engine
        self.store = store
        self.files = files
        self.on_progress = on_progress or (lambda s: None)
        self.summary = Summary(total=len(files))
        self.hashes = {} if hashes is None else hashes  # content hashes by name (settle's, reused)
        self._offline = offline
        self._by_file: dict[str, list[dict]] = {}  # earlier records of each input, by its real path
        self._by_key: dict[str, dict] = {}  # good records by key, for reuse
        self._inflight: dict[str, asyncio.Future] = {}
        self._final: dict[str, dict] = {}  # the record that stands for each file of this run
        self._params = params(job.sampling, job.thinking, job.system, job.windowing.as_dict())
        self._question = {"prompt": job.prompt, "model": engine.model, "params": self._params}

    # --- resume -------------------------------------------------------------------------
    def _load(self) -> None:
        records = self.store.load()  # refuses a file that is not ours before anything changes
        mine = {identity(str(p)) for p in self.files}
        for record in records:
            real = identity(record["file"])
            if real in mine:
                self._by_file.setdefault(real, []).append(record)
                if not record["error"] and record["key"]:
                    self._by_key[record["key"]] = record

    def _previous(self, name: str, key: str | None, error: str | None = None) -> dict | None:
        """The last record of file ``name`` (however it was named) with this key, if any (good
        or failed); ``key`` None: a failure of this question with this ``error`` (a refusal
        made before the content was hashed)."""
        matching = [
            r
            for r in self._by_file.get(identity(name), [])
            if r.get("key") == key and (key is not None or (r["error"] == error and same_question(r, self._question)))
        ]
        return matching[-1] if matching else None

    def _settled(self, name: str, previous: dict | None) -> bool:
        """Count a file whose record is already there (an answer, or a failure not to retry)."""
        if previous is None or (previous.get("error") and self.job.retry_failed):
            return False
        self._final[name] = previous
        if previous.get("error"):
            self.summary.failed += 1
            self.summary.failures.append((name, previous["error"]))
        else:
            self.summary.skipped += 1
        return True

    # --- the run --------------------------------------------------------------------------
    async def run(self) -> Summary:
        self._load()
        self._room = AudioRoom(self.job.audio_bytes)
        self._reading = asyncio.Semaphore(audio_room.READERS)
        queue: asyncio.Queue[Path] = asyncio.Queue()
        for p in self.files:
            queue.put_nowait(p)
        infer = asyncio.Semaphore(max(1, self.job.concurrency))
        workers = [
            asyncio.create_task(self._worker(queue, infer))
            for _ in range(min(len(self.files), self.job.concurrency + self.job.decode_ahead))
        ]
        compact = True
        try:
            await asyncio.gather(*workers)
        except NeedsEngine:
            compact = False
            raise
        except NoServerError as e:  # what is in flight stays unrecorded: a rerun does it
            self.summary.stopped = NoServerError(f"{e.message}; rerun the same command to continue")
        except StoreError as e:
            self.summary.stopped = e
            compact = False
        except asyncio.CancelledError:
            self.summary.interrupted = True
            raise
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            if compact:
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
        """One file, read (header, hash, decode) while it holds one of the :data:`~stepaudio_cli.audio_room.READERS`
        places, so the first files reach the engine first instead of all files at the end."""
        reading = ReadingPlace(self._reading)
        await reading.take()
        try:
            return await self._read_and_answer(path, infer, reading)
        finally:
            reading.leave()

    async def _read_and_answer(self, path: Path, infer: asyncio.Semaphore, reading: ReadingPlace) -> dict | None:
        name = str(path)
        # One request holds at most the context; a recording answered in windows may be longer.
        context = None if self.job.windowing.enabled else self.engine.max_model_len
        try:
            length = await asyncio.to_thread(header, path, name)
        except OSError as e:
            return await self._record_failure(name, None, None, f"cannot read ({e.strerror or e})")
        if length is not None and (self.job.windowing.enabled or not self._offline):
            try:  # refused from its header, before anything is hashed or decoded
                if context:
                    generation_room([length], self.job.sampling, context)
                check_length(length, context)
            except UserError as e:
                message = _strip_name(e.message, name)
                if self._settled(name, self._previous(name, None, message)):
                    return None
                return await self._record_failure(name, None, None, message, length.duration)
        try:
            sha, when = await asyncio.to_thread(content_hash, path, self.hashes)  # off the event loop
        except OSError as e:
            return await self._record_failure(name, None, None, f"cannot read ({e.strerror or e})")
        key = request_key(sha, self.job, self.engine.model)
        if self._settled(name, self._previous(name, key)):
            return None
        if key in self._by_key:  # same audio and settings already answered under another name
            return await self._reuse(name, self._by_key[key])
        if key in self._inflight:
            reading.leave()  # waits for another file's answer: reading is over
            source = await asyncio.shield(self._inflight[key])
            if source is not None and not source.get("error"):
                return await self._reuse(name, source)
        if self._offline:
            raise NeedsEngine
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        record = None
        held = Held(self._room)
        try:
            record = await self._decode_and_answer(name, path, when, sha, key, length, infer, held, reading)
            return record
        finally:
            held.release()
            future.set_result(record)
            self._inflight.pop(key, None)

    async def _decode_and_answer(
        self,
        name: str,
        path: Path,
        when: tuple,
        sha: str,
        key: str,
        length,
        infer: asyncio.Semaphore,
        held: Held,
        reading: ReadingPlace,
    ) -> dict:
        context = None if self.job.windowing.enabled else self.engine.max_model_len
        try:
            # Room for decoding it (a length neither header nor container states: a guess from its size).
            await held.take(length.decode_bytes if length is not None else UNKNOWN_DECODE_RATIO * when[2])
            audio = await asyncio.to_thread(load_file, path, name, context)
            held.keep(audio.samples.nbytes)
            if await asyncio.to_thread(stamp, path) != when:
                raise UserError(f"{name}: changed while it was being read; rerun to try it again")
        except UserError as e:
            seconds = length.duration if length is not None else None
            return await self._record_failure(name, sha, key, _strip_name(e.message, name), seconds)
        except MemoryError:
            return await self._record_failure(name, sha, key, "not enough memory to decode it")
        except Exception as e:  # noqa: BLE001 - whatever a decoder raises: this file's failure
            return await self._record_failure(name, sha, key, f"cannot decode ({type(e).__name__}: {e})")
        finally:
            reading.leave()
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
                result = await self._send(request, infer)
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
        except MemoryError:
            return await self._record_failure(name, sha, key, "not enough memory for its request", audio.duration)
        record = self._record(
            name,
            sha,
            key,
            audio.duration,
            result=result,
            hide_reasoning=self.job.hide_reasoning,
            warnings=audio.warnings,
        )
        await self._write(record)
        self._by_key[key] = record
        self.summary.answered += 1
        self.summary.cut_off += result.finish_reason == "length"
        self.summary.audio_seconds += audio.duration
        self.summary.warnings += [(name, w) for w in record["warnings"] or ()]
        return record

    def _window_answered(self, progress: MapProgress) -> None:
        if progress.answered:  # the first call says how many there are: counted when planned
            self.summary.windows_answered += 1
            self.on_progress(self.summary)

    async def _send(self, request: Request, infer: asyncio.Semaphore) -> Result:
        """One request to the end, retried as ``--retries`` says (holding a place in ``infer``
        while in flight)."""
        return await send_with_retries(self.engine, request, self.job.retries, hold=infer)

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
        are; of this run's files, records of other questions (the last of each), then one per
        file for this run's question, in input order: the one that stands for it (or, where
        that is not on disk, the last of its question)."""
        finals = {identity(name): record for name, record in self._final.items()}
        order = [identity(str(p)) for p in self.files]
        ours = set(order)
        standing: dict[str, dict] = {}
        fallback: dict[str, dict] = {}
        last: dict[tuple, int] = {}
        for i, record in enumerate(on_disk):
            real = identity(record["file"])
            if real not in ours:
                continue
            final = finals.get(real)
            if final is not None and same_question(record, final):
                fallback[real] = record
                if record.get("key") == final.get("key") and record.get("error") == final.get("error"):
                    standing[real] = record
                continue
            question = json.dumps([record["prompt"], record["model"], record["params"]], sort_keys=True)
            last[real, record.get("key"), question] = i
        kept = set(last.values())
        chosen = [r for i, r in enumerate(on_disk) if identity(r["file"]) not in ours or i in kept]
        chosen += [standing.get(real) or fallback[real] for real in order if real in standing or real in fallback]
        self.summary.questions = dict(Counter(r["prompt"] for r in chosen))
        return chosen


def _strip_name(message: str, name: str) -> str:
    prefix = name + ": "
    return message[len(prefix) :] if message.startswith(prefix) else message


async def run_batch(
    job: BatchJob,
    engine: Engine,
    store: Store,
    files: list[Path],
    on_progress: Callable[[Summary], None] | None = None,
    hashes: dict[str, tuple[str, tuple]] | None = None,
) -> Summary:
    """Run every file on a started engine. Ctrl-C or SIGTERM stops it cleanly: in-flight
    requests are cancelled, everything finished is already on disk, and the returned
    summary says ``interrupted``."""
    runner = BatchRunner(job, engine, store, files, on_progress, hashes)
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()

    def terminated() -> None:
        runner.summary.signal = signal.SIGTERM
        task.cancel()

    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGTERM, terminated)
    started = time.monotonic()
    try:
        await runner.run()
    except asyncio.CancelledError:
        runner.summary.interrupted = True
        runner.summary.signal = runner.summary.signal or signal.SIGINT
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
    hashes: dict[str, tuple[str, tuple]] | None = None,
) -> Summary:
    """An engine session for the whole batch: ``on_status`` hears what the engine waits for
    (loading, a server to come back), ``on_start`` that files are being sent, ``on_progress``
    the summary after each file; ``hashes``: those ``batch_settle.settle`` computed."""
    async with open_engine(settings, on_status) as engine:
        if on_start:
            on_start()
        engine.max_sends = job.retries + 1  # --retries 0: one send, the pool's included
        return await run_batch(job, engine, store, files, on_progress, hashes)
