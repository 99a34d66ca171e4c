#!/usr/bin/env bash
# Install check (CI runs it after lint): build the wheel and sdist as a release would
# (`python -m build`), check what they carry (scripts/check-dist.py), install the wheel into a
# fresh virtualenv with no vLLM (the client install of README's "Install"), and use the
# installed `stepaudio` as a user would, from a clean environment and an empty home:
# --version, --help, doctor, `ask --server` against a scripted OpenAI-compatible server on
# 127.0.0.1 (scripts/scripted-openai-server.py), and the shell completions the wheel installs.
# Needs Python >= 3.11 and the package index (pip). Every step has a time limit; a failure
# prints the step's output, then one line: `check-install: FAILED: <step>: <reason>`.
#   PYTHON=python3    the interpreter for the virtualenvs
#   KEEP=1            keep the work folder (its path is printed)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/stepaudio-check-install.XXXXXX")
LOG=$WORK/step.log
SERVER_PID=""
START=$SECONDS

cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
  if [ -n "${KEEP:-}" ]; then echo "check-install: kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

fail() {
  if [ -s "$LOG" ]; then tail -n 40 "$LOG" >&2; fi
  echo "check-install: FAILED: $*" >&2
  exit 1
}

# step LIMIT WHAT COMMAND...: run it with its output in $LOG (stdout) and $LOG.err (stderr);
# a non-zero exit or the time limit fails the check, naming WHAT.
step() {
  local limit=$1 what=$2 rc=0
  shift 2
  timeout -k 5 "$limit" "$@" >"$LOG" 2>"$LOG.err" </dev/null || rc=$?
  if [ "$rc" -ne 0 ]; then
    cat "$LOG.err" >>"$LOG"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then fail "$what: no result within ${limit}s"; fi
    fail "$what: exit $rc"
  fi
}

# expect WHAT FILE TEXT: FILE (the last step's output) contains TEXT.
expect() {
  grep -qF -- "$3" "$2" || { cat "$LOG.err" >>"$LOG"; fail "$1: no '$3' in its output"; }
}

# As a user: a clean environment (no PYTHONPATH, no STEPAUDIO_*), an empty home, the venv's bin
# on PATH, run from a folder outside the source tree.
USER_VENV=$WORK/venv
mkdir -p "$WORK/home"
AS_USER=(env -i -C "$WORK/home" PATH="$USER_VENV/bin:/usr/local/bin:/usr/bin:/bin" HOME="$WORK/home"
  LANG=C.UTF-8 TMPDIR="${TMPDIR:-/tmp}")

step 300 "install the build tool (pip install build)" \
  bash -c "'$PY' -m venv '$WORK/tools' && '$WORK/tools/bin/python' -m pip install -q build"
