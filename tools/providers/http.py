"""One HTTP client for every hosted generator: timeouts, a total deadline, retries.

Retry policy (the same for all providers, tuned per provider through ``decide_retry``):

* retried: HTTP 429 and 5xx, connection errors and timeouts — with exponential
  backoff (``backoff_base_s * 2**retry``, capped) and jitter, or exactly the wait the
  server asks for (``Retry-After`` in seconds or as an HTTP date, Gemini's ``RetryInfo``);
* never retried: 400/401/402/403/404/422 and other 4xx — the key or the request is wrong,
  and asking again would only burn quota;
* never retried: a 200 whose body is malformed JSON or not an image. The generation was
  most likely charged already, and a changed contract does not fix itself on a retry.
* the whole sequence of attempts and waits must fit in ``deadline_s``; each attempt's
  read timeout shrinks to what is left of it, and a wait that would overrun it ends the retries.

Every wait is appended to ``retries`` and goes through ``sleep``; tests replace ``sleep``
(and ``clock``) so that nothing actually waits. Keys travel only in request headers;
nothing here logs headers or formats them into a message, and every text taken from
a server's answer is passed through ``redact`` with the provider's key first.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import requests
import urllib3

from tools.errors import ProviderError
from tools.secrets import redact
from tools.urls import check_key_url

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504}) | frozenset(range(505, 600))
MAX_SERVER_WAIT_S = 120.0  # a server asking to wait this long or longer is not retried in this call
MAX_BODY_BYTES = 64 * 2**20  # no generated image comes near this; a bigger answer is not an image API
CHUNK_BYTES = 64 * 1024


@dataclass
class RetryDecision:
    """What to do with a failed answer: ``retry`` or not, after ``wait_s`` (None: use backoff)."""

    retry: bool
    wait_s: float | None = None
    why: str = ""


@dataclass
class RetryRecord:
    attempt: int      # the attempt that failed (1-based)
    reason: str       # "HTTP 429", "read timeout", ...
    wait_s: float     # how long the client waited before the next attempt


class HttpClient:
    """A ``requests.Session`` with (connect, read) timeouts, a deadline and retries.

    ``provider`` and ``key_env`` only shape error messages; ``secrets`` are values
    (the API key) scrubbed out of any server text that ends up in an error.
    """

    def __init__(self, provider: str, key_env: str = "", *, secrets: list[str] | None = None,
                 connect_timeout_s: float = 10.0, read_timeout_s: float = 60.0, deadline_s: float = 180.0,
                 max_attempts: int = 4, backoff_base_s: float = 1.0, backoff_cap_s: float = 30.0) -> None:
        self.provider = provider
        self.key_env = key_env
        self.secrets = [s for s in (secrets or []) if s]
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.deadline_s = deadline_s
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "aldar-lora/0.1 (+requests)"
        # Injectable for tests: nothing in the suite should really wait.
        self.sleep: Callable[[float], None] = time.sleep
        self.clock: Callable[[], float] = time.monotonic
        self.wall_clock: Callable[[], float] = time.time
        self.rng = random.Random()
        self.retries: list[RetryRecord] = []

    def __repr__(self) -> str:  # never show headers or secrets
        return f"HttpClient(provider={self.provider!r})"

    # --- the one request loop ----------------------------------------------------------------
    def request(self, method: str, url: str, *, what: str, headers: dict[str, str] | None = None,
                json_body: Any = None, form: dict[str, str] | None = None,
                decide_retry: Callable[[requests.Response], RetryDecision | None] | None = None,
                ) -> requests.Response:
        """Send one logical request, retrying as the module docstring says; return a 2xx response.

        ``what`` names the call in messages ("text-to-image request", "image download").
        Raises ``ProviderError`` for a refused request, exhausted retries or the deadline.
        """
        _silence_header_dumps()
        # requests drops only "Authorization" on a cross-host redirect, not x-api-key style headers:
        # a request that carries a key never follows redirects.
        carries_key = any(secret in str(value) for value in (headers or {}).values() for secret in self.secrets)
        if carries_key:
            check_key_url(url, f"the {self.provider} {what} URL")  # never in clear text to another machine
        started = self.clock()
        attempt = 0
        while True:
            attempt += 1
            remaining = self.deadline_s - (self.clock() - started)
            if remaining <= 0:
                raise self._deadline_error(what, attempt - 1)
            timeout = (min(self.connect_timeout_s, remaining), min(self.read_timeout_s, remaining))
            try:
                response = self.session.request(method, url, headers=headers, json=json_body, data=form,
                                                timeout=timeout, stream=True, allow_redirects=not carries_key)
                self._read_body(response, started, what, attempt)
            except requests.Timeout as exc:
                kind = "connect timeout" if isinstance(exc, requests.ConnectTimeout) else "read timeout"
                decision, reason, response = RetryDecision(True), f"{kind} after {timeout[1]:g} s", None
            except requests.ConnectionError:
                decision, reason, response = RetryDecision(True), "connection failed", None
            except requests.RequestException as exc:
                raise ProviderError(f"{self.provider} {what} could not be sent ({type(exc).__name__})",
                                    f"check the {self.provider} base URL setting") from None
            else:
                if response.status_code < 300:
                    return response
                decision = (decide_retry or self.default_decision)(response)
                if decision is None:
                    decision = RetryDecision(False)
                reason = f"HTTP {response.status_code}"
                if not decision.retry:
                    raise self.status_error(response, what, decision.why)

            wait = decision.wait_s if decision.wait_s is not None else self.backoff(attempt)
            # A server that asks for the cap or more (Retry-After values arrive capped) is not asked again
            # early: a retry before its wait is over only meets another 429 and burns quota.
            too_long = decision.wait_s is not None and wait >= MAX_SERVER_WAIT_S
            elapsed = self.clock() - started
            if attempt >= self.max_attempts or too_long or elapsed + wait >= self.deadline_s:
                if response is not None:
                    raise self.status_error(response, what, decision.why, attempts=attempt, next_wait=wait)
                raise ProviderError(
                    f"{self.provider} {what} failed after {attempt} attempt(s): {reason}",
                    f"the service is slow or unreachable; retry later or raise provider_timeout_s "
                    f"(now {self.read_timeout_s:g} s)")
            log.info("%s %s: %s; retry %d in %.1f s", self.provider, what, reason, attempt, wait)
            self.retries.append(RetryRecord(attempt, reason, wait))
            self.sleep(wait)

    def _read_body(self, response: requests.Response, started: float, what: str, attempt: int) -> None:
        """Read the body in chunks so that a server dripping bytes cannot outlast the deadline.

        (The read timeout alone only bounds the gap between two chunks.)
        """
        chunks, size = [], 0
        try:
            for chunk in _body_chunks(response):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise ProviderError(f"{self.provider} answered the {what} with more than "
                                        f"{MAX_BODY_BYTES // 2**20} MiB", "check the base URL setting")
                if self.clock() - started > self.deadline_s:
                    raise self._deadline_error(what, attempt)
        finally:
            response.close()
        response._content = b"".join(chunks)  # what .content / .json() read from now on

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: a random wait in [½, 1] × base·2^(attempt-1), capped."""
        ceiling = min(self.backoff_cap_s, self.backoff_base_s * (2 ** (attempt - 1)))
        return ceiling * (0.5 + 0.5 * self.rng.random())

    def default_decision(self, response: requests.Response) -> RetryDecision | None:
        if response.status_code in RETRYABLE_STATUSES:
            return RetryDecision(True, retry_after_s(response, self.wall_clock()))
        return None

    # --- errors ------------------------------------------------------------------------------
    def server_message(self, response: requests.Response) -> str:
        """The short human message a server put in its error body, scrubbed of secrets."""
        text = ""
        try:
            text = describe_error_body(response.json())
        except ValueError:
            text = response.text.strip().replace("\n", " ")
            if text.lstrip().startswith("<"):
                text = "HTML error page"
        return self.scrub(text[:200])

    def scrub(self, text: str) -> str:
        return redact(text, extra=self.secrets)

    def status_error(self, response: requests.Response, what: str, why: str = "", *,
                     attempts: int = 1, next_wait: float | None = None) -> ProviderError:
        status = response.status_code
        detail = self.server_message(response)
        said = f"HTTP {status}" + (f": {detail}" if detail else "")
        p = self.provider
        key = self.key_env or "the API key"
        if 300 <= status < 400:
            return ProviderError(f"{p} answered the {what} with a redirect (HTTP {status}), not followed so that "
                                 "the key is not sent elsewhere", f"check the {p} base URL setting (https, exact host)")
        if status == 401 or (status in (400, 403) and looks_like_key_problem(detail)):
            return ProviderError(f"{p} rejected the API key ({said})",
                                 f"check {key} in .env or the environment: it must be a valid, active key")
        if "FAILED_PRECONDITION" in detail:  # Gemini: e.g. free tier unavailable in the caller's region
            return ProviderError(f"{p} cannot serve this account or region ({said})",
                                 f"enable billing for the project behind {key}, or use another provider")
        if status == 402:
            return ProviderError(f"{p} refused the {what}: payment required ({said})",
                                 f"add credits or upgrade the plan of the account behind {key}")
        if status == 403:
            return ProviderError(f"{p} refused the {what} ({said})",
                                 f"check that the account behind {key} may use this model/endpoint and region")
        if status == 404:
            return ProviderError(f"{p} has no such endpoint or model ({said})",
                                 f"check the {p} base URL and model name settings")
        if status == 429:
            more = f" ({why})" if why else ""
            hint = "wait for the quota to reset (it may be a daily quota) or use another provider"
            if next_wait is not None and not why:
                hint = f"the server asked to wait {next_wait:g} s more; retry later or lower images_per_prompt"
            return ProviderError(f"{p} rate limit or quota exceeded after {attempts} attempt(s){more} ({said})",
                                 hint)
        if status >= 500:
            return ProviderError(f"{p} server error after {attempts} attempt(s) ({said})",
                                 "the service is having trouble; retry later")
        return ProviderError(f"{p} rejected the {what} ({said})",
                             "check the prompt and the generation settings (size, count, seed) against the "
                             f"{p} API limits")

    def _deadline_error(self, what: str, attempts: int) -> ProviderError:
        return ProviderError(f"{self.provider} {what} did not finish within the {self.deadline_s:g} s deadline "
                             f"({attempts} attempt(s))",
                             "retry later or raise provider_timeout_s in aldar.toml")


