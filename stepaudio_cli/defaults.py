"""Defaults and model constants; import-light so `--help` stays instant."""

DEFAULT_MODEL = "stepfun-ai/Step-Audio-R1"
DEFAULT_MAX_MODEL_LEN = 16384
# Reasoning is typically 2,300-2,800 tokens and has a long tail; leave room for the answer.
DEFAULT_MAX_TOKENS = 8192
# Official sampling for open questions.
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.9
EOT_TOKEN_ID = 151665
