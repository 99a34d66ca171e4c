"""Where model weights live: local paths, hub repo ids resolved from the local cache."""

from __future__ import annotations

import json
from pathlib import Path

from stepaudio_cli.errors import UserError

STEP_AUDIO_MODEL_TYPE = "step_audio_2"
STEP_AUDIO_ARCH = "StepAudio2ForCausalLM"


def looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def resolve_model(name: str, *, revision: str | None = None) -> Path:
    """A local directory for ``name`` (a path, or a repo id already in the HF cache).

    Never touches the network: a repo id that is not downloaded yet is an error that says
    how to get it.
    """
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{name}: not a model directory")
        return path
    if not looks_like_repo_id(name):
        raise UserError(f"{name}: no such model directory")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        raise UserError(
            f"{name}: not downloaded yet; run `stepaudio download {name}` (or pass --model with a local path)"
        ) from None


def check_checkpoint(path: Path) -> dict:
    """The checkpoint's config.json, after checking it is a Step-Audio model."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserError(f"{path}: no config.json, not a model directory")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{config_file}: unreadable config ({e})") from None
    archs = config.get("architectures") or []
    if config.get("model_type") != STEP_AUDIO_MODEL_TYPE and STEP_AUDIO_ARCH not in archs:
        raise UserError(
            f"{path}: not a Step-Audio checkpoint (model_type {config.get('model_type')!r}, "
            f"architectures {archs}); expected {STEP_AUDIO_ARCH}"
        )
    return config
