"""A stand-in for vLLM's argument definitions: stepaudio reads whether the server takes --uds."""


class FrontendArgs:
    uds: str | None = None
