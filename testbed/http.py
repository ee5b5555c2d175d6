"""HTTP helpers shared by tests and benchmarks."""

from __future__ import annotations

import httpx


class CountingTransport(httpx.HTTPTransport):
    """A real transport that counts requests, and writes among them."""

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0
        self.writes = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        self.writes += request.method not in ("GET", "HEAD")
        return super().handle_request(request)
