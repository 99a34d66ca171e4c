"""Defaults and model constants; import-light so `--help` stays instant."""

DEFAULT_MODEL = "stepfun-ai/Step-Audio-R1"
DEFAULT_MAX_MODEL_LEN = 16384
# New tokens: by default whatever the context leaves after the prompt (None). Reasoning is
# typically 2,300-2,800 tokens with a long tail; StepFun's benchmark examples allow 32,000.
DEFAULT_MAX_TOKENS = None
# Official sampling for open questions.
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.9
