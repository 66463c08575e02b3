"""The shared HTTP client: Retry-After forms, backoff, deadline, connection errors, key registry lines."""

from __future__ import annotations

import email.utils
import logging
import socket

import pytest
import requests

from tests.fakes.provider_servers import FakeClock, FreepikFake, Reply, fast_http
from tools.errors import InputError, ProviderError
from tools.providers import PROVIDERS, configured_providers
from tools.providers.base import ImageProvider
from tools.providers.http import HttpClient, retry_after_s
from tools.settings import load_settings


def _response(headers: dict[str, str]) -> requests.Response:
    response = requests.Response()
    response.status_code = 429
    response.headers.update(headers)
    return response


def test_retry_after_reads_seconds_and_http_dates():
    now = 1_800_000_000.0
    assert retry_after_s(_response({"Retry-After": "12"}), now) == 12.0
    assert retry_after_s(_response({"Retry-After": email.utils.formatdate(now + 30, usegmt=True)}), now) == 30.0
    assert retry_after_s(_response({"Retry-After": email.utils.formatdate(now - 30, usegmt=True)}), now) == 0.0
    assert retry_after_s(_response({"Retry-After": "tomorrow"}), now) is None
    assert retry_after_s(_response({}), now) is None
    assert retry_after_s(_response({"Retry-After": "86400"}), now) == 120.0  # capped


def test_http_date_retry_after_is_honoured_in_a_request():
    clock = FakeClock()
    with FreepikFake() as fake:
        when = email.utils.formatdate(clock.wall() + 9, usegmt=True)
        fake.script("GET", "/cdn/*", Reply(503, {"message": "busy"}, headers={"Retry-After": when}))
        http = fast_http("freepik", "FREEPIK_API_KEY", "k", clock=clock)
        assert http.request("GET", fake.base_url + "/cdn/a.png", what="download").status_code == 200
    (retry,) = http.retries
    assert 7.5 <= retry.wait_s <= 9.0  # whole seconds in the date; a little real time passed


def test_backoff_is_exponential_capped_and_jittered():
    http = HttpClient("x", backoff_base_s=1.0, backoff_cap_s=5.0)
    http.rng.seed(3)
    waits = [http.backoff(attempt) for attempt in (1, 2, 3, 4, 5)]
    for attempt, wait in zip((1, 2, 3, 4, 5), waits):
        ceiling = min(5.0, 2 ** (attempt - 1))
        assert ceiling / 2 <= wait <= ceiling
    assert len({round(w, 6) for w in waits}) == 5  # jitter: no two the same


def test_connection_refused_is_retried_then_reported():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    http = fast_http("deepai", "DEEPAI_API_KEY", "k")
    with pytest.raises(ProviderError, match="failed after 4 attempt.*connection failed"):
        http.request("POST", f"http://127.0.0.1:{port}/api/text2img", what="text2img request")
    assert [r.reason for r in http.retries] == ["connection failed"] * 3


def test_deadline_ends_retries_before_a_wait_that_would_overrun_it():
    clock = FakeClock()
    with FreepikFake() as fake:
        fake.script("GET", "/cdn/*", *[Reply(429, {"message": "slow"}, headers={"Retry-After": "40"})] * 4)
        http = fast_http("freepik", "FREEPIK_API_KEY", "k", clock=clock, deadline_s=100.0)
        with pytest.raises(ProviderError, match="rate limit or quota exceeded after 3 attempt"):
            http.request("GET", fake.base_url + "/cdn/a.png", what="download")
    assert clock.sleeps == [40.0, 40.0] and len(fake.requests) == 3


def test_configured_providers_skips_missing_keys_with_one_line_each(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "gem-SECRET-abcdef123456")
    settings = load_settings(environ={})

    ready, skipped = configured_providers(settings, ["freepik", "gemini", "deepai", "freepik"])

    assert [p.name for p in ready] == ["gemini"]
    assert skipped == [  # one pair of parentheses: "(add it to .env) (get one at …)" read as two asides
        "freepik: skipped — FREEPIK_API_KEY is not set (add it to .env; get one at https://www.freepik.com/api)",
        "deepai: skipped — DEEPAI_API_KEY is not set (add it to .env; get one at https://deepai.org/dashboard/profile)"]
    with pytest.raises(InputError, match="unknown provider 'midjourney'"):
        configured_providers(settings, ["midjourney"])


def test_a_key_from_dotenv_is_used(tmp_path, monkeypatch):
    from tools.secrets import load_dotenv

    monkeypatch.setenv("DEEPAI_API_KEY", "x")
    monkeypatch.delenv("DEEPAI_API_KEY")  # restored to "unset" after the test
    (tmp_path / ".env").write_text("DEEPAI_API_KEY=dai-from-dotenv-123456\n")
    load_dotenv(tmp_path / ".env")

    (provider,), skipped = configured_providers(load_settings(environ={}), ["deepai"])
    assert skipped == [] and provider.http.secrets == ["dai-from-dotenv-123456"]