step 300 "python -m build (sdist, then the wheel from it)" "$WORK/tools/bin/python" -m build --outdir "$WORK/dist" .
step 30 "check the wheel and sdist contents" "$WORK/tools/bin/python" scripts/check-dist.py "$WORK/dist"
WHEEL=$(ls "$WORK"/dist/*.whl)
VERSION=$(basename "$WHEEL" | cut -d- -f2)

step 600 "pip install the wheel into a fresh virtualenv" \
  bash -c "'$PY' -m venv '$USER_VENV' && '$USER_VENV/bin/python' -m pip install -q '$WHEEL'"
step 30 "the installed package" "${AS_USER[@]}" python -c "
import importlib.metadata as md, importlib.resources as res, importlib.util as iu, sys, stepaudio_cli
assert stepaudio_cli.__file__.startswith(sys.prefix), f'stepaudio_cli imported from {stepaudio_cli.__file__}'
for heavy in ('vllm', 'torch'):
    assert iu.find_spec(heavy) is None, f'the client install brought {heavy}'
template = res.files('stepaudio_cli.vllm_plugin').joinpath('chat_template.jinja').read_text()
assert '{%' in template, 'chat_template.jinja is not a template'
(plugin,) = [e for e in md.entry_points(group='vllm.general_plugins') if e.name == 'step_audio_r1']
assert callable(plugin.load()), f'{plugin.value} is not callable'
print('ok')"

step 30 "stepaudio --version" "${AS_USER[@]}" stepaudio --version
expect "stepaudio --version" "$LOG" "stepaudio $VERSION"
step 30 "stepaudio --help" "${AS_USER[@]}" stepaudio --help
for command in ask batch serve download doctor; do expect "stepaudio --help" "$LOG" "$command"; done
step 60 "stepaudio doctor" "${AS_USER[@]}" stepaudio doctor
expect "stepaudio doctor" "$LOG" "vLLM: not installed"
expect "stepaudio doctor" "$LOG" "vLLM plugin: registered"

# ask --server: a 2 s stereo 44.1 kHz clip, resampled to 16 kHz mono on the way (the server checks).
step 30 "write a test clip" "$PY" -c "
import math, struct, wave
with wave.open('$WORK/home/clip.wav', 'wb') as w:
    w.setnchannels(2); w.setsampwidth(2); w.setframerate(44100)
    w.writeframes(b''.join(struct.pack('<hh', s, s) for s in (int(8000 * math.sin(2 * math.pi * 440 * i / 44100)) for i in range(88200))))"
"$PY" scripts/scripted-openai-server.py "$WORK/port" --lifetime 120 >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do [ -s "$WORK/port" ] || sleep 0.1; done
[ -s "$WORK/port" ] || { cp "$WORK/server.log" "$LOG"; fail "the scripted server did not start within 10s"; }
URL=http://127.0.0.1:$(cat "$WORK/port")
step 60 "stepaudio ask --server" "${AS_USER[@]}" stepaudio ask --server "$URL" clip.wav "What do you hear?"
[ "$(cat "$LOG")" = "A 440 Hz tone." ] || { cat "$LOG.err" >>"$LOG"; fail "stepaudio ask --server: stdout is not the answer"; }
expect "stepaudio ask --server (reasoning on stderr)" "$LOG.err" "a steady tone."
step 60 "stepaudio ask --server --json" "${AS_USER[@]}" stepaudio ask --json --server "$URL" clip.wav "What do you hear?"
cp "$LOG" "$WORK/record.json"
step 10 "the ask --json record" "$PY" -c "
import json
r = json.load(open('$WORK/record.json'))
assert (r['answer'], r['reasoning'], r['model']) == ('A 440 Hz tone.', 'The clip is a steady tone.', 'scripted'), r
assert r['error'] is None and r['audio_seconds'] == 2.0, r"

# Completions: the bash script the wheel installs completes from the installed command.
BASH_COMPLETION=$USER_VENV/share/bash-completion/completions/stepaudio
# bash -c "$COMPLETE" SCRIPT WORDS...: what SCRIPT's completion offers after WORDS, one a line.
COMPLETE='source "$0" && COMP_WORDS=("$@") && COMP_CWORD=$(($# - 1)) && _stepaudio_completion stepaudio \
  && printf "%s\n" "${COMPREPLY[@]}"'
step 30 "bash completion of 'stepaudio as'" "${AS_USER[@]}" bash -c "$COMPLETE" "$BASH_COMPLETION" stepaudio as
expect "bash completion of 'stepaudio as'" "$LOG" "ask"
step 30 "bash completion of 'stepaudio ask --ser'" "${AS_USER[@]}" bash -c "$COMPLETE" "$BASH_COMPLETION" stepaudio ask --ser
expect "bash completion of 'stepaudio ask --ser'" "$LOG" "--server"
for f in zsh/site-functions/_stepaudio fish/vendor_completions.d/stepaudio.fish; do
  [ -s "$USER_VENV/share/$f" ] || fail "the wheel did not install share/$f"
done

echo "check-install: ok (stepaudio $VERSION wheel and sdist, client install used as a user would) in $((SECONDS - START))s"
