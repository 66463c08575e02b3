"""Freepik AI: classic text-to-image (synchronous) and Mystic (asynchronous, polled).

Classic: ``POST /v1/ai/text-to-image`` answers ``data[].base64`` directly.
Mystic: ``POST /v1/ai/mystic`` answers a task id; ``GET /v1/ai/mystic/{id}`` is polled
until ``COMPLETED`` (then ``generated`` lists image URLs) or ``FAILED``/``CANCELLED``.
Two documented answer shapes are accepted: ``{"data": {"task_id", "status"}}`` and the
flat ``{"task_id", "task_status"}``.
"""

from __future__ import annotations

from typing import Any

from tools.errors import ProviderError
from tools.providers.base import SAFETY_FILTERED, ImageProvider, ProviderImage
from tools.providers.http import parse_json

MAX_IMAGES_PER_CALL = 4
MAX_SEED = 1_000_000
TERMINAL_FAILURES = ("FAILED", "CANCELLED", "CANCELED", "ERROR")


class FreepikProvider(ImageProvider):
    """Freepik classic text-to-image: fast, up to 4 images per call, base64 in the answer."""

    name = "freepik"
    key_env = "FREEPIK_API_KEY"
    base_url_setting = "freepik_base_url"
    default_model = "classic-fast"
    signup_url = "https://www.freepik.com/api"
    image_size = "square_1_1"
    guidance_scale = 1.0

    def headers(self) -> dict[str, str]:
        return {"x-freepik-api-key": self._api_key, "Accept": "application/json"}

    def generate(self, prompt: str, n: int = 1, seed: int | None = None) -> list[ProviderImage]:
        self.check_request(prompt, n)
        if len(prompt.strip()) < 3:
            raise ProviderError("freepik needs a prompt of at least 3 characters", "write a longer --prompt")
        results: list[ProviderImage] = []
        while len(results) < n:
            batch = min(MAX_IMAGES_PER_CALL, n - len(results))
            # Each batch gets its own seed so a second batch is not a copy of the first.
            batch_seed = None if seed is None else (seed + len(results)) % (MAX_SEED + 1)
            results.extend(self._classic_batch(prompt, batch, batch_seed))
        return results[:n]

    def _classic_batch(self, prompt: str, count: int, seed: int | None) -> list[ProviderImage]:
        body: dict[str, Any] = {"prompt": prompt, "negative_prompt": self.negative_prompt,
                                "guidance_scale": self.guidance_scale, "num_images": count,
                                "image": {"size": self.image_size}}
        if seed is not None:
            body["seed"] = seed
        response = self.http.request("POST", self.url("/v1/ai/text-to-image"), what="text-to-image request",
                                     headers=self.headers(), json_body=body)
        answer = parse_json(response, self.name, "text-to-image request")
        items = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(items, list) or not items:
            raise ProviderError("freepik answered the text-to-image request without images (no data[])",
                                "the API answer changed shape or the prompt was refused; try another prompt")
        meta_block = answer.get("meta") if isinstance(answer.get("meta"), dict) else {}
        results = []
        for index, item in enumerate(items):
            item = item if isinstance(item, dict) else {}
            metadata = self.base_metadata(prompt, meta_block.get("seed", seed), endpoint="text-to-image",
                                          request_id=response.headers.get("x-request-id", ""),
                                          has_nsfw=bool(item.get("has_nsfw", False)), index=index)
            if item.get("has_nsfw"):  # filtered (blank or missing base64): a safety result, not a contestant
                results.append(ProviderImage(None, None, metadata, SAFETY_FILTERED, "flagged NSFW (has_nsfw)"))
                continue
            results.append(self.image_from_base64(item.get("base64"), metadata, f"image {index + 1}"))
        return results


class FreepikMysticProvider(FreepikProvider):
    """Freepik Mystic: higher quality, asynchronous; the task is polled with a deadline."""

    name = "freepik-mystic"
    default_model = "mystic"
    poll_interval_s = 5.0   # what Freepik's own client uses
    poll_timeout_s = 120.0

    def generate(self, prompt: str, n: int = 1, seed: int | None = None) -> list[ProviderImage]:
        self.check_request(prompt, n)
        results: list[ProviderImage] = []
        while len(results) < n:
            task_seed = None if seed is None else (seed + len(results)) % (MAX_SEED + 1)
            results.extend(self._mystic_task(prompt, task_seed))
        return results[:n]

    def _mystic_task(self, prompt: str, seed: int | None) -> list[ProviderImage]:
        body: dict[str, Any] = {"prompt": prompt, "aspect_ratio": "square_1_1"}
        if seed is not None:
            body["seed"] = seed
        response = self.http.request("POST", self.url("/v1/ai/mystic"), what="Mystic request",
                                     headers=self.headers(), json_body=body)
        task_id, status, generated = read_task(parse_json(response, self.name, "Mystic request"))
        if not task_id:
            raise ProviderError("freepik answered the Mystic request without a task id",
                                "the API answer changed shape; report it")
        started = self.http.clock()
        polls = 0
        while status != "COMPLETED":
            if status in TERMINAL_FAILURES:
                raise ProviderError(f"freepik Mystic task {task_id} ended {status}",
                                    "the prompt may have been refused; try another prompt or retry later")
            if self.http.clock() - started + self.poll_interval_s > self.poll_timeout_s:
                raise ProviderError(f"freepik Mystic task {task_id} was still {status or 'pending'} after "
                                    f"{self.poll_timeout_s:g} s ({polls} polls)", "retry later")
            self.http.sleep(self.poll_interval_s)
            polls += 1
            poll = self.http.request("GET", self.url(f"/v1/ai/mystic/{task_id}"), what="Mystic status poll",
                                     headers=self.headers())
            _, status, generated = read_task(parse_json(poll, self.name, "Mystic status poll"))
        if not generated:
            raise ProviderError(f"freepik Mystic task {task_id} completed without images",
                                "the prompt may have been filtered; try another prompt")
        results = []
        for index, url in enumerate(generated):
            metadata = self.base_metadata(prompt, seed, endpoint="mystic", request_id=task_id, polls=polls,
                                          index=index)
            results.append(self.download(str(url), metadata, f"Mystic image {index + 1}"))
        return results


def read_task(answer: Any) -> tuple[str, str, list[str]]:
    """(task id, status, generated URLs) from either documented Mystic answer shape."""
    if not isinstance(answer, dict):
        raise ProviderError("freepik answered a Mystic call with JSON that is not an object",
                            "the API answer changed shape; report it")
    block = answer.get("data") if isinstance(answer.get("data"), dict) else answer
    task_id = str(block.get("task_id") or answer.get("task_id") or "")
    status = str(block.get("status") or block.get("task_status") or answer.get("task_status") or "").upper()
    generated = block.get("generated") or answer.get("generated") or []
    urls = [g if isinstance(g, str) else (g.get("url") or g.get("image") or "") for g in generated]
    return task_id, status, [u for u in urls if u]
