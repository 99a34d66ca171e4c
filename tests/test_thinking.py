"""The reasoning-length dial on the real engine (logits processor) and against a real
server (two-phase requests), with the scripted checkpoint: its reasoning is
"I hear a steady tone" (5 tokens), then </think>, then "A beep."."""

from __future__ import annotations

import json

import pytest
from conftest import SCRIPT, LoopThread, tone
from typer.testing import CliRunner

from stepaudio_cli.audio import Audio
from stepaudio_cli.cli import app
from stepaudio_cli.engines import EngineSettings, collect, make_engine
from stepaudio_cli.engines.remote import RemoteEngine
from stepaudio_cli.errors import UserError
from stepaudio_cli.prompt import NO_THINK_PREFIX, build_prompt
from stepaudio_cli.request import Request, Sampling, Thinking

REASONING, ANSWER = SCRIPT
AUDIO = (Audio("t.wav", tone(2.0)),)


def request(thinking: Thinking, max_tokens: int = 60) -> Request:
    return Request(audios=AUDIO, question="Q", sampling=Sampling(max_tokens=max_tokens, seed=3), thinking=thinking)


@pytest.fixture(scope="module")
def local(scripted_ckpt):
    loop = LoopThread()
    engine = make_engine(
        EngineSettings(model=str(scripted_ckpt), max_model_len=4096, max_num_seqs=4, thinking_processor=True)
    )
    loop.run(engine.start())
    yield lambda req: loop.run(collect(engine, req))
    loop.run(engine.close())
    loop.close()


@pytest.fixture(scope="module")
def remote(vllm_server):
    loop = LoopThread()
    engine = RemoteEngine(vllm_server.url, api_key="sekret")
    loop.run(engine.start())
    yield lambda req: loop.run(collect(engine, req))
    loop.run(engine.close())
    loop.close()


@pytest.fixture(params=["local", "remote"])
def run(request):
    return request.getfixturevalue(request.param)


@pytest.mark.engine
def test_unconstrained_reasoning_is_the_scripted_one(run):
    result = run(request(Thinking()))
    assert (result.reasoning, result.answer) == SCRIPT
    assert result.usage.reasoning_tokens == 5


@pytest.mark.engine
@pytest.mark.parametrize("budget", [1, 3, 5])
def test_think_budget_caps_reasoning_and_an_answer_follows(run, budget):
    result = run(request(Thinking(budget=budget)))
    assert result.usage.reasoning_tokens <= budget
    if budget < 5:  # cut short: a strict prefix of the scripted reasoning
        assert REASONING.startswith(result.reasoning) and len(result.reasoning) < len(REASONING)
    else:
        assert result.reasoning == REASONING
    assert result.answer == ANSWER
    assert result.finish_reason == "stop"


@pytest.mark.engine
def test_min_think_holds_the_end_tag_back(run):
    result = run(request(Thinking(min_tokens=20, budget=25)))
    assert 20 <= result.usage.reasoning_tokens <= 25
    assert result.reasoning.startswith(REASONING)  # the script, then whatever the model found instead of </think>
    assert result.answer == ANSWER  # the budget closed it, then the script's answer


@pytest.mark.engine
def test_min_think_alone_gives_at_least_that_many(run):
    result = run(request(Thinking(min_tokens=20), max_tokens=30))
    assert result.usage.reasoning_tokens >= 20


@pytest.mark.engine
def test_no_think_answers_with_an_empty_reasoning_block(run):
    result = run(request(Thinking(enabled=False), max_tokens=20))
    assert result.reasoning == "" and result.usage.reasoning_tokens == 0
    assert result.answer  # everything generated is answer


def test_no_think_prompt_format():
    assert build_prompt("Q", AUDIO, assistant_prefix=NO_THINK_PREFIX).endswith(
        "<|BOT|>assistant\n<think>\n\n</think>\n"
    )


def test_effort_presets_and_conflicts():
    assert Thinking.from_options(None, None, "low", False) == Thinking(budget=256)
    assert Thinking.from_options(None, None, "high", False) == Thinking(min_tokens=2048)
    assert Thinking.from_options(100, None, "medium", False).budget == 100  # explicit beats the preset
    with pytest.raises(UserError, match="--no-think cannot"):
        Thinking.from_options(10, None, None, True)
    with pytest.raises(UserError, match="--effort must be"):
        Thinking.from_options(None, None, "max", False)
    with pytest.raises(UserError, match="more than --think-budget"):
        Thinking.from_options(10, 20, None, False)


def test_ask_json_records_the_thinking_settings(vllm_server, clip):
    result = CliRunner().invoke(
        app, ["ask", "--json", "-s", vllm_server.url, "--api-key", "sekret", "--think-budget", "2", str(clip), "Q"]
    )
    assert result.exit_code == 0, result.stderr
    obj = json.loads(result.stdout)
    assert (obj["params"]["think"], obj["params"]["think_budget"], obj["params"]["min_think"]) == (True, 2, None)
    assert obj["usage"]["reasoning_tokens"] <= 2 and obj["answer"] == ANSWER
