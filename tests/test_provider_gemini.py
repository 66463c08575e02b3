"""Gemini (generateContent) and Imagen (predict) against the loopback fake."""

from __future__ import annotations

import base64

import pytest

from tests.fakes.provider_servers import (GeminiFake, Reply, assert_secret_absent, fast_http, serving,
                                          gemini_error, gemini_no_image, gemini_quota_error, png_base64)
from tools.errors import ProviderError
from tools.images import load_image
from tools.generation.png_metadata import read_generation_parameters
from tools.providers import configured_providers, generate_with_provider
from tools.providers.gemini import GeminiProvider, ImagenProvider
from tools.settings import load_settings

KEY = "gem-SECRET-5e4d3c2b1a09"
GENERATE = "/models/gemini-2.5-flash-image:generateContent"
PREDICT = "/models/imagen-4.0-generate-001:predict"


@pytest.fixture
def fake(monkeypatch, caplog):
    with serving(GeminiFake, "GEMINI_API_KEY", KEY, monkeypatch, caplog) as server:
        yield server


@pytest.fixture
def gemini(fake, clock):
    return GeminiProvider(KEY, base_url=fake.base_url, http=fast_http("gemini", "GEMINI_API_KEY", KEY, clock=clock))


def test_success_takes_the_image_part_after_the_text_part(gemini, fake, tmp_path, caplog):
    saved = generate_with_provider(gemini, ["aldar in a yurt"], tmp_path / "out", 2, 42)

    assert len(saved) == 2 and [s.seed for s in saved] == [42, 43]
    for item in saved:
        assert item.path.name.startswith("gemini_") and load_image(item.path).size == (64, 64)
        chunk = read_generation_parameters(item.path)["aldar"]
        assert chunk["finish_reason"] == "STOP" and chunk["text"].startswith("Here is") and chunk["request_id"]
    calls = fake.requests_to(GENERATE)
    assert len(calls) == 2 and all(c.headers["x-goog-api-key"] == KEY for c in calls)
    assert calls[0].json() == {"contents": [{"role": "user", "parts": [{"text": "aldar in a yurt"}]}],
                               "generationConfig": {"responseModalities": ["TEXT", "IMAGE"],
                                                    "imageConfig": {"aspectRatio": "1:1"}, "seed": 42}}
    assert calls[0].query == {}  # the key travels in the header, never in the URL
    assert_secret_absent(KEY, records=caplog.records, folders=[tmp_path])


def test_wrong_key_answered_as_google_does_is_reported_as_a_key_problem(fake, clock, caplog):
    provider = GeminiProvider("gem-WRONG-key-000000", base_url=fake.base_url,
                              http=fast_http("gemini", "GEMINI_API_KEY", "gem-WRONG-key-000000", clock=clock))
    with pytest.raises(ProviderError, match="rejected the API key .HTTP 400.*GEMINI_API_KEY"):
        provider.generate("aldar", 1, 1)
    assert provider.http.retries == []


def test_401_is_not_retried(gemini, fake, caplog):
    fake.script("POST", GENERATE, Reply(401, gemini_error(401, "UNAUTHENTICATED", "Request had invalid credentials.")))

    with pytest.raises(ProviderError) as caught:
        gemini.generate("aldar", 1, 1)
    assert "rejected the API key" in str(caught.value) and len(fake.requests) == 1
    assert_secret_absent(KEY, records=caplog.records, texts=[caught.value])


def test_per_minute_quota_waits_retry_info_delay_then_succeeds(gemini, fake, clock):
    fake.script("POST", GENERATE, gemini_quota_error("minute", "7s"))

    assert gemini.generate("aldar", 1, 1)[0].ok
    assert [(r.reason, r.wait_s) for r in gemini.http.retries] == [("HTTP 429", 7.0)] and clock.sleeps == [7.0]


def test_per_day_quota_is_not_retried(gemini, fake):
    fake.script("POST", GENERATE, gemini_quota_error("day", "30s"))

    with pytest.raises(ProviderError, match="daily quota exhausted"):
        gemini.generate("aldar", 1, 1)
    assert len(fake.requests) == 1 and gemini.http.retries == []


def test_429_without_details_falls_back_to_retry_after(gemini, fake):
    fake.script("POST", GENERATE, Reply(429, gemini_error(429, "RESOURCE_EXHAUSTED", "busy"),
                                        headers={"Retry-After": "2"}))

    assert gemini.generate("aldar", 1, 1)[0].ok
    assert [r.wait_s for r in gemini.http.retries] == [2.0]


