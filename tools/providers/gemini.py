"""Google Gemini image models (``:generateContent``) and Imagen (``:predict``).

Gemini answers ``candidates[0].content.parts[]``; text parts may come before the
``inlineData`` image part. When the model declines (``finishReason`` IMAGE_SAFETY,
IMAGE_PROHIBITED_CONTENT, NO_IMAGE, IMAGE_OTHER, or a blocked prompt) there is no image
part — ``content`` may have no parts at all — and the result is reported with status
``safety-filtered`` or ``no-image`` instead of raising.

429 RESOURCE_EXHAUSTED: retried after ``RetryInfo.retryDelay`` only for per-minute quotas;
a per-day quota will not reset within any sensible wait, so it is reported at once.
"""

from __future__ import annotations

from typing import Any

import requests

from tools.errors import ProviderError
from tools.providers.base import NO_IMAGE, SAFETY_FILTERED, ImageProvider, ProviderImage
from tools.providers.http import RetryDecision, parse_json, retry_after_s
from tools.settings import Settings

SAFETY_REASONS = frozenset({"IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "SAFETY", "PROHIBITED_CONTENT",
                            "BLOCKLIST", "SPII", "IMAGE_RECITATION", "RECITATION"})
IMAGEN_MAX_SAMPLES = 4