def test_adding_a_provider_is_one_class_and_one_registry_line(monkeypatch, caplog):
    class EchoProvider(ImageProvider):
        name, key_env, default_base_url = "echo", "ECHO_API_KEY", "https://echo.example/"

        def generate(self, prompt, n=1, seed=None):
            return []

    monkeypatch.setitem(PROVIDERS, "echo", EchoProvider)
    monkeypatch.setenv("ECHO_API_KEY", "echo-key-123456")
    (provider,), _ = configured_providers(load_settings(environ={}), ["echo"])
    assert isinstance(provider, EchoProvider) and provider.base_url == "https://echo.example"
    assert "echo-key" not in repr(provider) and "echo-key" not in repr(provider.http)


def test_client_logs_retries_without_headers(caplog):
    caplog.set_level(logging.DEBUG)
    with FreepikFake(key="fpk-LOGCHECK-123456") as fake:
        fake.script("POST", "/v1/ai/text-to-image", Reply(500, {"message": "oops"}))
        http = fast_http("freepik", "FREEPIK_API_KEY", "fpk-LOGCHECK-123456")
        http.request("POST", fake.base_url + "/v1/ai/text-to-image", what="text-to-image request",
                     headers={"x-freepik-api-key": "fpk-LOGCHECK-123456"},
                     json_body={"prompt": "aldar", "num_images": 1})
    messages = [r.getMessage() for r in caplog.records]
    assert any("retry 1" in m for m in messages) and any("urllib3" == r.name.split(".")[0] for r in caplog.records)
    assert not any("fpk-LOGCHECK-123456" in m for m in messages)


def test_a_body_dripping_in_slower_than_the_deadline_is_cut_off():
    from tests.fakes.provider_servers import png_bytes

    clock = FakeClock()  # each piece of the body takes 1 s of the client's (fake) time, however busy the machine
    with FreepikFake() as fake:
        fake.script("GET", "/cdn/*", Reply(body=png_bytes(1), on_piece=lambda: clock.sleep(1.0)))
        http = fast_http("freepik", "FREEPIK_API_KEY", "k", read_timeout_s=30.0, deadline_s=5.0, clock=clock)
        with pytest.raises(ProviderError, match="did not finish within the 5 s deadline"):
            http.request("GET", fake.base_url + "/cdn/a.png", what="download")


def test_http_client_header_dumps_are_switched_off(monkeypatch):
    import http.client

    monkeypatch.setattr(http.client.HTTPConnection, "debuglevel", 1)
    with FreepikFake() as fake:
        fast_http("freepik", "FREEPIK_API_KEY", "k").request("GET", fake.base_url + "/cdn/a.png", what="download")
    assert http.client.HTTPConnection.debuglevel == 0


def test_a_request_carrying_the_key_never_follows_a_redirect_but_a_download_does():
    with FreepikFake(key="fpk-REDIRECT-123456") as fake:
        elsewhere = {"Location": fake.base_url + "/cdn/elsewhere.png"}
        fake.script("POST", "/v1/ai/text-to-image", Reply(302, {"message": "moved"}, headers=elsewhere))
        fake.script("GET", "/cdn/start.png", Reply(302, {"message": "moved"}, headers=elsewhere))
        http = fast_http("freepik", "FREEPIK_API_KEY", "fpk-REDIRECT-123456")
        with pytest.raises(ProviderError, match="redirect .HTTP 302., not followed"):
            http.request("POST", fake.base_url + "/v1/ai/text-to-image", what="text-to-image request",
                         headers={"x-freepik-api-key": "fpk-REDIRECT-123456"}, json_body={"prompt": "aldar"})
        assert [r.path for r in fake.requests] == ["/v1/ai/text-to-image"]
        assert http.request("GET", fake.base_url + "/cdn/start.png", what="download").status_code == 200
        assert [r.path for r in fake.requests][1:] == ["/cdn/start.png", "/cdn/elsewhere.png"]


@pytest.mark.parametrize("header", ["3600", "150"])
def test_a_retry_after_beyond_the_cap_is_not_cut_short_into_an_early_retry(header):
    clock = FakeClock()
    with FreepikFake() as fake:
        fake.script("GET", "/cdn/*", Reply(429, {"message": "quota"}, headers={"Retry-After": header}), Reply())
        http = fast_http("freepik", "FREEPIK_API_KEY", "k", clock=clock, deadline_s=600.0)
        with pytest.raises(ProviderError, match="rate limit or quota exceeded after 1 attempt"):
            http.request("GET", fake.base_url + "/cdn/a.png", what="download")
    assert clock.sleeps == [] and len(fake.requests) == 1
