#!/usr/bin/env bash
# On a lent GPU machine after the ../shared/gpu kit has installed vLLM into /tmp/site: run
# the product as a user would, with Step-Audio-R1's real sizes and random weights
# (STEPAUDIO_LOAD_FORMAT=dummy), and keep each step's output in $OUT.
#   bash scripts/gpu-check.sh bench [FORM] [bench options]   stepaudio bench, one form (default bf16):
#                                       bf16, fp8, w4a16, nvfp4a16, fp8-dynamic (pre-quantized, dummy weights);
#                                       e.g. `bench fp8 --kv-cache-dtype fp8` (each well under 8 minutes on an H200)
#   bash scripts/gpu-check.sh single    ask (streamed, --json), batch on 32 files
#   bash scripts/gpu-check.sh serve     serve + the openai package (streaming, input_audio) + ask --server
#   bash scripts/gpu-check.sh compare   benchmarks/batch_throughput.py --real-sizes (project path vs raw vLLM, best of 3;
#                                       then `bench bf16 --max-model-len 8192` in the same session: within 5%?)
#   bash scripts/gpu-check.sh multi-tp  2 GPUs: ask -tp 2, serve -tp 2
#   bash scripts/gpu-check.sh multi-pp  2 GPUs: serve -pp 2, and serve with Ray -tp 2 (kit with RAY=1)
#   bash scripts/gpu-check.sh faults    a context the KV cache cannot hold; kill -9 of ask and of serve
#   bash scripts/gpu-check.sh long      benchmarks/long_recording.py: a 2-hour recording in windows vs one request
#   bash scripts/gpu-check.sh resident  3 asks (2,650 tokens each) on a resident engine, then in-process (today)
#   bash scripts/gpu-check.sh timeline  benchmarks/start_timeline.py: serve's start, cold then with warm caches (sleep and
#                                       wake it), each log line timed; then the first resident ask with warm caches
#   bash scripts/gpu-check.sh loaders   benchmarks/weight_loading.py: a 20 GB W4A16 checkpoint read by each loader
#                                       (carry .whl with fastsafetensors, runai-model-streamer, humanize)
#   bash scripts/gpu-check.sh followup  benchmarks/follow_up_and_sleep.py: a 10-minute recording's first question,
#                                       a follow-up (ask -c), sleep and wake; a 2-hour recording and a follow-up
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD:/tmp/site VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1 STEPAUDIO_LOAD_FORMAT=dummy
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SA="python3 -m stepaudio_cli"
R1=/tmp/r1
python3 -c "from pathlib import Path; from stepaudio_cli.bench import real_size_checkpoint; real_size_checkpoint(Path('$R1'), tiny=False)"
python3 - <<'PY'
import numpy as np, soundfile as sf, os
os.makedirs("/tmp/clips", exist_ok=True)
for i in range(32):
    t = np.arange(10 * 44100) / 44100
    x = 0.3 * np.sin(2 * np.pi * (200 + 17 * i) * t) + 0.05 * np.random.default_rng(i).normal(size=t.size)
    sf.write(f"/tmp/clips/clip{i:02d}.wav", np.stack([x, x], 1).astype(np.float32), 44100)
PY
step() { local name=$1; shift; echo "=== $name: $*"; local t0=$SECONDS; "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"; local rc=$?
  echo "--- $name: exit $rc in $((SECONDS - t0)) s"; head -c 1500 "$OUT/$name.out"; echo; tail -n 4 "$OUT/$name.err"; }

serve_check() {  # name, then serve arguments: start, query with openai (streaming, input_audio) and ask --server, stop
  local name=$1; shift
  $SA serve "$R1" --port 9999 --max-model-len 8192 "$@" -- --load-format dummy >"$OUT/$name-serve.log" 2>&1 &
  local pid=$!
  for _ in $(seq 600); do grep -q "stepaudio ask --server" "$OUT/$name-serve.log" && break; kill -0 $pid 2>/dev/null || break; sleep 1; done
  head -n 3 "$OUT/$name-serve.log"
  step "$name-openai" python3 - <<'PY'
import base64, io, numpy as np, soundfile as sf, openai, time
buf = io.BytesIO(); sf.write(buf, (0.3 * np.sin(np.arange(160000) / 16000 * 2 * np.pi * 440)).astype(np.float32), 16000, format="WAV")
client = openai.OpenAI(base_url="http://127.0.0.1:9999/v1", api_key="none")
model = client.models.list().data[0]
print("model", model.id, "max_model_len", getattr(model, "max_model_len", None))
t0 = time.perf_counter(); first = None; n = 0; kinds = set()
for chunk in client.chat.completions.create(model=model.id, max_tokens=64, stream=True, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is happening?"},
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(buf.getvalue()).decode(), "format": "wav"}}]}]):
    if chunk.choices:
        d = chunk.choices[0].delta; extra = d.model_extra or {}
        if d.content or extra.get("reasoning"):
            first = first or time.perf_counter() - t0; n += 1
            kinds |= {"content" if d.content else "reasoning"}
print(f"streamed {n} chunks ({', '.join(sorted(kinds))}), first after {first:.3f} s, all in {time.perf_counter() - t0:.2f} s")
PY
  step "$name-ask-server" $SA ask --server http://127.0.0.1:9999 --max-tokens 64 --json /tmp/clips/clip00.wav "What is happening?"
  kill -TERM $pid; wait $pid; echo "serve exit $?"
}

