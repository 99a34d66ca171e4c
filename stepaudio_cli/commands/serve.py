"""stepaudio serve [MODEL] [-- EXTRA_VLLM_ARGS...]"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stepaudio_cli.commands import options
from stepaudio_cli.defaults import DEFAULT_MAX_NUM_SEQS, DEFAULT_MODEL

DIST = "Multi-GPU / multi-node"


def serve(
    ctx: typer.Context,
    model: Annotated[
        str, typer.Argument(envvar="STEPAUDIO_MODEL", help="Local path or hub repo id (downloaded already).")
    ] = DEFAULT_MODEL,
    host: Annotated[str, typer.Option(envvar="STEPAUDIO_HOST", help="Address to bind; 0.0.0.0 exposes it.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="STEPAUDIO_PORT", min=1, max=65535)] = 9999,
    api_key: Annotated[
        str | None, typer.Option(envvar="STEPAUDIO_API_KEY", help="Require this bearer token on /v1 requests.")
    ] = None,
    tensor_parallel_size: Annotated[
        str, typer.Option("--tensor-parallel-size", "-tp", envvar="STEPAUDIO_TENSOR_PARALLEL_SIZE",
                          help="GPUs per pipeline stage, or 'auto' (all visible GPUs).", rich_help_panel=DIST)
    ] = "auto",
    pipeline_parallel_size: Annotated[
        int, typer.Option("--pipeline-parallel-size", "-pp", min=1, help="Pipeline stages (e.g. one per node).",
                          rich_help_panel=DIST)
    ] = 1,
    distributed_executor_backend: Annotated[
        str | None, typer.Option(help="vLLM executor: mp (one node) or ray (several nodes).", rich_help_panel=DIST)
    ] = None,
    max_model_len: Annotated[
        int | None,
        typer.Option(envvar="STEPAUDIO_MAX_MODEL_LEN", min=1024,
                     help="Context length (default: the most the KV cache holds, up to the model's maximum)."),
    ] = None,
    quantization: options.QuantOpt = None,
    raw_reasoning: Annotated[
        bool,
        typer.Option("--raw-reasoning", envvar="STEPAUDIO_RAW_REASONING",
                     help="Send reasoning, </think> and answer all in `content`, as StepFun's server does "
                          "(for clients that split the text themselves, like StepFun's own examples)."),
    ] = False,
    max_num_seqs: Annotated[int, typer.Option(envvar="STEPAUDIO_MAX_NUM_SEQS", min=1, help="Requests batched at once.")] = DEFAULT_MAX_NUM_SEQS,
    gpu_memory_utilization: options.GpuMemOpt = None,
    dtype: options.DtypeOpt = "auto",
    log_file: Annotated[Path | None, typer.Option(help="Where vLLM's log goes (default: the cache folder).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show vLLM's log on the terminal.")] = False,
    ready_timeout: Annotated[float, typer.Option(help="Seconds to wait for /health.")] = 1800.0,
    keep_alive: Annotated[
        str | None, typer.Option(help="Stop after this long without requests (e.g. 30m; default: run until stopped).")
    ] = None,
    resident: Annotated[str | None, typer.Option(hidden=True, help="Run as this resident engine (ask/batch).")] = None,
) -> None:
    """Start vLLM's OpenAI-compatible server for Step-Audio-R1 (arguments after `--` go to vLLM)."""
    from stepaudio_cli import serve as core
    from stepaudio_cli.resident import parse_keep_alive
    from stepaudio_cli.vllm_log import engine_log_path

    term = options.terminal(ctx)
    opts = core.ServeOptions(
        model=model, host=host, port=port, api_key=api_key, tensor_parallel_size=tensor_parallel_size,
        pipeline_parallel_size=pipeline_parallel_size, max_model_len=max_model_len, max_num_seqs=max_num_seqs,
        gpu_memory_utilization=gpu_memory_utilization, dtype=dtype,
        distributed_executor_backend=distributed_executor_backend, extra=list(ctx.args), quantization=quantization,
        raw_reasoning=raw_reasoning, keep_alive=None if keep_alive is None else parse_keep_alive(keep_alive),
        resident=resident,
    )
    log = log_file or engine_log_path(f"serve-{port}.log")

    def ready(url: str, context: str) -> None:
        how = "as asked" if max_model_len else "the most the KV cache holds, up to the model's maximum"
        term.success(f"Step-Audio-R1 server ready at {url}/v1 (context {context} tokens: {how})")
        key = " --api-key ..." if api_key else ""
        term.info(f'Try: stepaudio ask --server {url}{key} clip.wav "What is happening in this audio?"')
        if not verbose:
            term.info(f"Server log: {log}. Ctrl-C stops it.")

    code = core.run(
        opts, log_path=log, passthrough=verbose, ready_timeout=ready_timeout, on_status=term.status_line(), on_ready=ready,
    )
    raise typer.Exit(code)
