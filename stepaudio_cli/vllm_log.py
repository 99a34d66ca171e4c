"""vLLM's log: where it goes (kept off the user's terminal), and what a failed start means.

Shared by the in-process engine and ``serve``: both send vLLM's output to a log file and,
when vLLM fails to start, turn the cause found there into one line that says what to change.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path


def quiet_vllm_logs() -> None:
    """vLLM and transformers log to the terminal; keep them out of the user's output."""
    if not os.environ.get("STEPAUDIO_DEBUG"):
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def engine_log_path(name: str = "engine.log") -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stepaudio"
    base.mkdir(parents=True, exist_ok=True)
    return base / name


@contextlib.contextmanager
def engine_output_to_log():
    """Point fds 1 and 2 at the engine log while vLLM starts or stops: its engine processes
    inherit them for life, so their logs (vLLM logs to stdout), C++ warnings and progress bars
    stay out of the user's answer and terminal.

    Our Terminal writes errors through its own duplicate of stderr; nothing of ours goes to
    stdout meanwhile. ``STEPAUDIO_DEBUG=1`` leaves everything on the terminal. Yields the
    log's path (None under debug).
    """
    if os.environ.get("STEPAUDIO_DEBUG"):
        yield None
        return
    path = engine_log_path()
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    for fd in saved:
        os.dup2(log_fd, fd)
    try:
        yield path
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        os.close(log_fd)


def log_size(path: Path | None) -> int:
    try:
        return path.stat().st_size if path else 0
    except OSError:
        return 0


