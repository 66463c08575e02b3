"""Freepik classic and Mystic against the loopback fake: request shape, retries, failures, saved files."""

from __future__ import annotations

import base64

import pytest

from tests.fakes.provider_servers import FreepikFake, Reply, assert_secret_absent, fast_http, serving
from tools.errors import ProviderError
from tools.images import load_image
from tools.generation.png_metadata import read_generation_parameters
from tools.providers import generate_with_provider
from tools.providers.freepik import FreepikMysticProvider, FreepikProvider

KEY = "fpk-SECRET-4b1d9c0e7a2f"
CLASSIC = "/v1/ai/text-to-image"


@pytest.fixture
def fake(monkeypatch, caplog):
    with serving(FreepikFake, "FREEPIK_API_KEY", KEY, monkeypatch, caplog) as server:
        yield server


@pytest.fixture
def classic(fake, clock):
    provider = FreepikProvider(KEY, base_url=fake.base_url, http=fast_http("freepik", "FREEPIK_API_KEY", KEY,
                                                                            clock=clock))
    provider.negative_prompt = "blurry"
    return provider


@pytest.fixture
def mystic(fake, clock):
    return FreepikMysticProvider(KEY, base_url=fake.base_url,
                                 http=fast_http("freepik-mystic", "FREEPIK_API_KEY", KEY, clock=clock))


def test_classic_success_saves_verified_pngs_with_metadata_and_sends_documented_request(
        classic, fake, tmp_path, caplog):
    out = tmp_path / "out"
    saved = generate_with_provider(classic, ["aldar on a donkey", "aldar laughing"], out, 2, 42)

    assert len(saved) == 4 and classic.http.retries == []
    for item in saved:
        assert item.path.parent == out and item.path.name.startswith("freepik_") and item.generator == "freepik"
        assert load_image(item.path).size == (64, 64)
        chunk = read_generation_parameters(item.path)["aldar"]
        assert chunk["provider"] == "freepik" and chunk["seed"] == 42 and chunk["prompt"] == item.prompt
    calls = fake.requests_to(CLASSIC)
    assert len(calls) == 2
    assert calls[0].method == "POST" and calls[0].headers["x-freepik-api-key"] == KEY
    assert calls[0].headers["content-type"] == "application/json"
    assert calls[0].json() == {"prompt": "aldar on a donkey", "negative_prompt": "blurry", "guidance_scale": 1.0,
                               "num_images": 2, "seed": 42, "image": {"size": "square_1_1"}}
    assert_secret_absent(KEY, records=caplog.records, folders=[tmp_path])


def test_more_than_four_images_are_split_into_batches_with_distinct_seeds(classic, fake):
    images = classic.generate("aldar smiling", 5, 42)

    assert len(images) == 5 and all(i.ok for i in images)
    bodies = [r.json() for r in fake.requests_to(CLASSIC)]
    assert [(b["num_images"], b["seed"]) for b in bodies] == [(4, 42), (1, 46)]


def test_rejected_key_is_not_retried_and_the_message_names_the_variable_not_the_key(classic, fake, caplog):
    fake.script("POST", CLASSIC, Reply(401, {"message": f"Invalid API key {KEY}"}))  # a server echoing the key

    with pytest.raises(ProviderError) as caught:
        classic.generate("aldar smiling", 1, 1)

    message = str(caught.value)
    assert "rejected the API key" in message and "FREEPIK_API_KEY" in message and "HTTP 401" in message
    assert len(fake.requests) == 1 and classic.http.retries == []
    assert_secret_absent(KEY, records=caplog.records, texts=[message, repr(classic), repr(caught.value)])


@pytest.mark.parametrize("status", [400, 402, 403])
def test_other_client_errors_are_not_retried(classic, fake, status):
    fake.script("POST", CLASSIC, Reply(status, {"message": "nope"}))

    with pytest.raises(ProviderError, match=f"HTTP {status}"):
        classic.generate("aldar smiling", 1, 1)
    assert len(fake.requests) == 1


def test_429_waits_the_retry_after_seconds_then_succeeds(classic, fake, clock):
    fake.script("POST", CLASSIC, Reply(429, {"message": "Too many requests"}, headers={"Retry-After": "3"}))

    images = classic.generate("aldar smiling", 1, 7)

    assert len(images) == 1 and images[0].ok
    assert [(r.reason, r.wait_s) for r in classic.http.retries] == [("HTTP 429", 3.0)]
    assert clock.sleeps == [3.0] and len(fake.requests_to(CLASSIC)) == 2


def test_500_is_retried_with_jittered_backoff_then_succeeds(classic, fake):
    fake.script("POST", CLASSIC, Reply(500, {"message": "Internal error"}))

    assert len(classic.generate("aldar smiling", 1, 7)) == 1
    (retry,) = classic.http.retries
    assert retry.reason == "HTTP 500" and 0.5 <= retry.wait_s <= 1.0  # base 1 s, jitter in [½, 1]


def test_persistent_503_gives_up_after_the_attempt_limit(classic, fake):
    fake.script("POST", CLASSIC, *[Reply(503, {"message": "Service unavailable"})] * 4)

    with pytest.raises(ProviderError, match="server error after 4 attempt"):
        classic.generate("aldar smiling", 1, 7)
    assert len(classic.http.retries) == 3
    waits = [r.wait_s for r in classic.http.retries]
    assert 0.5 <= waits[0] <= 1 and 1 <= waits[1] <= 2 and 2 <= waits[2] <= 4  # exponential


