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


#: What an engine start does, in the order vLLM does it: what the start's spinner says meanwhile.
START_PHASES = {
    "process start and imports": "starting vLLM",
    "config and tokenizer": "reading the model's config and tokenizer",
    "engine process start": "starting the engine process",
    "device init": "setting up the GPU",
    "weight loading": "loading the weights",
    "memory profiling": "profiling memory",
    "torch.compile": "compiling (torch.compile; cached for later starts)",
    "KV cache": "allocating the KV cache",
    "CUDA graph capture": "capturing CUDA graphs",
    "warm-up": "warming up",
    "server start": "starting the server",
}
_COMPILED = (
    r"torch\.compile (?:takes|took) ([\d.]+) s in total"
    r"|torch\.compile and initial profiling/warmup run together took ([\d.]+) s"
)
#: The lines of vLLM's log (0.26-0.32 wording) that tell where a phase begins: (phase, pattern,
#: when). "at": the phase begins at the line; "ends": the line, written when the phase ends,
#: reports its seconds; "after the line before": vLLM says nothing when the phase begins, so it
#: begins where the line before left off (a new engine process logs first once it is up: its
#: start, an interpreter importing vLLM where it is spawned, follows the server's last line).
_MARKS = (
    ("config and tokenizer", r"vLLM API server version|non-default args|Resolved architecture", "at"),
    ("engine process start", r"Initializing a V1 LLM engine", "after the line before"),
    ("device init", r"world_size=\d+ rank=\d+", "at"),
    ("weight loading", r"Starting to load model|Loading model weights", "at"),
    ("memory profiling", r"Model loading took", "at"),
    (
        "torch.compile",
        r"Using cache directory: .* torch\.compile|Dynamo bytecode transform|Directly load (?:AOT|the compiled)",
        "at",
    ),
    ("torch.compile", _COMPILED, "ends"),
    ("memory profiling", _COMPILED, "at"),
    ("KV cache", r"Available KV cache memory|GPU KV cache size", "at"),
    ("CUDA graph capture", r"Capturing CUDA graph", "at"),
    ("warm-up", r"Graph capturing finished", "at"),
    ("server start", r"init engine \(profile, create kv cache, warmup model\) took", "at"),
)
_COMPILE_HIT = r"Directly load (?:AOT compilation|the compiled graph)"
_COMPILE_MISS = r"Compiling a graph for|Cache the graph of|saved AOT compiled function"


def compile_cache(log_text: str) -> str | None:
    """ "hit" when a start loaded its compiled model from vLLM's compile cache, "miss" when it
    compiled; None when it did neither (eager mode, a CPU)."""
    if re.search(_COMPILE_MISS, log_text):
        return "miss"
    if re.search(_COMPILE_HIT, log_text):
        return "hit"
    return None


def loading_step(log_text: str) -> str | None:
    """What an engine start is doing, from its log so far (None before vLLM's first line)."""
    found, where = None, -1
    for phase, pattern, _ in _MARKS:
        for m in re.finditer(pattern, log_text):
            if m.start() >= where:
                found, where = phase, m.start()
    if found == "torch.compile" and compile_cache(log_text) == "hit":
        return "loading the compiled model (compile cache hit)"
    return START_PHASES[found] if found else None


_STAMP = re.compile(r"\b(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) (\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)\b")


def stamped_lines(log_text: str, launched: float) -> list[tuple[float, str]]:
    """vLLM's log lines with the second each was written, counted from ``launched`` (epoch
    seconds). vLLM stamps whole seconds of local time without the year: a line counts from the
    middle of its second, in the year that puts it nearest the launch."""
    from datetime import datetime

    year = datetime.fromtimestamp(launched).year
    out = []
    for line in log_text.splitlines():
        m = _STAMP.search(line)
        if not m:
            continue
        month, day, hour, minute, second = map(int, m.groups())
        try:
            nearest = min(
                (datetime(y, month, day, hour, minute, second).timestamp() for y in (year - 1, year, year + 1)),
                key=lambda when: abs(when - launched),
            )
        except ValueError:  # not a date (February 29th of a year without one: the line is left out)
            continue
        out.append((nearest + 0.5 - launched, line))
    return out


def start_timeline(
    lines: list[tuple[float, str]], ready_s: float, begun: dict[str, float] | None = None
) -> dict[str, float]:
    """Seconds of an engine start in each phase (:data:`START_PHASES`), from vLLM's log lines
    stamped with the second (since launch) each was written and the second the engine was
    ready: "process start and imports" until vLLM's first phase line, then each phase until the
    next begins; together they are the whole start. The compile phase names the compile cache
    ("torch.compile (cache hit)"). ``begun``: phases whose start the caller saw itself (an
    in-process engine knows when vLLM was imported: its config phase starts then, before vLLM
    logs anything), in seconds since launch."""
    bounds = [(0.0, "process start and imports"), *((t, phase) for phase, t in (begun or {}).items())]
    for phase, pattern, when in _MARKS:
        for i, (t, line) in enumerate(lines):
            m = re.search(pattern, line)
            if m:
                if when == "ends":
                    t -= next((float(g) for g in m.groups() if g), 0.0)
                elif when == "after the line before" and i:
                    t = lines[i - 1][0]
                bounds.append((min(max(t, 0.0), ready_s), phase))
                break
    bounds.sort(key=lambda b: b[0])
    cache = compile_cache("\n".join(line for _, line in lines))
    phases: dict[str, float] = {}
    for (t, phase), (t_next, _) in zip(bounds, [*bounds[1:], (ready_s, "")]):
        if phase == "torch.compile" and cache:
            phase = f"torch.compile (cache {cache})"
        phases[phase] = phases.get(phase, 0.0) + max(0.0, t_next - t)
    return {phase: round(s, 1) for phase, s in phases.items()}


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