def read_since(path: Path | None, offset: int) -> str:
    """What vLLM wrote to the log from ``offset`` on (this start's part)."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


_KV_TOO_SMALL = re.compile(r"max seq len \((\d+)\).*?estimated maximum model length is (\d+)", re.S)


def diagnose(log_text: str) -> str | None:
    """A start failure the user can fix, as one line that says what to change; None when the
    log shows no known cause."""
    m = _KV_TOO_SMALL.search(log_text)
    if m:
        want, fits = int(m.group(1)), int(m.group(2))
        return (
            f"the KV cache holds about {fits:,} tokens, less than one request of --max-model-len {want:,}: "
            f"use --max-model-len {_round_down(fits)} or less, --quantization fp8, or more GPUs (-tp)"
        )
    if "larger than the available KV cache memory" in log_text:
        return (
            "the KV cache is too small for one request of --max-model-len: lower --max-model-len, "
            "use --quantization fp8, or more GPUs (-tp)"
        )
    if "No available memory for the cache blocks" in log_text:
        return (
            "no memory is left for the KV cache once the weights are loaded: use --quantization fp8, "
            "more GPUs (-tp), or a higher --gpu-memory-utilization"
        )
    if "CUDA out of memory" in log_text or "OutOfMemoryError" in log_text:
        return (
            "the GPU ran out of memory while starting the model: use --quantization fp8 (35 GB of weights "
            "instead of 66), more GPUs (-tp), or a lower --max-model-len"
        )
    return None


# The last line of a Python traceback: "SomeError: what happened" (vLLM's engine processes
# prefix their lines with "(EngineCore_DP0 pid=N)" and a log level).
_EXCEPTION_LINE = re.compile(r"(?:^|[\s:\]])((?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception)): (\S.*)$", re.M)
# What the API process says when the engine process failed: the cause is elsewhere in the log.
_NOT_THE_CAUSE = (
    "See root cause above",
    "Engine core initialization failed",
    "Worker failed with error",
    "WorkerProc initialization failed",
)


def root_cause(log_text: str) -> str | None:
    """The exception vLLM's log shows as the reason a start failed (``OSError: ... no file
    named model.safetensors``), without the generic lines that only point at it."""
    causes = [
        f"{kind}: {text.strip()}"
        for kind, text in _EXCEPTION_LINE.findall(log_text)
        if not any(generic in text for generic in _NOT_THE_CAUSE)
    ]
    return causes[-1][:300] if causes else None


def explain(log_text: str) -> str | None:
    """Why vLLM failed to start, from its log: a known cause as what to change, else vLLM's own
    root cause; None when the log shows neither."""
    return diagnose(log_text) or root_cause(log_text)


def _round_down(tokens: int) -> int:
    """A round number of tokens at most ``tokens``."""
    step = 1024 if tokens >= 2048 else 256 if tokens >= 512 else 16
    return max(16, tokens // step * step)


# Wording differs across vLLM versions ("took 33.27 seconds" before 0.3x, "took 200.69 s (compilation: 1.48 s)"
# after); each phase takes the first pattern that matches.
_REST = "profile, KV cache, warm-up"
_INIT = r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) s"
_START_PHASES = {
    "load weights": (
        r"Model loading took [\d.]+ GiB(?: memory)? and ([\d.]+) seconds",
        r"Loading weights took ([\d.]+) s",
    ),
    "compile": (r"warmup model\) took [\d.]+ s \(compilation: ([\d.]+) s", r"torch.compile takes ([\d.]+) s in total"),
    "capture CUDA graphs": (r"Graph capturing finished in ([\d.]+) secs",),
    _REST: (_INIT,),
}


#: What an engine start is doing, from the line of vLLM's log that begins each step (INFO, as
#: serve's log has it): the start's spinner names the last step begun.
_LOADING_STEPS = (
    (r"non-default args|vLLM API server version", "reading the model's config"),
    (r"Initializing a V1 LLM engine", "starting the engine process"),
    (r"Starting to load model|Loading model weights", "loading the weights"),
    (r"Loading weights took|Model loading took", "profiling memory"),
    (r"Dynamo bytecode transform|Compiling a graph", "compiling (torch.compile; cached for later starts)"),
    (r"[Dd]irectly load the compiled graph", "loading the compiled graphs (cache hit)"),
    (r"KV cache size|Available KV cache memory", "warming up"),
    (r"Capturing CUDA graph", "capturing CUDA graphs"),
    (r"Graph capturing finished", "warming up"),
    (r"init engine \(profile, create kv cache, warmup model\) took", "starting the server"),
)


def loading_step(log_text: str) -> str | None:
    """The step an engine start is in, from its log so far (None before the first one)."""
    found, where = None, -1
    for pattern, step in _LOADING_STEPS:
        for m in re.finditer(pattern, log_text):
            if m.start() > where:
                found, where = step, m.start()
    return found


@contextlib.contextmanager
def vllm_info_logs(path: Path | None):
    """vLLM's INFO lines while an engine starts, written to the real stderr, which
    :func:`engine_output_to_log` points at the engine log meanwhile (``bench`` reads the
    start's phases there); afterwards this process's vLLM logger is as quiet as before.
    Engine processes started meanwhile keep INFO, into the log, for life."""
    import logging

    if path is None:  # debug: vLLM logs to the terminal at the level the user chose
        yield
        return
    keys = ("VLLM_LOGGING_LEVEL", "VLLM_LOGGING_STREAM")
    before = {k: os.environ.get(k) for k in keys}
    os.environ.update({"VLLM_LOGGING_LEVEL": "INFO", "VLLM_LOGGING_STREAM": "ext://sys.__stderr__"})
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        quiet = before["VLLM_LOGGING_LEVEL"] or "ERROR"  # quiet_vllm_logs' level
        vllm_logger = logging.getLogger("vllm")
        for obj in (vllm_logger, *vllm_logger.handlers):
            obj.setLevel(quiet)


def start_phases(log_text: str) -> dict[str, float]:
    """Seconds an engine start spent in each phase vLLM's log reports (those it reports), each
    counted once: vLLM's "init engine" time contains compilation and graph capture, so its phase
    here is what is left of it (profiling, the KV cache, the rest of the warm-up)."""
    out = {}
    for name, patterns in _START_PHASES.items():
        for pattern in patterns:
            m = re.search(pattern, log_text)
            if m:
                out[name] = float(m.group(1))
                break
    if _REST in out:
        out[_REST] = max(0.0, out[_REST] - out.get("compile", 0.0) - out.get("capture CUDA graphs", 0.0))
    return {name: round(s, 1) for name, s in out.items()}