class GeminiProvider(ImageProvider):
    name = "gemini"
    key_env = "GEMINI_API_KEY"
    base_url_setting = "gemini_base_url"
    default_model = "gemini-2.5-flash-image"
    signup_url = "https://aistudio.google.com/apikey"
    aspect_ratio = "1:1"

    @classmethod
    def from_settings(cls, settings: Settings, api_key: str) -> "ImageProvider":
        provider = super().from_settings(settings, api_key)
        provider.model = settings.gemini_model or cls.default_model
        return provider

    @property
    def uses_imagen(self) -> bool:
        return self.model.startswith("imagen")

    def headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self._api_key, "Content-Type": "application/json"}

    def generate(self, prompt: str, n: int = 1, seed: int | None = None) -> list[ProviderImage]:
        self.check_request(prompt, n)
        if self.uses_imagen:
            results: list[ProviderImage] = []
            while len(results) < n:
                results.extend(self._imagen_call(prompt, min(IMAGEN_MAX_SAMPLES, n - len(results)), seed))
            return results
        # The Gemini image model returns one image per call; each call gets its own seed.
        return [self._gemini_call(prompt, None if seed is None else seed + i, i) for i in range(n)]

    # --- Gemini generateContent ----------------------------------------------------------------
    def _gemini_call(self, prompt: str, seed: int | None, index: int) -> ProviderImage:
        config: dict[str, Any] = {"responseModalities": ["TEXT", "IMAGE"],
                                  "imageConfig": {"aspectRatio": self.aspect_ratio}}
        if seed is not None:
            config["seed"] = seed
        body = {"contents": [{"role": "user", "parts": [{"text": prompt}]}], "generationConfig": config}
        response = self.http.request("POST", self.url(f"/models/{self.model}:generateContent"),
                                     what="generateContent request", headers=self.headers(), json_body=body,
                                     decide_retry=self.decide_retry)
        answer = parse_json(response, self.name, "generateContent request")
        if not isinstance(answer, dict):
            raise ProviderError("gemini answered with JSON that is not an object", "the API changed; report it")
        metadata = self.base_metadata(prompt, seed, endpoint="generateContent", index=index,
                                      request_id=str(answer.get("responseId", "")),
                                      model_version=str(answer.get("modelVersion", "")))
        return self.read_candidate(answer, metadata)

    def read_candidate(self, answer: dict, metadata: dict[str, Any]) -> ProviderImage:
        feedback = answer.get("promptFeedback") if isinstance(answer.get("promptFeedback"), dict) else {}
        candidates = answer.get("candidates") if isinstance(answer.get("candidates"), list) else []
        if not candidates:
            reason = str(feedback.get("blockReason") or "no candidates")
            status = SAFETY_FILTERED if feedback.get("blockReason") else NO_IMAGE
            return ProviderImage(None, None, dict(metadata, finish_reason=reason), status, f"prompt {reason}")
        candidate = candidates[0] if isinstance(candidates[0], dict) else {}
        finish = str(candidate.get("finishReason") or "")
        content = candidate.get("content") if isinstance(candidate.get("content"), dict) else {}
        parts = content.get("parts") if isinstance(content.get("parts"), list) else []
        texts = [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)]
        metadata = dict(metadata, finish_reason=finish, text=" ".join(texts)[:500])
        for part in parts:
            inline = (part.get("inlineData") or part.get("inline_data")) if isinstance(part, dict) else None
            if isinstance(inline, dict):
                mime = str(inline.get("mimeType") or inline.get("mime_type") or "")
                if mime and not mime.startswith("image/"):
                    continue
                return self.image_from_base64(inline.get("data"), dict(metadata, mime_type=mime), "image part")
        status = SAFETY_FILTERED if finish in SAFETY_REASONS else NO_IMAGE
        message = str(candidate.get("finishMessage") or "")[:200]
        reason = f"finishReason {finish or 'missing'}" + (f": {self.http.scrub(message)}" if message else "")
        return ProviderImage(None, None, metadata, status, reason)

    # --- Imagen predict ----------------------------------------------------------------------
    def _imagen_call(self, prompt: str, count: int, seed: int | None) -> list[ProviderImage]:
        body = {"instances": [{"prompt": prompt}],
                "parameters": {"sampleCount": count, "aspectRatio": self.aspect_ratio, "includeRaiReason": True}}
        response = self.http.request("POST", self.url(f"/models/{self.model}:predict"), what="Imagen request",
                                     headers=self.headers(), json_body=body, decide_retry=self.decide_retry)
        answer = parse_json(response, self.name, "Imagen request")
        predictions = answer.get("predictions") if isinstance(answer, dict) else None
        predictions = predictions if isinstance(predictions, list) else []
        # Imagen has no seed on this API: the requested one is kept for the record only.
        base = self.base_metadata(prompt, None, requested_seed=seed, endpoint="predict")
        results = []
        for index, item in enumerate(predictions[:count]):
            item = item if isinstance(item, dict) else {}
            metadata = dict(base, index=index, mime_type=str(item.get("mimeType", "")))
            if item.get("bytesBase64Encoded"):
                results.append(self.image_from_base64(item["bytesBase64Encoded"], metadata, "Imagen prediction"))
            else:
                reason = str(item.get("raiFilteredReason") or "no image in prediction")[:300]
                status = SAFETY_FILTERED if item.get("raiFilteredReason") else NO_IMAGE
                results.append(ProviderImage(None, None, metadata, status, reason))
        for index in range(len(results), count):  # filtered samples may simply be missing
            results.append(ProviderImage(None, None, dict(base, index=index), NO_IMAGE,
                                         "fewer predictions than requested (filtered without a reason)"))
        return results

    # --- retries -------------------------------------------------------------------------------
    def decide_retry(self, response: requests.Response) -> RetryDecision | None:
        """Gemini's 429: wait ``RetryInfo.retryDelay`` for per-minute quotas, give up on per-day ones."""
        if response.status_code != 429:
            return self.http.default_decision(response)
        details = error_details(response)
        quota_ids = [str(v.get("quotaId", "")) + str(v.get("quotaMetric", ""))
                     for d in details if str(d.get("@type", "")).endswith("QuotaFailure")
                     for v in d.get("violations", []) if isinstance(v, dict)]
        if any("perday" in q.lower() for q in quota_ids):
            return RetryDecision(False, why="daily quota exhausted; it resets at midnight Pacific time")
        delay = next((parse_duration(d.get("retryDelay")) for d in details
                      if str(d.get("@type", "")).endswith("RetryInfo")), None)
        if delay is None:
            delay = retry_after_s(response, self.http.wall_clock())
        return RetryDecision(True, delay)


class ImagenProvider(GeminiProvider):
    """Imagen through the same Gemini API key; several images per call, no seed."""

    name = "imagen"
    default_model = "imagen-4.0-generate-001"

    @classmethod
    def from_settings(cls, settings: Settings, api_key: str) -> "ImageProvider":
        provider = super().from_settings(settings, api_key)
        chosen = settings.gemini_model or ""
        provider.model = chosen if chosen.startswith("imagen") else cls.default_model
        return provider


def error_details(response: requests.Response) -> list[dict]:
    try:
        body = response.json()
    except ValueError:
        return []
    error = body.get("error") if isinstance(body, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def parse_duration(value: Any) -> float | None:
    """Google's JSON duration (``"55s"``, ``"1.5s"``) in seconds; None when unreadable."""
    if not isinstance(value, str) or not value.endswith("s"):
        return None
    try:
        return max(float(value[:-1]), 0.0)
    except ValueError:
        return None
