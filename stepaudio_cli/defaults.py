"""Defaults shared by the commands, the engines and the server; import-light so `--help`
stays instant. Model facts (token names, sizes, formats) live in ``checkpoint.py``."""

DEFAULT_MODEL = "stepfun-ai/Step-Audio-R1"
#: StepFun's releases of the model (same network, same serving recipe); R1.1 is January 2026's.
KNOWN_MODELS = (DEFAULT_MODEL, "stepfun-ai/Step-Audio-R1.1")
DEFAULT_MAX_MODEL_LEN = 16384
# New tokens: by default whatever the context leaves after the prompt (None). Reasoning is
# typically 2,300-2,800 tokens with a long tail; StepFun's benchmark examples allow 32,000.
DEFAULT_MAX_TOKENS = None
TYPICAL_ANSWER_TOKENS = 2650  # reasoning + answer of a typical question (reasoning: 2,300-2,800)
TYPICAL_REQUEST_TOKENS = 2800  # its KV footprint: a short clip's prompt + the typical answer
# Official sampling for open questions.
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.9

# Engine sizing.
DEFAULT_MAX_NUM_SEQS = 32  # sequences batched at once (batch, serve)
ASK_MAX_NUM_SEQS = 4  # one question: a small batch keeps start-up memory low
GPU_MEMORY_FRACTION = 0.9
CPU_MEMORY_FRACTION = 0.3  # on the CPU backend the "GPU" memory flag sizes the KV cache in RAM
QUANTIZATIONS = ("fp8",)  # vLLM's online FP8 (Hopper/Ada GPUs)
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")  # auto: the model's dtype
MAX_AUDIO_ITEMS = 64  # audio items (25 s chunks from our clients) per request: about 26 minutes

# Servers.
SERVER_CONCURRENCY = 32  # batch: requests in flight per server
DEFAULT_TIMEOUT = 120.0  # seconds a server may stay silent mid-request before it counts as hung
DEFAULT_WAIT_SERVER = 600.0  # batch: seconds to wait for a server to come back before stopping
DECODED_AUDIO_BYTES = 4 << 30  # batch: decoded audio held at once (4 GiB: ~18 h of 16 kHz float32)
UDS_SCHEME = "unix:"  # a server URL naming a Unix socket (a resident engine's): unix:/path/to.sock

# Resident engines (ask, batch): how long one stays loaded after its last use, as ollama's keep_alive.
DEFAULT_KEEP_ALIVE = "5m"
#: Then, on a GPU with host memory for the weights, it sleeps this long (vLLM's sleep mode: weights in
#: host memory, the GPU's memory given back; a question wakes it in seconds) before it stops for good.
DEFAULT_SLEEP_FOR = "1h"
