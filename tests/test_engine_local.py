"""The real in-process engine (vLLM on CPU) with tiny checkpoints loaded by the plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import numpy as np
import psutil
import pytest
from conftest import SCRIPT, LoopThread, noise, tone, write_wav
from reference import next_token_logprobs
from typer.testing import CliRunner

from stepaudio_cli.audio import Audio, load_audio
from stepaudio_cli.audio_tokens import chunk_tokens
from stepaudio_cli.cli import app
from stepaudio_cli.engines import EngineSettings, collect, make_engine
from stepaudio_cli.prompt import build_prompt
from stepaudio_cli.request import Request, Sampling
from stepaudio_cli.resident import registry
from stepaudio_cli.tiny_checkpoint import SPECIAL_TOKENS, build_checkpoint

pytestmark = pytest.mark.engine
PATCH = SPECIAL_TOKENS["<audio_patch>"]


class Harness:
    def __init__(self, ckpt) -> None:
        self.loop = LoopThread()
        self.engine = make_engine(EngineSettings(model=str(ckpt), max_model_len=8192, max_num_seqs=8, dtype="float32"))
        self.loop.run(self.engine.start())

    def first_token_logprobs(self, audios: list[Audio], question: str = "What is this?", k: int = 20):
        """Run one greedy step; return (expanded prompt ids, {token id: logprob})."""
        from vllm import SamplingParams

        async def go():
            prompt = {
                "prompt": build_prompt(question, audios),
                "multi_modal_data": {"audio": [(c, 16000) for a in audios for c in a.chunks()]},
            }
            params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=k)
            final = None
            async for out in self.engine._engine.generate(prompt, params, uuid.uuid4().hex):
                final = out
            return final

        out = self.loop.run(go())
        top = {tid: lp.logprob for tid, lp in out.outputs[0].logprobs[0].items()}
        return list(out.prompt_token_ids), top

    def close(self) -> None:
        self.loop.run(self.engine.close())
        self.loop.close()


@pytest.fixture(scope="module")
def engine_a(ckpt):
    h = Harness(ckpt)
    yield h
    h.close()


def text_tokens(ckpt, text: str) -> int:
    from tokenizers import Tokenizer

    return len(Tokenizer.from_file(str(ckpt / "tokenizer.json")).encode(text).ids)


@pytest.mark.parametrize("seconds", [3.0, 10.0, 25.0, 40.0, 61.0])
def test_audio_tokens_in_the_prompt_follow_the_formula(engine_a, ckpt, seconds):
    audio = Audio("a.wav", tone(seconds))
    ids, _ = engine_a.first_token_logprobs([audio])
    chunks = audio.chunks()
    placeholders = build_prompt("What is this?", [audio])
    # Each <audio_patch> placeholder becomes <audio_start> + N x <audio_patch> + <audio_end>.
    expected = text_tokens(ckpt, placeholders) + sum(chunk_tokens(len(c)) + 1 for c in chunks)
    assert len(ids) == expected
    assert ids.count(PATCH) == sum(chunk_tokens(len(c)) for c in chunks)
    assert ids.count(SPECIAL_TOKENS["<audio_start>"]) == ids.count(SPECIAL_TOKENS["<audio_end>"]) == len(chunks)


def test_logits_match_an_independent_forward_pass(engine_a, ckpt, tmp_path):
    # 44.1 kHz stereo on disk: what reaches the encoder is the resampled 16 kHz mono signal.
    path = write_wav(tmp_path / "in.wav", np.stack([tone(27.0, sr=44100), noise(27.0, sr=44100)], 1), sr=44100)
    audio = load_audio(str(path))
    ids, top = engine_a.first_token_logprobs([audio])
    reference = next_token_logprobs(ckpt, ids, audio.chunks(), PATCH)
    assert max(top, key=top.get) == int(reference.argmax())
    for tid, logprob in top.items():
        assert logprob == pytest.approx(float(reference[tid]), abs=2e-3), tid


def test_the_audio_changes_the_logits(engine_a):
    _, with_tone = engine_a.first_token_logprobs([Audio("t.wav", tone(5.0))])
    _, with_noise = engine_a.first_token_logprobs([Audio("n.wav", noise(5.0))])
    assert with_tone != with_noise


def test_the_encoder_weights_in_the_file_are_used(engine_a, ckpt, tmp_path_factory):
    """Same LLM, different audio tower in the file: different logits for the same audio."""
    audio = Audio("t.wav", tone(5.0))
    _, a = engine_a.first_token_logprobs([audio])
    other = build_checkpoint(tmp_path_factory.mktemp("ckpt_b"), seed=0, encoder_seed=99)
    b_engine = Harness(other)
    try:
        _, b = b_engine.first_token_logprobs([audio])
    finally:
        b_engine.close()
    shared = set(a) & set(b)
    assert a != b
    assert not shared or max(abs(a[t] - b[t]) for t in shared) > 1e-3


def test_streaming_request_reports_usage(engine_a):
    request = Request(audios=(Audio("t.wav", tone(2.0)),), question="Q", sampling=Sampling(max_tokens=12, seed=1))
    pieces = []
    result = engine_a.loop.run(collect(engine_a.engine, request, pieces.append))
    assert result.usage.completion_tokens == 12 and result.finish_reason == "length"
    assert result.usage.prompt_tokens > chunk_tokens(32000)
    assert len(pieces) >= 2  # streamed, not one lump
    assert result.timings.time_to_first_token is not None and result.timings.tokens_per_s > 0


def children() -> set[int]:
    """This process's descendants, less Python's multiprocessing resource tracker: the first
    engine in a process starts it, and by design it lives as long as the process (it is
    what made this check fail when the test ran first)."""
    found = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if "multiprocessing.resource_tracker" not in " ".join(p.cmdline()):
                found.add(p.pid)
        except psutil.NoSuchProcess:  # exited while we looked: not left behind
            pass
    return found


def test_ask_in_process_end_to_end(scripted_ckpt, clip, own_registry):
    before = children()
    args = ["ask", "--keep-alive", "0", "--model", str(scripted_ckpt), str(clip), "What is happening?"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    reasoning, answer = SCRIPT
    assert result.stdout == answer + "\n"
    assert reasoning in result.stderr
    # vLLM's own chatter went to the engine log, not to the user's terminal.
    assert "INFO" not in result.stderr and "Loading safetensors" not in result.stderr
    assert children() - before == set(), "engine processes left behind"
    assert not list(registry.folder().iterdir()), "--keep-alive 0 registered an engine"


def test_ask_in_process_json(scripted_ckpt, clip):
    result = CliRunner().invoke(app, ["ask", "--json", "--keep-alive", "0", "-m", str(scripted_ckpt), str(clip), "Q?"])
    assert result.exit_code == 0, result.stderr
    obj = json.loads(result.stdout)
    assert (obj["reasoning"], obj["answer"]) == SCRIPT
    assert obj["usage"]["reasoning_tokens"] == text_tokens(scripted_ckpt, SCRIPT[0])


def test_too_long_audio_is_refused_before_the_engine_starts(ckpt, tmp_path):
    long = write_wav(tmp_path / "long.wav", tone(400.0))
    result = CliRunner().invoke(
        app, ["ask", "-m", str(ckpt), "--max-model-len", "4096", str(long), "Q?", "--no-window"]
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {long}: 6m40s of audio needs")
    # Windows on (the default), but a context with no room for one next to the reasoning reserve.
    result = CliRunner().invoke(app, ["ask", "-m", str(ckpt), "--max-model-len", "2048", str(long), "Q?"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {long}: 6m40s is too long for one request")
    assert "raise --max-model-len to at least" in result.stderr
    assert not (tmp_path / "cache" / "stepaudio" / "engine.log").exists()  # vLLM never started


def test_not_a_step_audio_checkpoint(tmp_path, clip):
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(
        json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    )
    result = CliRunner().invoke(app, ["ask", "-m", str(tmp_path / "llama"), str(clip), "Q?"])
    assert result.exit_code == 2
    assert "not a Step-Audio checkpoint" in result.stderr and "Traceback" not in result.stderr


def test_missing_vllm_is_one_line(ckpt, clip):
    code = (
        "import sys; sys.modules['vllm'] = None\n"
        "from stepaudio_cli.cli import main\n"
        f"sys.argv = ['stepaudio', 'ask', '--keep-alive', '0', '-m', {str(ckpt)!r}, {str(clip)!r}, 'Q?']\n"
        "main()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ}, timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("error: the in-process engine needs vLLM")
    assert "pip install vllm" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "when, sig",
    [("generation", "SIGINT"), ("start-up", "SIGINT"), ("start-up", "SIGKILL")],
)
def test_interrupted_or_killed_ask_leaves_no_process(ckpt, clip, tmp_path, when, sig):
    """Ctrl-C while the engine starts or generates: exit 130. kill -9 (nothing of ours runs
    after it): the watchdog stops vLLM's engine processes. Either way none is left."""
    import signal

    log = tmp_path / "ask.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "stepaudio_cli", "ask", "--keep-alive", "0", "-m", str(ckpt), "--max-tokens", "6000"]
        + [str(clip), "Q?"],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        # A shell's background job starts with SIGINT ignored, and Python keeps it so: give
        # the child the default a terminal's process has, whoever started the tests.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )

    def engine_processes():
        found = []
        for p in psutil.Process(proc.pid).children(recursive=True):
            try:
                if p.name().startswith("VLLM"):
                    found.append(p)
            except psutil.NoSuchProcess:  # a short-lived helper process gone between the two calls
                continue
        return found

    try:
        deadline = time.monotonic() + 180
        if when == "start-up":  # the engine's processes exist, the model is not up yet
            while time.monotonic() < deadline and not engine_processes():
                assert proc.poll() is None, log.read_text()
                time.sleep(0.05)
            time.sleep(0.5)  # (the engine hands each new process to its watchdog within 0.1 s)
            assert "Loading" in log.read_text() and len(log.read_bytes()) < 200
        else:  # reasoning text streams (the random model never closes it)
            while time.monotonic() < deadline and len(log.read_bytes()) < 200:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.2)
        family = psutil.Process(proc.pid).children(recursive=True)
        assert engine_processes(), "the engine runs in child processes"
        proc.send_signal(getattr(signal, sig))
        code = proc.wait(60)
        text = log.read_text()
        if sig == "SIGINT":
            assert code == 130 and "error: interrupted" in text and "Traceback" not in text, text
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
            p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family
        ):
            time.sleep(0.2)
        left = [p.pid for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert left == [], f"left behind: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
