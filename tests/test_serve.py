"""`stepaudio serve`: the real vLLM OpenAI server on CPU with the plugin, on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import signal
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import SCRIPT, USER_SCRIPTS, ServerProcess, free_port, serve_command
from typer.testing import CliRunner

from stepaudio_cli import serve as core
from stepaudio_cli.cli import app
from stepaudio_cli.engines.settings import EngineSettings

runner = CliRunner()
REASONING, ANSWER = SCRIPT


def test_health_and_api_key(vllm_server):
    assert httpx.get(vllm_server.url + "/health").status_code == 200
    assert httpx.get(vllm_server.url + "/v1/models").status_code == 401
    ok = httpx.get(vllm_server.url + "/v1/models", headers={"Authorization": "Bearer sekret"})
    assert ok.status_code == 200 and ok.json()["data"][0]["max_model_len"] == 4096


def test_official_openai_client_with_input_audio(vllm_server, clip):
    import openai

    client = openai.OpenAI(base_url=vllm_server.url + "/v1", api_key="sekret")
    model = client.models.list().data[0].id
    audio = base64.b64encode(clip.read_bytes()).decode()  # 44.1 kHz stereo: the server resamples
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is happening?"},
                {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}},
            ],
        }
    ]
    reply = client.chat.completions.create(model=model, messages=messages, max_tokens=64)
    message = reply.choices[0].message
    assert message.content == ANSWER
    assert (getattr(message, "reasoning", None) or getattr(message, "reasoning_content", None)) == REASONING
    assert reply.choices[0].finish_reason == "stop"  # stopped on <|EOT|>, not max_tokens

    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=64, stream=True)
    reasoning, content = [], []
    for chunk in stream:
        delta = chunk.choices[0].delta if chunk.choices else None
        if delta is None:
            continue
        extra = delta.model_extra or {}
        if extra.get("reasoning"):
            reasoning.append(extra["reasoning"])
        if delta.content:
            content.append(delta.content)
    assert ("".join(reasoning), "".join(content)) == (REASONING, ANSWER)


def test_port_in_use_is_one_line_naming_the_holder(vllm_server, scripted_ckpt):
    result = runner.invoke(app, ["serve", str(scripted_ckpt), "--port", str(vllm_server.port)])
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    holder = next(p for p in psutil.Process(vllm_server.proc.pid).children() if "api_server" in " ".join(p.cmdline()))
    assert line.startswith(f"error: port {vllm_server.port} on 127.0.0.1: already in use by pid {holder.pid} (")
    assert "vllm.entrypoints.openai.api_server" in line and line.endswith("(stop it, or pick another port with --port)")


def test_missing_model_and_wrong_model_are_one_line(tmp_path):
    result = runner.invoke(app, ["serve", str(tmp_path / "nope"), "--port", str(free_port())])
    assert result.exit_code == 2 and result.stderr.strip() == f"error: {tmp_path / 'nope'}: no such model directory"
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    result = runner.invoke(app, ["serve", str(tmp_path / "llama"), "--port", str(free_port())])
    assert result.exit_code == 2 and "not a Step-Audio checkpoint" in result.stderr
    result = runner.invoke(app, ["serve", "stepfun-ai/Step-Audio-R1", "--port", str(free_port())])
    assert result.exit_code == 2 and "stepaudio download stepfun-ai/Step-Audio-R1" in result.stderr


@pytest.mark.parametrize(
    ("gpus", "tp", "pp", "expect_tp"), [(0, None, 1, 1), (4, None, 1, 4), (8, None, 2, 4), (8, 2, 1, 2)]
)
def test_command_carries_the_model_settings(gpus, tp, pp, expect_tp, tmp_path):
    engine = EngineSettings(
        model="stepfun-ai/Step-Audio-R1",
        max_model_len=None,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        distributed_executor_backend="ray" if pp > 1 else None,
        quantization="fp8" if gpus == 8 else None,
        kv_cache_dtype="fp8" if gpus == 4 else "auto",
    )
    opts = core.ServeOptions(engine=engine, api_key="k", extra=["--enable-prefix-caching"], raw_reasoning=tp == 2)
    cmd = core.build_command(opts, tmp_path, gpus)
    args = {cmd[i]: cmd[i + 1] for i in range(4, len(cmd) - 1)}
    # -P: the current folder stays off the server's import path
    assert cmd[:4] == [sys.executable, "-P", "-m", "vllm.entrypoints.openai.api_server"]
    assert args["--tensor-parallel-size"] == str(expect_tp) and args["--pipeline-parallel-size"] == str(pp)
    assert args["--reasoning-parser"] == ("step_audio_r1_raw" if tp == 2 else "step_audio_r1")
    assert Path(args["--chat-template"]).read_text().count("<|BOT|>") >= 2
    assert args["--max-model-len"] == "-1" and args["--host"] == "127.0.0.1"  # -1: vLLM fits it to the KV cache
    assert args["--served-model-name"] == "stepfun-ai/Step-Audio-R1"
    assert "--api-key" not in cmd and "k" not in cmd  # the key goes through the environment
    # No max_tokens default: a request without one gets what the context leaves.
    assert json.loads(args["--override-generation-config"]) == {"temperature": 0.7, "top_p": 0.9}
    assert (args.get("--quantization") == "fp8") == (gpus == 8)
    assert args["--kv-cache-dtype"] == ("fp8" if gpus == 4 else "auto")
    assert cmd[-1] == "--enable-prefix-caching"
    assert ("--enforce-eager" in cmd) == (gpus == 0)
    # Every server of ours runs the reasoning-length processor (same tokens as in-process).
    assert args["--logits-processors"] == "stepaudio_cli.vllm_plugin.logits_processor:ThinkingLogitsProcessor"
    assert (args.get("--distributed-executor-backend") == "ray") == (pp > 1)


def test_sigterm_stops_every_process(scripted_ckpt, tmp_path):
    port = free_port()
    server = ServerProcess(serve_command(scripted_ckpt, port, max_model_len=2048), port, tmp_path / "serve.log")
    try:
        server.wait_healthy()
        deadline = time.monotonic() + 30  # stepaudio polls /health too, and then says so
        while time.monotonic() < deadline and "stepaudio ask --server" not in server.tail():
            time.sleep(0.2)
        log = server.tail()
        assert f"ready at http://127.0.0.1:{port}/v1 (context 2048 tokens: as asked)" in log
        assert "stepaudio ask --server" in log
        family = psutil.Process(server.proc.pid).children(recursive=True)
        assert family, "vLLM runs as child processes"
        server.proc.send_signal(signal.SIGTERM)  # to stepaudio only: it must take vLLM down
        assert server.proc.wait(60) == 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
            p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family
        ):
            time.sleep(0.5)
        left = [p.pid for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert left == [], f"left behind: {left}"
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/health")
    finally:
        server.stop()


def test_chat_template_renders_what_build_prompt_writes(vllm_server, scripted_ckpt):
    """vLLM's own chat path (/tokenize on the server) against the in-process prompt, token
    for token: the same turns, the \\n between the question and the audio, and each audio
    chunk expanded the same way by the plugin's processor."""
    import numpy as np
    from tokenizers import Tokenizer

    from stepaudio_cli.audio import Audio
    from stepaudio_cli.audio_tokens import chunk_tokens
    from stepaudio_cli.prompt import build_messages, build_prompt
    from stepaudio_cli.tiny_checkpoint import SPECIAL_TOKENS

    audio = Audio("a.wav", (0.1 * np.sin(np.arange(16000 * 30) / 16000 * 2 * np.pi * 440)).astype(np.float32))
    served = httpx.post(
        vllm_server.url + "/tokenize",
        headers={"Authorization": "Bearer sekret"},
        timeout=120,
        json={
            "model": httpx.get(vllm_server.url + "/v1/models", headers={"Authorization": "Bearer sekret"}).json()[
                "data"
            ][0]["id"],
            "messages": build_messages("What is this?", [audio], system="Be brief."),
            "add_generation_prompt": False,
            "continue_final_message": True,
        },
    )
    assert served.status_code == 200, served.text
    ours = (
        Tokenizer.from_file(str(scripted_ckpt / "tokenizer.json"))
        .encode(build_prompt("What is this?", [audio], system="Be brief."), add_special_tokens=False)
        .ids
    )
    start, patch, end = (SPECIAL_TOKENS[t] for t in ("<audio_start>", "<audio_patch>", "<audio_end>"))
    chunks = iter(audio.chunks())
    expanded = [
        t for i in ours for t in ([start, *[patch] * chunk_tokens(len(next(chunks))), end] if i == patch else [i])
    ]
    assert served.json()["tokens"] == expanded
    assert ours.count(patch) == 2  # 30 s: two chunks


def test_serve_runs_in_a_folder_of_scripts_named_like_the_standard_library(vllm_server):
    """The session's server was started, as a user would, from a folder holding timeit.py, json.py
    and typing.py that fail when imported: neither `stepaudio serve` nor vLLM's processes (its
    engine core included) put that folder on their import path."""
    assert {p.name for p in vllm_server.cwd.iterdir()} >= set(USER_SCRIPTS)
    assert httpx.get(vllm_server.url + "/health", timeout=10).status_code == 200
    assert "was imported" not in vllm_server.tail(200_000)