def test_read_timeout_is_retried(classic, fake):
    fake.script("POST", CLASSIC, Reply(json={"data": []}, hold=True))  # nothing comes before the read timeout

    images = classic.generate("aldar smiling", 1, 7)

    assert len(images) == 1 and images[0].ok
    assert [r.reason.split(" after")[0] for r in classic.http.retries] == ["read timeout"]


def test_non_image_base64_is_a_clear_error_and_nothing_is_saved(classic, fake, tmp_path):
    html = base64.b64encode(b"<html><body>Access denied</body></html>").decode()
    fake.script("POST", CLASSIC, Reply(json={"data": [{"base64": html, "has_nsfw": False}], "meta": {}}))

    with pytest.raises(ProviderError, match="image 1 is HTML"):
        generate_with_provider(classic, ["aldar smiling"], tmp_path / "out", 1, 1)
    assert not list((tmp_path).rglob("*.png")) and len(fake.requests) == 1


def test_malformed_json_is_a_clear_error_without_retry(classic, fake):
    fake.script("POST", CLASSIC, Reply(body=b'{"data": [', content_type="application/json"))

    with pytest.raises(ProviderError, match="not valid JSON"):
        classic.generate("aldar smiling", 1, 1)
    assert len(fake.requests) == 1


@pytest.mark.parametrize("shape", ["nested", "flat"])
def test_mystic_polls_until_completed_and_downloads_without_the_key(mystic, fake, clock, tmp_path, caplog, shape):
    fake.mystic_shape = shape
    fake.mystic_polls_pending = 2

    saved = generate_with_provider(mystic, ["aldar riding"], tmp_path / "out", 1, 9)

    assert len(saved) == 1 and load_image(saved[0].path).size == (64, 64)
    assert saved[0].metadata["polls"] == 3 and saved[0].metadata["endpoint"] == "mystic"
    paths = [(r.method, r.path.split("/")[-1] if r.method == "GET" else r.path) for r in fake.requests]
    task_id = fake.requests[1].path.rsplit("/", 1)[1]
    assert paths == [("POST", "/v1/ai/mystic"), ("GET", task_id), ("GET", task_id), ("GET", task_id),
                     ("GET", f"{task_id}_0.png")]
    assert fake.requests[0].json() == {"prompt": "aldar riding", "aspect_ratio": "square_1_1", "seed": 9}
    assert all(r.headers.get("x-freepik-api-key") == KEY for r in fake.requests[:4])
    assert "x-freepik-api-key" not in fake.requests[4].headers  # the CDN never sees the key
    assert clock.sleeps == [5.0, 5.0, 5.0] and mystic.http.retries == []
    assert_secret_absent(KEY, records=caplog.records, folders=[tmp_path])


@pytest.mark.parametrize("final", ["FAILED", "CANCELLED"])
def test_mystic_terminal_failure_is_reported(mystic, fake, final):
    fake.mystic_polls_pending = 1
    fake.mystic_final_status = final

    with pytest.raises(ProviderError, match=f"ended {final}"):
        mystic.generate("aldar riding", 1, 9)
    assert len(fake.requests) == 3  # create, IN_PROGRESS, final


def test_mystic_polling_stops_at_its_deadline(mystic, fake, clock):
    fake.mystic_polls_pending = 1000

    with pytest.raises(ProviderError, match="still IN_PROGRESS after 120 s"):
        mystic.generate("aldar riding", 1, 9)
    assert sum(clock.sleeps) <= 120 and len(fake.requests) == 1 + len(clock.sleeps)


def test_mystic_poll_retries_a_429_then_continues(mystic, fake):
    fake.script("GET", "/v1/ai/mystic/*", Reply(429, {"message": "slow down"}, headers={"Retry-After": "2"}))

    assert len(mystic.generate("aldar riding", 1, 9)) == 1
    assert [(r.reason, r.wait_s) for r in mystic.http.retries] == [("HTTP 429", 2.0)]


def test_short_prompt_is_refused_before_any_request(classic, fake):
    with pytest.raises(ProviderError, match="at least 3 characters"):
        classic.generate("ab", 1, 1)
    assert fake.requests == []


def test_seed_outside_freepiks_range_is_wrapped_and_the_used_seed_recorded(classic, fake):
    (image,) = classic.generate("aldar smiling", 1, 3_000_005)

    assert fake.requests[0].json()["seed"] == 3_000_005 % 1_000_001
    assert image.metadata["seed"] == 3_000_005 % 1_000_001


def test_an_image_flagged_nsfw_is_reported_as_safety_filtered_not_saved_or_raised(classic, fake, tmp_path):
    from tests.fakes.provider_servers import png_bytes

    good = base64.b64encode(png_bytes(2)).decode()
    fake.script("POST", CLASSIC, Reply(json={"data": [{"base64": "", "has_nsfw": True},
                                                      {"base64": good, "has_nsfw": False}], "meta": {}}))
    skipped: list[str] = []
    saved = generate_with_provider(classic, ["aldar smiling"], tmp_path / "out", 2, 1, skipped=skipped)
    assert len(saved) == 1 and len(list((tmp_path / "out").glob("*.png"))) == 1
    assert len(skipped) == 1 and "safety-filtered" in skipped[0] and "has_nsfw" in skipped[0]
