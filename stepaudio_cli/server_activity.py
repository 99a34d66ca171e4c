"""Whether a running vLLM server is being used, by any client: read from its own /metrics; and
the one way to talk to a server of ours on its own address (:func:`server_client`).

vLLM counts what it serves (requests running and waiting, requests finished); a server is busy
while any request runs or waits, and its last activity is the last time it was seen busy or its
finished count grew. `serve --keep-alive` and the resident engines' idle stop both read this.
"""

from __future__ import annotations

import math
import time

#: vLLM's Prometheus series: gauges of requests in the engine, and a counter of finished ones.
BUSY_SERIES = ("vllm:num_requests_running", "vllm:num_requests_waiting")
DONE_SERIES = "vllm:request_success_total"
METRICS_MAX_BYTES = 8 << 20


def parse_metrics(text: str) -> tuple[float, float] | None:
    """(requests running or waiting, requests finished) from Prometheus text; None when the
    series are not there."""
    busy = done = 0.0
    seen = False
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name not in BUSY_SERIES and name != DONE_SERIES:
            continue
        try:
            value = float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
        if not math.isfinite(value):
            continue
        seen = True
        if name == DONE_SERIES:
            done += value
        else:
            busy += value
    return (busy, done) if seen else None


def server_client(url: str, uds: str | None = None, api_key: str | None = None, timeout: float = 5.0):
    """An httpx client for a server of ours: on its Unix socket ``uds`` (``url`` then only names
    it), else at ``url``; with its key on every request."""
    import httpx

    return httpx.Client(
        base_url="http://localhost" if uds else url,
        transport=httpx.HTTPTransport(uds=uds) if uds else None,
        headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
        timeout=timeout,
    )


class RequestActivity:
    """Polls a server's /metrics; ``idle_for()`` is how long no request has run there."""

    def __init__(self, url: str, api_key: str | None = None, uds: str | None = None) -> None:
        self._client = server_client(url, uds, api_key)
        self._done: float | None = None
        self.last_active = time.time()  # wall clock: comparable with files' mtimes

    def poll(self) -> bool:
        """Read the counters once; True when the server is busy now (or cannot be read: then it
        is never taken for idle)."""
        import httpx

        try:
            response = self._client.get("/metrics")
            text = response.text[:METRICS_MAX_BYTES] if response.status_code == 200 else ""
        except httpx.HTTPError:
            text = ""
        counts = parse_metrics(text)
        if counts is None:
            self.last_active = time.time()
            return True
        busy, done = counts
        if busy > 0 or (self._done is not None and done != self._done):
            self.last_active = time.time()
        self._done = done
        return busy > 0

    def idle_for(self) -> float:
        """Seconds since a request last ran (0 while one runs); polls first."""
        return 0.0 if self.poll() else max(time.time() - self.last_active, 0.0)

    def close(self) -> None:
        self._client.close()
