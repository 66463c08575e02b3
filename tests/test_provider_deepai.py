"""DeepAI text2img against the loopback fake: form POST → output_url → image download."""

from __future__ import annotations


import pytest

from tests.fakes.provider_servers import DeepAIFake, Reply, assert_secret_absent, fast_http, serving
from tools.errors import ProviderError
from tools.images import load_image
from tools.generation.png_metadata import read_generation_parameters
from tools.providers import generate_with_provider
from tools.providers.deepai import DeepAIProvider

KEY = "dai-SECRET-0a9b8c7d6e5f"
SUBMIT = "/api/text2img"
DOWNLOAD = "/job-view-file/*"


@pytest.fixture
def fake(monkeypatch, caplog):
    with serving(DeepAIFake, "DEEPAI_API_KEY", KEY, monkeypatch, caplog) as server:
        yield server


@pytest.fixture
def deepai(fake, clock):
    provider = DeepAIProvider(KEY, base_url=fake.base_url, http=fast_http("deepai", "DEEPAI_API_KEY", KEY, clock=clock))
    provider.negative_prompt = "photo, blurry"
    return provider


def test_two_step_success_sends_form_fields_and_downloads_without_the_key(deepai, fake, tmp_path, caplog):
    saved = generate_with_provider(deepai, ["aldar with a lute"], tmp_path / "out", 2, 42)

    assert len(saved) == 2 and deepai.http.retries == []
    for item in saved:
        assert item.path.name.startswith("deepai_") and load_image(item.path).size == (64, 64)
        chunk = read_generation_parameters(item.path)["aldar"]
        assert chunk["provider"] == "deepai" and chunk["requested_seed"] == 42 and chunk["request_id"]
        assert item.seed == 42  # DeepAI has no seed: the requested one pairs it with the others
    assert [(r.method, r.path == SUBMIT) for r in fake.requests] == [("POST", True), ("GET", False)] * 2
    submit = fake.requests[0]
    assert submit.headers["api-key"] == KEY
    assert submit.headers["content-type"].startswith("application/x-www-form-urlencoded")  # form, not JSON
    assert submit.form() == {"text": "aldar with a lute", "width": "512", "height": "512",
                             "image_generator_version": "standard", "negative_prompt": "photo, blurry"}
    assert "api-key" not in fake.requests[1].headers
    assert_secret_absent(KEY, records=caplog.records, folders=[tmp_path])


def test_bad_key_is_not_retried(deepai, fake, caplog):
    fake.script("POST", SUBMIT, Reply(401, {"status": f"Bad key {KEY}"}))

    with pytest.raises(ProviderError) as caught:
        deepai.generate("aldar", 1, 1)
    assert "rejected the API key" in str(caught.value) and "DEEPAI_API_KEY" in str(caught.value)
    assert len(fake.requests) == 1 and deepai.http.retries == []
    assert_secret_absent(KEY, records=caplog.records, texts=[caught.value])


def test_429_with_retry_after_then_success(deepai, fake, clock):
    fake.script("POST", SUBMIT, Reply(429, {"status": "rate limited"}, headers={"Retry-After": "4"}))

    assert len(deepai.generate("aldar", 1, 1)) == 1
    assert [(r.reason, r.wait_s) for r in deepai.http.retries] == [("HTTP 429", 4.0)] and clock.sleeps == [4.0]
    assert len(fake.requests_to(SUBMIT)) == 2


def test_500_then_success(deepai, fake):
    fake.script("POST", SUBMIT, Reply(502, body=b"<html>Bad gateway</html>", content_type="text/html"))

    assert len(deepai.generate("aldar", 1, 1)) == 1
    assert [r.reason for r in deepai.http.retries] == ["HTTP 502"]


def test_read_timeout_on_the_download_is_retried(deepai, fake):
    fake.script("GET", DOWNLOAD, Reply(body=b"late", hold=True))  # nothing comes before the read timeout

    (image,) = deepai.generate("aldar", 1, 1)
    assert image.ok and [r.reason.split(" after")[0] for r in deepai.http.retries] == ["read timeout"]
    assert len(fake.requests_to(DOWNLOAD)) == 2


def test_download_that_is_not_an_image_is_an_error(deepai, fake, tmp_path):
    fake.script("GET", DOWNLOAD, Reply(body=b"<!DOCTYPE html><p>job expired</p>", content_type="text/html"))

    with pytest.raises(ProviderError, match="image download 1 is HTML"):
        generate_with_provider(deepai, ["aldar"], tmp_path / "out", 1, 1)
    assert not list(tmp_path.rglob("*.png"))


def test_truncated_image_is_an_error(deepai, fake):
    from tests.fakes.provider_servers import png_bytes

    fake.script("GET", DOWNLOAD, Reply(body=png_bytes(3)[:60]))
    with pytest.raises(ProviderError, match="not an image"):
        deepai.generate("aldar", 1, 1)


def test_malformed_json_is_an_error(deepai, fake):
    fake.script("POST", SUBMIT, Reply(body=b"<html>maintenance</html>", content_type="text/html"))

    with pytest.raises(ProviderError, match="not valid JSON"):
        deepai.generate("aldar", 1, 1)
    assert len(fake.requests) == 1


def test_answer_without_output_url_is_an_error(deepai, fake):
    fake.script("POST", SUBMIT, Reply(json={"id": "x", "err": "prompt refused"}))

    with pytest.raises(ProviderError, match="without an output_url .prompt refused"):
        deepai.generate("aldar", 1, 1)
