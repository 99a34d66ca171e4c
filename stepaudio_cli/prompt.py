"""Step-Audio-R1's prompt format: the raw prompt (in-process) and chat messages (servers).

Prompt::

    <|BOT|>system\\n{system}<|EOT|><|BOT|>human\\n{question}\\n<audio_patch>...<|EOT|><|BOT|>assistant\\n<think>\\n

The model continues with its reasoning, ``</think>``, then the answer, and stops on
``<|EOT|>``. The chat template the server uses writes the same (a test compares them).

A follow-up in a conversation puts the earlier turns between the system prompt and its own
question, each as it was sent and answered: ``<|BOT|>human\\n...<|EOT|>`` then
``<|BOT|>assistant\\n<think>\\n{reasoning}</think>{answer}<|EOT|>`` with the reply exactly as the
model generated it (StepFun's template renders an earlier assistant message verbatim and
their client keeps the reasoning in it). So a follow-up's prompt starts with the previous
turn's prompt and generated tokens, and vLLM's prefix cache serves them, audio included.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import TYPE_CHECKING

from stepaudio_cli.audio import Audio
from stepaudio_cli.checkpoint import ASSISTANT_PREFIX, AUDIO_PATCH, BOT, EOT, NO_THINK_PREFIX

__all__ = ["ASSISTANT_PREFIX", "NO_THINK_PREFIX", "build_messages", "build_prompt"]

if TYPE_CHECKING:
    from stepaudio_cli.request import Turn


def build_prompt(
    question: str,
    audios: Sequence[Audio],
    system: str | None = None,
    assistant_prefix: str = ASSISTANT_PREFIX,
    history: Sequence[Turn] = (),
) -> str:
    """The raw prompt for the in-process engine: one ``<audio_patch>`` per chunk.

    The model's multimodal processor expands each placeholder into
    ``<audio_start>`` + N x ``<audio_patch>`` + ``<audio_end>``.
    """
    parts = []
    if system:
        parts.append(f"{BOT}system\n{system}{EOT}")
    for turn in history:
        parts.append(_human(turn.question, turn.audios))
        parts.append(f"{BOT}assistant\n{turn.reply}{EOT}")
    parts.append(_human(question, audios))
    parts.append(f"{BOT}assistant\n{assistant_prefix}")
    return "".join(parts)


def _human(question: str, audios: Sequence[Audio]) -> str:
    n_chunks = sum(len(a.chunks()) for a in audios)
    audio = ("\n" if question and n_chunks else "") + AUDIO_PATCH * n_chunks
    return f"{BOT}human\n{question}{audio}{EOT}"


def build_messages(
    question: str,
    audios: Sequence[Audio],
    system: str | None = None,
    assistant_prefix: str = ASSISTANT_PREFIX,
    history: Sequence[Turn] = (),
) -> list[dict]:
    """OpenAI chat messages: text, then one ``input_audio`` part (16 kHz WAV) per chunk,
    then an assistant turn ``<think>\\n`` that the server continues; a follow-up's earlier
    turns come first, each a human message and the assistant's reply as a string."""
    messages: list[dict] = []
    if system:
        messages.append({"role": "system", "content": system})
    for turn in history:
        messages.append({"role": "human", "content": _human_content(turn.question, turn.audios)})
        messages.append({"role": "assistant", "content": turn.reply})
    messages.append({"role": "human", "content": _human_content(question, audios)})
    messages.append({"role": "assistant", "content": assistant_prefix})
    return messages


def _human_content(question: str, audios: Sequence[Audio]) -> list[dict]:
    from stepaudio_cli.audio import wav_bytes

    content: list[dict] = [{"type": "text", "text": question}]
    for audio in audios:
        for chunk in audio.chunks():
            data = base64.b64encode(wav_bytes(chunk)).decode("ascii")
            content.append({"type": "input_audio", "input_audio": {"data": data, "format": "wav"}})
    return content
