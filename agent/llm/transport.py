"""An httpx2 transport with a *total* deadline per request (``settings.llm_timeout_s``).

Deepseek keeps a busy connection open with blank keep-alive lines for minutes, which resets an ordinary
read timeout forever; this transport gives up once the whole answer has taken longer than the budget.
Its own module so that ``agent.llm.client`` can name endpoints without importing httpx2.
"""

from __future__ import annotations

import time
from typing import Iterator

import httpx2


class _DeadlineStream(httpx2.SyncByteStream):
    """Wraps a response body and gives up once the request's total deadline has passed."""

    def __init__(self, inner: httpx2.SyncByteStream, deadline: float, budget_s: float,
                 request: httpx2.Request) -> None:
        self._inner, self._deadline, self._budget_s, self._request = inner, deadline, budget_s, request

    def __iter__(self) -> Iterator[bytes]:
        for part in self._inner:
            if time.monotonic() > self._deadline:
                raise httpx2.ReadTimeout(f"no complete answer within {self._budget_s:g} s", request=self._request)
            yield part

    def close(self) -> None:
        self._inner.close()


class DeadlineTransport(httpx2.HTTPTransport):
    """An HTTP transport whose every request must finish within ``budget_s`` seconds in total."""

    def __init__(self, budget_s: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.budget_s = budget_s

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        deadline = time.monotonic() + self.budget_s
        response = super().handle_request(request)
        response.stream = _DeadlineStream(response.stream, deadline, self.budget_s, request)
        return response