def _silence_header_dumps() -> None:
    """``http.client`` debug output prints request headers — our API keys — to stdout: switch it off."""
    if http.client.HTTPConnection.debuglevel > 0:
        log.warning("http.client debug output switched off: it would print API keys in request headers")
        http.client.HTTPConnection.debuglevel = 0


def _body_chunks(response: requests.Response) -> Iterator[bytes]:
    """Body pieces as they arrive. ``read1`` returns what the socket has (``iter_content`` would
    block until a whole chunk is filled); urllib3's errors become the requests errors retried above."""
    raw = response.raw
    if not hasattr(raw, "read1"):  # urllib3 1.x
        yield from response.iter_content(CHUNK_BYTES)
        return
    try:
        while chunk := raw.read1(CHUNK_BYTES, decode_content=True):
            yield chunk
    except urllib3.exceptions.ReadTimeoutError as exc:
        raise requests.ReadTimeout(str(exc)) from None
    except (urllib3.exceptions.ProtocolError, urllib3.exceptions.DecodeError, OSError) as exc:
        raise requests.ConnectionError(str(exc)) from None


def retry_after_s(response: requests.Response, now: float) -> float | None:
    """``Retry-After`` as seconds: a number, or an HTTP date relative to ``now`` (epoch seconds)."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        return min(max(float(value), 0.0), MAX_SERVER_WAIT_S)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return min(max(when.timestamp() - now, 0.0), MAX_SERVER_WAIT_S)


def describe_error_body(body: Any) -> str:
    """Pull the message out of the error shapes these APIs use."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            parts = [str(error.get(k)) for k in ("status", "message") if error.get(k)]
            return ": ".join(parts)
        for key in ("message", "detail", "err", "error", "status"):
            if body.get(key):
                return str(body[key]) if not isinstance(body[key], (dict, list)) else json.dumps(body[key])[:200]
    return json.dumps(body)[:200] if body else ""


def looks_like_key_problem(text: str) -> bool:
    lowered = text.lower()
    return any(s in lowered for s in ("api key", "api_key", "apikey", "unauthenticated", "credential"))


def parse_json(response: requests.Response, provider: str, what: str) -> Any:
    """The JSON body of a 2xx answer, or a ``ProviderError`` that says what came instead."""
    try:
        return response.json()
    except ValueError:
        kind = response.headers.get("Content-Type", "no content type")
        raise ProviderError(
            f"{provider} answered the {what} with a body that is not valid JSON ({kind}, "
            f"{len(response.content)} bytes)",
            f"check the {provider} base URL (a proxy or captive portal may answer instead); "
            "if it is right, the API may have changed — report it") from None
