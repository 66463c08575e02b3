"""What every hosted generator is: a name, a key variable, and ``generate(prompt, n, seed)``.

A provider subclass only builds its request and parses its answer; the HTTP
client (timeouts, retries, deadline) and image verification are shared here.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass, field
from typing import Any, ClassVar

from PIL import Image, UnidentifiedImageError

from tools.errors import ProviderError
from tools.providers.http import HttpClient
from tools.settings import Settings
from tools.urls import check_key_url

OK, SAFETY_FILTERED, NO_IMAGE = "ok", "safety-filtered", "no-image"


@dataclass
class ProviderImage:
    """One result of a hosted generation.

    ``status`` is ``"ok"`` (``data`` holds verified image bytes, ``image`` the decoded picture),
    ``"safety-filtered"`` or ``"no-image"`` (then ``data``/``image`` are None and ``reason`` says why).
    ``metadata`` holds provider, model, prompt, seed, request id... and never a key.
    """

    data: bytes | None = field(repr=False)
    image: Image.Image | None
    metadata: dict[str, Any] = field(default_factory=dict)
    status: str = OK
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status == OK


class ImageProvider:
    """Base class. Subclasses set the class attributes and implement ``generate``.

    ``base_url_setting`` names the ``Settings`` field holding the base URL, so users
    behind a proxy (and tests) can point a provider elsewhere.
    """

    name: ClassVar[str] = ""
    key_env: ClassVar[str] = ""
    base_url_setting: ClassVar[str] = ""   # Settings field with the base URL ("" if there is none)
    default_base_url: ClassVar[str] = ""   # used when the setting is absent or empty
    default_model: ClassVar[str] = ""
    signup_url: ClassVar[str] = ""

    def __init__(self, api_key: str, *, base_url: str, model: str | None = None,
                 http: HttpClient | None = None) -> None:
        if not api_key:
            raise ProviderError(f"{self.name} needs an API key", f"set {self.key_env} in .env or the environment")
        if not base_url:
            raise ProviderError(f"{self.name} has no base URL", f"set {self.base_url_setting or 'default_base_url'}")
        check_key_url(base_url, self.base_url_label())  # before any request carries the key
        self._api_key = api_key  # private: only ever placed in a request header
        self.base_url = base_url.rstrip("/")
        self.model = model or self.default_model
        self.negative_prompt = ""
        self.http = http or HttpClient(self.name, self.key_env, secrets=[api_key])
        if api_key not in self.http.secrets:
            self.http.secrets.append(api_key)

    @classmethod
    def from_settings(cls, settings: Settings, api_key: str) -> "ImageProvider":
        """Build the provider with the settings' base URL and timeouts."""
        http = HttpClient(cls.name, cls.key_env, secrets=[api_key], read_timeout_s=settings.provider_timeout_s,
                          deadline_s=max(120.0, 3 * settings.provider_timeout_s))
        base_url = getattr(settings, cls.base_url_setting, "") if cls.base_url_setting else ""
        provider = cls(api_key, base_url=base_url or cls.default_base_url, http=http)
        provider.negative_prompt = settings.negative_prompt
        return provider

    @classmethod
    def base_url_label(cls) -> str:
        """The setting that holds the base URL, as a user sets it (for messages)."""
        if not cls.base_url_setting:
            return f"{cls.name}'s base URL"
        return f"{cls.base_url_setting} (ALDAR_{cls.base_url_setting.upper()})"

    def __repr__(self) -> str:  # the key stays out of reprs, tracebacks and logs
        return f"{type(self).__name__}(base_url={self.base_url!r}, model={self.model!r})"

    def generate(self, prompt: str, n: int = 1, seed: int | None = None) -> list[ProviderImage]:
        raise NotImplementedError

    # --- helpers for subclasses ----------------------------------------------------------------
    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def check_request(self, prompt: str, n: int) -> None:
        if not prompt or not prompt.strip():
            raise ProviderError(f"{self.name} needs a non-empty prompt", "pass --prompt TEXT")
        if n < 1:
            raise ProviderError(f"{self.name} was asked for {n} images", "ask for 1 or more images per prompt")

    def base_metadata(self, prompt: str, seed: int | None, **extra: Any) -> dict[str, Any]:
        meta = {"provider": self.name, "model": self.model, "prompt": prompt, "seed": seed}
        meta.update(extra)
        return meta

    def image_from_bytes(self, data: bytes, metadata: dict[str, Any], what: str) -> ProviderImage:
        image = decode_image(data, self.name, what)
        metadata = dict(metadata, width=image.width, height=image.height, format=image.format)
        return ProviderImage(data=data, image=image, metadata=metadata)

    def image_from_base64(self, text: Any, metadata: dict[str, Any], what: str) -> ProviderImage:
        if not isinstance(text, str) or not text:
            raise ProviderError(f"{self.name} {what} holds no base64 image data",
                                "the API answer changed shape; report it")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ProviderError(f"{self.name} {what} is not valid base64", "the API answer was damaged; retry") \
                from None
        return self.image_from_bytes(data, metadata, what)

    def download(self, url: str, metadata: dict[str, Any], what: str) -> ProviderImage:
        # No key header: result URLs may live on a CDN that must never see the key.
        response = self.http.request("GET", url, what=what)
        metadata = dict(metadata, content_type=response.headers.get("Content-Type", ""))
        return self.image_from_bytes(response.content, metadata, what)


def decode_image(data: bytes, provider: str, what: str) -> Image.Image:
    """Verify and fully decode ``data``; a ``ProviderError`` says what arrived instead of an image."""
    if not data:
        raise ProviderError(f"{provider} {what} is empty (0 bytes)", "retry; if it persists the service is faulty")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()  # structure and checksums
        image = Image.open(io.BytesIO(data))
        image.load()  # full decode: catches truncated pixel data verify() misses
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        head = data[:60].decode("utf-8", "replace").replace("\n", " ")
        looks = "HTML" if head.lstrip().lower().startswith(("<!doctype", "<html")) else "not an image"
        raise ProviderError(
            f"{provider} {what} is {looks} ({len(data)} bytes, {type(exc).__name__})",
            "check the base URL (a proxy may answer instead of the API); retry later") from None
    return image