gpu_mib() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | awk '{s += $1} END {print s}'; }
port_open() { python3 -c "import socket, sys; sys.exit(socket.socket().connect_ex(('127.0.0.1', $1)) != 0)"; }
freed() {  # what, seconds waited for the GPU memory (and port 9999) to be given back
  local t0=$SECONDS
  for _ in $(seq 90); do [ "$(gpu_mib)" -lt 2000 ] && ! port_open 9999 && break; sleep 1; done
  echo "after kill -9 of $1: $(gpu_mib) MiB of GPU memory used after $((SECONDS - t0)) s;" \
    "vLLM processes left: $(pgrep -fc 'VLLM|vllm.entrypoints' || true); port 9999 $(port_open 9999 && echo held || echo free)"
}

case ${1:-} in
  bench)
    form=${2:-bf16}; name=bench-$form; [ $# -gt 2 ] && name=$name$(echo "${@:3}" | tr -c 'a-z0-9\n' '_')
    step "$name" $SA bench --json --quantization "$form" --new-tokens 512 --concurrency 32 "${@:3}"
    ;;
  single)
    step ask $SA ask -m "$R1" --max-tokens 128 --max-model-len 8192 /tmp/clips/clip00.wav "What is happening?"
    step ask-json $SA ask -m "$R1" --json --max-tokens 128 --max-model-len 8192 --think-budget 32 /tmp/clips/clip01.wav "What is happening?"
    step batch $SA batch -m "$R1" -p "What is happening?" /tmp/clips --max-tokens 256 --max-model-len 8192 -o "$OUT/batch.jsonl"
    ;;
  serve)
    serve_check serve1
    ;;
  compare)
    step compare python3 benchmarks/batch_throughput.py --real-sizes --files 32 --seconds 10 --max-tokens 512 \
      --temperature 0.7 --top-p 0.9 --max-model-len 8192 --sequential-files 2 --repeat 3 --warmup 4
    ;;
  multi-tp)
    nvidia-smi -L
    step ask-tp2 $SA ask -m "$R1" -tp 2 --max-tokens 64 --max-model-len 8192 /tmp/clips/clip00.wav "What is happening?"
    serve_check tp2 -tp 2
    ;;
  multi-pp)
    serve_check pp2 -tp 1 -pp 2
    if [ -d /tmp/site/ray ]; then
      export RAY_AUTH_MODE=disabled
      python3 -c "from ray.scripts.scripts import main; main()" start --head --include-dashboard=false --num-gpus 2 >"$OUT/ray.log" 2>&1
      serve_check ray -tp 2 --distributed-executor-backend ray
      python3 -c "from ray.scripts.scripts import main; main()" stop >/dev/null 2>&1
    fi
    ;;
  faults)
    nvidia-smi -L
    step too-long $SA ask -m "$R1" --max-model-len 65536 /tmp/clips/clip00.wav "What is happening?"
    $SA ask -m "$R1" --max-tokens 4000 --max-model-len 8192 /tmp/clips/clip00.wav "What is happening?" \
      >/dev/null 2>"$OUT/killed-ask.err" &
    pid=$!
    for _ in $(seq 600); do [ "$(stat -c %s "$OUT/killed-ask.err")" -gt 400 ] && break; kill -0 $pid 2>/dev/null || break; sleep 1; done
    echo "ask streaming: $(gpu_mib) MiB of GPU memory used"; kill -9 $pid; freed ask
    $SA serve "$R1" --port 9999 --max-model-len 8192 -- --load-format dummy >"$OUT/killed-serve.log" 2>&1 &
    pid=$!
    for _ in $(seq 600); do grep -q "stepaudio ask --server" "$OUT/killed-serve.log" && break; kill -0 $pid 2>/dev/null || break; sleep 1; done
    head -n 2 "$OUT/killed-serve.log"
    echo "serve ready: $(gpu_mib) MiB of GPU memory used"; kill -9 $pid; freed serve
    ;;
  long)
    step long python3 benchmarks/long_recording.py --minutes 120 --new-tokens 256
    ;;
  resident)  # < 9 min on one H200: resident ~4.5 min (one load), in-process ~2.6 min an ask
    python3 benchmarks/resident_ask.py --model "$R1" --keep-alive 5m --asks 3 --budget 300
    python3 benchmarks/resident_ask.py --model "$R1" --keep-alive 0 --asks 2 --budget 220
    ;;
  timeline)  # ~5 min on one H100: two serve starts (the first compiles), one resident start
    python3 benchmarks/start_timeline.py --model "$R1" --label cold --out "$OUT" -- --load-format dummy --enable-sleep-mode
    ls -la ~/.cache/vllm; du -sh ~/.cache/vllm/* 2>/dev/null
    python3 benchmarks/start_timeline.py --model "$R1" --label warm --sleep-wake --out "$OUT" -- --load-format dummy
    python3 benchmarks/resident_ask.py --model "$R1" --keep-alive 5m --asks 2 --max-tokens 64 --budget 240 --out /tmp/res
    cp /tmp/res/resident-5m.json "$OUT/" 2>/dev/null; tail -n 30 ~/.cache/stepaudio/resident-*.log > "$OUT/resident-log-tail.txt" 2>/dev/null
    ;;
  loaders)  # ~6 min on one H100: write 20 GB, then one eager start per loader
    ls .whl/*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    df -h /tmp | tail -n 1
    python3 benchmarks/weight_loading.py --dir /tmp/r1-w4a16 --out "$OUT"
    ;;
  followup)  # ~5 min on one H100: one engine start, then seconds a question
    python3 benchmarks/follow_up_and_sleep.py --model "$R1" --minutes 10 --long --out "$OUT"
    ;;
  *) echo "usage: $0 bench|single|serve|compare|multi-tp|multi-pp|faults|long|resident|timeline|loaders|followup"; exit 2 ;;
esac