def test_500_then_success(gemini, fake):
    fake.script("POST", GENERATE, Reply(500, gemini_error(500, "INTERNAL", "An internal error has occurred.")))

    assert gemini.generate("aldar", 1, 1)[0].ok
    assert [r.reason for r in gemini.http.retries] == ["HTTP 500"]


def test_read_timeout_then_success(gemini, fake):
    fake.script("POST", GENERATE, Reply(json={}, hold=True))  # nothing comes before the read timeout

    assert gemini.generate("aldar", 1, 1)[0].ok
    assert [r.reason.split(" after")[0] for r in gemini.http.retries] == ["read timeout"]


def test_image_part_that_is_not_an_image_is_an_error(gemini, fake):
    text = base64.b64encode(b'{"not": "an image"}').decode()
    fake.script("POST", GENERATE, Reply(json={"candidates": [{"content": {"parts": [
        {"inlineData": {"mimeType": "image/png", "data": text}}]}, "finishReason": "STOP"}]}))

    with pytest.raises(ProviderError, match="image part is not an image"):
        gemini.generate("aldar", 1, 1)


def test_malformed_json_is_an_error(gemini, fake):
    fake.script("POST", GENERATE, Reply(body=b'{"candidates": [{"content"', content_type="application/json"))

    with pytest.raises(ProviderError, match="not valid JSON"):
        gemini.generate("aldar", 1, 1)
    assert len(fake.requests) == 1


@pytest.mark.parametrize("reason, status", [("IMAGE_SAFETY", "safety-filtered"),
                                            ("IMAGE_PROHIBITED_CONTENT", "safety-filtered"),
                                            ("NO_IMAGE", "no-image"), ("IMAGE_OTHER", "no-image")])
def test_no_image_finish_reasons_are_reported_not_raised(gemini, fake, tmp_path, reason, status):
    fake.script("POST", GENERATE, gemini_no_image(reason, with_parts=reason == "NO_IMAGE"))
    skipped: list[str] = []

    saved = generate_with_provider(gemini, ["aldar"], tmp_path / "out", 2, 5, skipped=skipped)

    assert len(saved) == 1  # the second call succeeds
    assert len(skipped) == 1 and status in skipped[0] and reason in skipped[0]
    result = gemini.read_candidate(gemini_no_image(reason).json, {})
    assert result.status == status and result.image is None and not result.ok


def test_blocked_prompt_without_candidates_is_safety_filtered(gemini, fake):
    fake.script("POST", GENERATE, Reply(json={"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}}))

    (result,) = gemini.generate("aldar", 1, 1)
    assert result.status == "safety-filtered" and "PROHIBITED_CONTENT" in result.reason


def test_imagen_predict_reports_filtered_samples(fake, clock, tmp_path):
    imagen = ImagenProvider(KEY, base_url=fake.base_url, http=fast_http("imagen", "GEMINI_API_KEY", KEY, clock=clock))
    fake.script("POST", PREDICT, Reply(json={"predictions": [
        {"bytesBase64Encoded": png_base64(1), "mimeType": "image/png"},
        {"raiFilteredReason": "Your current safety filter threshold filtered out 1 generated image."}]}))
    skipped: list[str] = []

    saved = generate_with_provider(imagen, ["aldar"], tmp_path / "out", 3, 1, skipped=skipped)

    assert len(saved) == 1 and saved[0].path.name.startswith("imagen_")
    assert fake.requests[0].json() == {"instances": [{"prompt": "aldar"}], "parameters": {
        "sampleCount": 3, "aspectRatio": "1:1", "includeRaiReason": True}}
    assert len(skipped) == 2 and "safety-filtered" in skipped[0] and "no-image" in skipped[1]


def test_configured_from_settings_uses_the_model_and_base_url(fake, monkeypatch):
    settings = load_settings(overrides={"gemini_base_url": fake.base_url, "gemini_model": "imagen-4.0-fast-generate-001"},
                             environ={})
    (gemini, imagen), skipped = configured_providers(settings, ["gemini", "imagen"])
    assert skipped == [] and gemini.uses_imagen and imagen.model == "imagen-4.0-fast-generate-001"
    assert gemini.base_url == fake.base_url and KEY not in repr(gemini)


def test_failed_precondition_points_at_billing_or_region(gemini, fake):
    fake.script("POST", GENERATE, Reply(400, gemini_error(400, "FAILED_PRECONDITION",
                                                          "User location is not supported for the API use.")))
    with pytest.raises(ProviderError, match="cannot serve this account or region.*enable billing"):
        gemini.generate("aldar", 1, 1)
    assert len(fake.requests) == 1
