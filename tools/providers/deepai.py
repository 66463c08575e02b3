"""DeepAI text2img: a form POST answers ``output_url``, which is then downloaded.

DeepAI takes form fields, not JSON, and has no seed: each image is its own call,
and the requested seed is kept in the metadata only as ``requested_seed``.
"""

from __future__ import annotations

from urllib.parse import urljoin

from tools.errors import ProviderError
from tools.providers.base import ImageProvider, ProviderImage
from tools.providers.http import parse_json


class DeepAIProvider(ImageProvider):
    name = "deepai"
    key_env = "DEEPAI_API_KEY"
    base_url_setting = "deepai_base_url"
    default_model = "text2img-standard"
    signup_url = "https://deepai.org/dashboard/profile"
    width = height = 512  # DeepAI: 128–1536, multiples of 32
    generator_version = "standard"

    def generate(self, prompt: str, n: int = 1, seed: int | None = None) -> list[ProviderImage]:
        self.check_request(prompt, n)
        form = {"text": prompt, "width": str(self.width), "height": str(self.height),
                "image_generator_version": self.generator_version}
        if self.negative_prompt:
            form["negative_prompt"] = self.negative_prompt
        results = []
        for index in range(n):
            response = self.http.request("POST", self.url("/api/text2img"), what="text2img request",
                                         headers={"api-key": self._api_key, "Accept": "application/json"},
                                         form=form)
            answer = parse_json(response, self.name, "text2img request")
            output_url = answer.get("output_url") if isinstance(answer, dict) else None
            if not isinstance(output_url, str) or not output_url:
                problem = answer.get("err") or answer.get("status") if isinstance(answer, dict) else None
                problem = self.http.scrub(str(problem)[:200]) if problem else None
                raise ProviderError(f"deepai answered without an output_url{f' ({problem})' if problem else ''}",
                                    "the prompt may have been refused or the API changed; try another prompt")
            metadata = self.base_metadata(prompt, None, requested_seed=seed, request_id=str(answer.get("id", "")),
                                          endpoint="text2img", index=index,
                                          width_requested=self.width, height_requested=self.height)
            results.append(self.download(urljoin(self.base_url + "/", output_url), metadata,
                                         f"image download {index + 1}"))
        return results
