"""Defaults shared by the commands, the engines and the server; import-light so `--help`
stays instant. Model facts (token names, sizes, formats) live in ``checkpoint.py``."""

DEFAULT_MODEL = "stepfun-ai/Step-Audio-R1"
DEFAULT_MAX_MODEL_LEN = 16384
# New tokens: by default whatever the context leaves after the prompt (None). Reasoning is
# typically 2,300-2,800 tokens with a long tail; StepFun's benchmark examples allow 32,000.
DEFAULT_MAX_TOKENS = None
# Official sampling for open questions.
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.9

# Engine sizing.
DEFAULT_MAX_NUM_SEQS = 32  # sequences batched at once (batch, serve)
ASK_MAX_NUM_SEQS = 4  # one question: a small batch keeps start-up memory low
GPU_MEMORY_FRACTION = 0.9
CPU_MEMORY_FRACTION = 0.3  # on the CPU backend the "GPU" memory flag sizes the KV cache in RAM
QUANTIZATIONS = ("fp8",)  # vLLM's online FP8 (Hopper/Ada GPUs)
MAX_AUDIO_ITEMS = 64  # audio items (25 s chunks from our clients) per request: about 26 minutes

# Servers.
SERVER_CONCURRENCY = 32  # batch: requests in flight per server
DEFAULT_TIMEOUT = 120.0  # seconds a server may stay silent mid-request before it counts as hung
DEFAULT_WAIT_SERVER = 600.0  # batch: seconds to wait for a server to come back before stopping
UDS_SCHEME = "unix:"  # a server URL naming a Unix socket (a resident engine's): unix:/path/to.sock

# Resident engines (ask, batch): how long one stays loaded after its last use, as ollama's keep_alive.
DEFAULT_KEEP_ALIVE = "5m"
