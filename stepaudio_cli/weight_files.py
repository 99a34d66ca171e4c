"""A model folder's weight files (safetensors): which shards it should hold (the index, else every
``*.safetensors``) and whether each is there and whole, from the headers alone."""

from __future__ import annotations

import json
from pathlib import Path

WEIGHTS_INDEX = "model.safetensors.index.json"


def weight_problems(path: Path) -> list[str]:
    """What is missing or incomplete among a folder's weights: every shard that
    ``model.safetensors.index.json`` names (else every ``*.safetensors``) must exist, with a
    header that parses and data as long as the header says."""
    return read_weights(path)[0]


def read_weights(path: Path) -> tuple[list[str], set[str]]:
    """:func:`weight_problems`, and the names of the tensors the shards' headers list (each
    header read once)."""
    shards = _shards(path)
    if isinstance(shards, str):
        return [shards], set()
    problems, names = [], set()
    for shard in shards:
        tensors, issue = _safetensors_header(path / shard)
        names.update(tensors)
        if issue:
            problems.append(f"{shard}: {issue}")
    return problems, names


def _shards(path: Path) -> list[str] | str:
    """The shard files of a folder's weights, or what is wrong with their list."""
    index = path / WEIGHTS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_bytes()).get("weight_map")
            shards = sorted(set(weight_map.values()))
            if not shards or not all(isinstance(s, str) for s in shards):
                raise ValueError("no shard names")
        except (OSError, ValueError, AttributeError) as e:
            return f"{WEIGHTS_INDEX}: unreadable ({e})"
        return shards
    return sorted(p.name for p in path.glob("*.safetensors")) or "no weights (*.safetensors)"


def safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file is incomplete or broken, or None. Reads its 8-byte header length
    and JSON header only."""
    return _safetensors_header(path)[1]


def _safetensors_header(path: Path) -> tuple[dict, str | None]:
    """A safetensors file's tensors (name -> dtype, shape, offsets) from its header, and why the
    file is incomplete or broken (None: whole)."""
    import struct

    if not path.is_file():
        return {}, "missing"
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                return {}, "truncated header"
            header = json.loads(f.read(n))
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        end = max((v["data_offsets"][1] for v in tensors.values()), default=0)
        if not isinstance(end, int):
            raise TypeError(end)
    except (OSError, ValueError, struct.error, AttributeError, KeyError, IndexError, TypeError):
        return {}, "not a safetensors file"
    if size != 8 + n + end:
        return tensors, f"size {size} bytes, expected {8 + n + end} (incomplete download?)"
    return tensors, None
