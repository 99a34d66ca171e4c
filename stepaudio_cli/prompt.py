"""Step-Audio-R1's prompt format: the raw prompt (in-process) and chat messages (servers).

Prompt::

    <|BOT|>system\\n{system}<|EOT|><|BOT|>human\\n{question}\\n<audio_patch>...<|EOT|><|BOT|>assistant\\n<think>\\n

The model continues with its reasoning, ``</think>``, then the answer, and stops on
``<|EOT|>``. The chat template the server uses writes the same (a test compares them).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from stepaudio_cli.audio import Audio
from stepaudio_cli.checkpoint import AUDIO_PATCH, BOT, EOT, THINK_END, THINK_START

ASSISTANT_PREFIX = THINK_START + "\n"
# The format the model was trained on for direct answers: an empty reasoning block.
NO_THINK_PREFIX = THINK_START + "\n\n" + THINK_END + "\n"


def build_prompt(
    question: str, audios: Sequence[Audio], system: str | None = None, assistant_prefix: str = ASSISTANT_PREFIX
) -> str:
    """The raw prompt for the in-process engine: one ``<audio_patch>`` per chunk.

    The model's multimodal processor expands each placeholder into
    ``<audio_start>`` + N x ``<audio_patch>`` + ``<audio_end>``.
    """
    parts = []
    if system:
        parts.append(f"{BOT}system\n{system}{EOT}")
    n_chunks = sum(len(a.chunks()) for a in audios)
    audio = ("\n" if question and n_chunks else "") + AUDIO_PATCH * n_chunks
    parts.append(f"{BOT}human\n{question}{audio}{EOT}")
    parts.append(f"{BOT}assistant\n{assistant_prefix}")
    return "".join(parts)


def build_messages(
    question: str, audios: Sequence[Audio], system: str | None = None, assistant_prefix: str = ASSISTANT_PREFIX
) -> list[dict]:
    """OpenAI chat messages: text, then one ``input_audio`` part (16 kHz WAV) per chunk,
    then an assistant turn ``<think>\\n`` that the server continues."""
    from stepaudio_cli.audio import wav_bytes

    content: list[dict] = [{"type": "text", "text": question}]
    for audio in audios:
        for chunk in audio.chunks():
            data = base64.b64encode(wav_bytes(chunk)).decode("ascii")
            content.append({"type": "input_audio", "input_audio": {"data": data, "format": "wav"}})
    messages: list[dict] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "human", "content": content})
    messages.append({"role": "assistant", "content": assistant_prefix})
    return messages
