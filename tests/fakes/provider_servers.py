"""Loopback fakes of Freepik, DeepAI and Gemini that follow the documented contracts.

Each fake is an ``http.server`` on ``127.0.0.1:0`` in a daemon thread. By default it
behaves like the real API (checks the key header and the request shape, answers real
PNGs); tests put one-shot replies in front with ``script(method, path, *replies)`` —
a 429 with ``Retry-After``, a slow answer, an HTML page — and read back every request
from ``requests``.

    with FreepikFake(key="k") as fake:
        fake.script("POST", "/v1/ai/text-to-image", Reply(429, {"message": "slow down"}, headers={"Retry-After": "1"}))
        ... point the provider at fake.base_url ...
        assert [r.path for r in fake.requests] == [...]
"""

from __future__ import annotations

import base64
import fnmatch
import io
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, urlsplit

from PIL import Image


def png_bytes(seed: int = 0, size: int = 64) -> bytes:
    """A small real PNG whose colour depends on ``seed`` (so images differ)."""
    colour = ((seed * 67) % 256, (seed * 131 + 80) % 256, (seed * 29 + 160) % 256)
    image = Image.new("RGB", (size, size), colour)
    for x in range(0, size, 8):  # a stripe so it is not a flat fill
        image.putpixel((x, x), (255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_base64(seed: int = 0) -> str:
    return base64.b64encode(png_bytes(seed)).decode("ascii")


@dataclass
class Reply:
    """One scripted answer. ``body`` (raw bytes) wins over ``json``; ``delay_s`` sleeps before answering,
    ``drip_s`` between pieces of the body (each gap shorter than a read timeout, the sum maybe not).

    For timeout tests that must not depend on how busy the machine is: ``hold`` sends nothing until the
    next request reaches the server (a client can only send it after giving up on this one), and
    ``on_piece`` is called before each of the body's 10 pieces (to move a fake clock, say).
    """

    status: int = 200
    json: Any = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    content_type: str | None = None
    drip_s: float = 0.0  # > 0: send the body in 10 pieces with this pause before each
    hold: bool = False
    on_piece: Callable[[], None] | None = None


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))

    def form(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(self.body.decode("utf-8"), keep_blank_values=True).items()}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        fake: FakeServer = self.server.fake  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        request = RecordedRequest(self.command, parts.path, parse_qs(parts.query),
                                  {k.lower(): v for k, v in self.headers.items()}, body)
        reply = fake.dispatch(request)
        if reply.hold:
            fake.wait_for_request_after(request)
        if reply.delay_s:
            time.sleep(reply.delay_s)
        payload = reply.body if reply.body is not None else (
            json.dumps(reply.json).encode("utf-8") if reply.json is not None else b"")
        content_type = reply.content_type or ("application/json" if reply.body is None else "image/png")
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if reply.drip_s or reply.on_piece:
                step = max(1, -(-len(payload) // 10))
                for start in range(0, len(payload), step):
                    if reply.on_piece:
                        reply.on_piece()
                    time.sleep(reply.drip_s)
                    self.wfile.write(payload[start:start + step])
                    self.wfile.flush()
            else:
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and went away: expected in timeout tests

    do_GET = do_POST = _serve

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # a client that hung up is not an error
        pass


class FakeServer:
    """Base: thread, request log, scripted replies; subclasses implement ``default(request)``."""

    key_header = ""

    def __init__(self, key: str = "test-key") -> None:
        self.key = key
        self.requests: list[RecordedRequest] = []
        self._scripts: list[tuple[str, str, list[Reply]]] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self  # type: ignore[attr-defined]
        # A short poll interval: shutdown() waits up to one interval, per test.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FakeServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def script(self, method: str, path: str, *replies: Reply) -> None:
        """Answer the next ``len(replies)`` matching requests (``path`` may hold ``*``) with ``replies``."""
        with self._lock:
            self._scripts.append((method.upper(), path, list(replies)))

    def requests_to(self, path_pattern: str) -> list[RecordedRequest]:
        return [r for r in self.requests if fnmatch.fnmatchcase(r.path, path_pattern)]

    def dispatch(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self.requests.append(request)
            self._arrived.notify_all()
            for method, pattern, replies in self._scripts:
                if replies and method == request.method and fnmatch.fnmatchcase(request.path, pattern):
                    return replies.pop(0)
        try:
            return self.default(request)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return Reply(400, {"message": f"bad request: {exc}"})

    def wait_for_request_after(self, request: RecordedRequest, cap_s: float = 60.0) -> None:
        """Block until another request has arrived after ``request`` (at most ``cap_s``: a test never hangs)."""
        with self._arrived:
            self._arrived.wait_for(lambda: self.requests[-1] is not request, timeout=cap_s)

    def default(self, request: RecordedRequest) -> Reply:
        return Reply(404, {"message": f"no route {request.method} {request.path}"})

    def key_ok(self, request: RecordedRequest) -> bool:
        return request.headers.get(self.key_header) == self.key


# --------------------------------------------------------------------------- Freepik
class FreepikFake(FakeServer):
    """Classic ``/v1/ai/text-to-image`` and Mystic ``/v1/ai/mystic`` (+ polling, + CDN downloads)."""

    key_header = "x-freepik-api-key"

    def __init__(self, key: str = "test-key") -> None:
        super().__init__(key)
        self.mystic_shape = "nested"      # "nested": data.task_id/data.status; "flat": task_id/task_status
        self.mystic_polls_pending = 2     # polls answered IN_PROGRESS before the final status
        self.mystic_final_status = "COMPLETED"
        self.tasks: dict[str, int] = {}

    def default(self, request: RecordedRequest) -> Reply:
        if request.path.startswith("/cdn/"):
            return Reply(body=png_bytes(len(request.path)))
        if not self.key_ok(request):
            return Reply(401, {"message": "Invalid API key"})
        if request.method == "POST" and request.path == "/v1/ai/text-to-image":
            return self._classic(request.json())
        if request.method == "POST" and request.path == "/v1/ai/mystic":
            body = request.json()
            if len(str(body.get("prompt", ""))) < 3:
                return Reply(400, {"message": "prompt must be at least 3 characters"})
            task_id = str(uuid.uuid4())
            self.tasks[task_id] = 0
            return Reply(json=self._task(task_id, "IN_PROGRESS", []))
        if request.method == "GET" and request.path.startswith("/v1/ai/mystic/"):
            task_id = request.path.rsplit("/", 1)[1]
            if task_id not in self.tasks:
                return Reply(404, {"message": "task not found"})
            self.tasks[task_id] += 1
            if self.tasks[task_id] <= self.mystic_polls_pending:
                return Reply(json=self._task(task_id, "IN_PROGRESS", []))
            generated = [f"{self.base_url}/cdn/{task_id}_0.png"] if self.mystic_final_status == "COMPLETED" else []
            return Reply(json=self._task(task_id, self.mystic_final_status, generated))
        return super().default(request)

    def _classic(self, body: dict) -> Reply:
        prompt, count = str(body.get("prompt", "")), body.get("num_images", 1)
        if len(prompt) < 3:
            return Reply(400, {"message": "prompt must be at least 3 characters"})
        if not isinstance(count, int) or not 1 <= count <= 4:
            return Reply(400, {"message": "num_images must be between 1 and 4"})
        seed = body.get("seed", 123)
        if not isinstance(seed, int) or not 0 <= seed <= 1_000_000:
            return Reply(400, {"message": "seed must be between 0 and 1000000"})
        if not 0 <= float(body.get("guidance_scale", 1.0)) <= 2:
            return Reply(400, {"message": "guidance_scale must be between 0 and 2"})
        size = body.get("image", {}).get("size", "square_1_1")
        data = [{"base64": png_base64(seed + i), "has_nsfw": False} for i in range(count)]
        meta = {"image": {"size": size, "width": 64, "height": 64}, "seed": seed,
                "guidance_scale": body.get("guidance_scale", 1.0), "prompt": prompt, "num_inference_steps": 8}
        return Reply(json={"data": data, "meta": meta}, headers={"x-request-id": "req-" + str(seed)})

    def _task(self, task_id: str, status: str, generated: list[str]) -> dict:
        if self.mystic_shape == "flat":
            return {"task_id": task_id, "task_status": status, "generated": generated}
        return {"data": {"task_id": task_id, "status": status, "generated": generated}}


# --------------------------------------------------------------------------- DeepAI
class DeepAIFake(FakeServer):
    """``POST /api/text2img`` (form fields) → ``output_url`` → ``GET /job-view-file/...``."""

    key_header = "api-key"

    def default(self, request: RecordedRequest) -> Reply:
        if request.method == "GET" and request.path.startswith("/job-view-file/"):
            return Reply(body=png_bytes(7))
        if request.method == "POST" and request.path == "/api/text2img":
            if not self.key_ok(request):
                return Reply(401, {"status": "Please check your API key"})
            if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
                return Reply(400, {"status": "Expected form data with a text field"})
            form = request.form()
            if not form.get("text"):
                return Reply(400, {"status": "Missing text field"})
            for side in ("width", "height"):
                value = int(form.get(side, "512"))
                if not 128 <= value <= 1536 or value % 32:
                    return Reply(400, {"status": f"{side} must be 128-1536, a multiple of 32"})
            job = str(uuid.uuid4())
            return Reply(json={"id": job, "output_url": f"{self.base_url}/job-view-file/{job}/outputs/output.png"})
        return super().default(request)


# --------------------------------------------------------------------------- Gemini
def gemini_error(code: int, status: str, message: str, details: list | None = None) -> dict:
    return {"error": {"code": code, "message": message, "status": status, "details": details or []}}


def gemini_quota_error(per: str = "minute", retry_delay: str = "7s") -> Reply:
    """A 429 RESOURCE_EXHAUSTED as Google sends it: QuotaFailure + RetryInfo."""
    quota_id = ("GenerateRequestsPerMinutePerProjectPerModel-FreeTier" if per == "minute"
                else "GenerateRequestsPerDayPerProjectPerModel-FreeTier")
    details = [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
         "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                         "quotaId": quota_id, "quotaDimensions": {"model": "gemini-2.5-flash-image"}}]},
        {"@type": "type.googleapis.com/google.rpc.Help", "links": [{"description": "quota docs",
                                                                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay},
    ]
    return Reply(429, gemini_error(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota.", details))


def gemini_no_image(finish_reason: str = "IMAGE_SAFETY", with_parts: bool = False) -> Reply:
    """A 200 without an image: ``content`` has no parts (or only text) and a blocking ``finishReason``."""
    content: dict[str, Any] = {"role": "model"}
    if with_parts:
        content["parts"] = [{"text": "I can't draw that."}]
    return Reply(json={"candidates": [{"content": content, "finishReason": finish_reason, "index": 0}],
                       "modelVersion": "gemini-2.5-flash-image", "responseId": "resp-filtered"})


class GeminiFake(FakeServer):
    """``/models/{model}:generateContent`` (text part first, then ``inlineData``) and ``:predict`` (Imagen)."""

    key_header = "x-goog-api-key"

    def default(self, request: RecordedRequest) -> Reply:
        if request.method != "POST" or not request.path.startswith("/models/"):
            return super().default(request)
        if not self.key_ok(request):
            # What Google really answers for a wrong key: 400 INVALID_ARGUMENT, reason API_KEY_INVALID.
            return Reply(400, gemini_error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
                                           [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                             "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]))
        body = request.json()
        if request.path.endswith(":generateContent"):
            text = body["contents"][0]["parts"][0]["text"]
            modalities = body.get("generationConfig", {}).get("responseModalities", [])
            parts: list[dict] = [{"text": f"Here is {text[:20]}"}]
            if "IMAGE" in modalities:
                seed = body.get("generationConfig", {}).get("seed", 0)
                parts.append({"inlineData": {"mimeType": "image/png", "data": png_base64(seed)}})
            return Reply(json={"candidates": [{"content": {"parts": parts, "role": "model"}, "finishReason": "STOP",
                                               "index": 0}],
                               "usageMetadata": {"promptTokenCount": 12}, "modelVersion": "gemini-2.5-flash-image",
                               "responseId": "resp-" + uuid.uuid4().hex[:8]})
        if request.path.endswith(":predict"):
            prompt = body["instances"][0]["prompt"]
            count = int(body.get("parameters", {}).get("sampleCount", 4))
            if not prompt or not 1 <= count <= 4:
                return Reply(400, gemini_error(400, "INVALID_ARGUMENT", "sampleCount must be 1-4"))
            return Reply(json={"predictions": [{"bytesBase64Encoded": png_base64(i), "mimeType": "image/png"}
                                               for i in range(count)]})
        return super().default(request)


# --------------------------------------------------------------------------- test helpers
class FakeClock:
    """Monotonic and wall clocks that ``sleep`` moves forward instantly (waits are recorded)."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return time.monotonic() + self.offset

    def wall(self) -> float:
        return time.time() + self.offset

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.offset += seconds

    def install(self, http: Any) -> Any:
        http.sleep, http.clock, http.wall_clock = self.sleep, self.now, self.wall
        return http


@contextmanager
def serving(fake_class: type, key_env: str, key: str, monkeypatch, caplog) -> Iterator[Any]:
    """A provider's fake, serving, with its key in the environment (so ``tools.secrets.redact`` knows it too) and
    every logger at DEBUG (urllib3 included): the tests then check that the key still shows nowhere."""
    monkeypatch.setenv(key_env, key)
    caplog.set_level(logging.DEBUG)
    with fake_class(key=key) as server:
        yield server


def fast_http(provider: str, key_env: str, key: str, *, read_timeout_s: float = 2.0, deadline_s: float = 600.0,
              clock: FakeClock | None = None):
    """An ``HttpClient`` whose waits take no time. Its read timeout, 2 s, is what a timeout test waits for real
    (a ``hold`` reply), and what a normal answer must come within on a loaded machine: at 0.2 s, a retry's answer
    sometimes came late on a test machine at load 27, and a second "read timeout" failed the test."""
    from tools.providers.http import HttpClient

    http = HttpClient(provider, key_env, secrets=[key], connect_timeout_s=1.0, read_timeout_s=read_timeout_s,
                      deadline_s=deadline_s)
    return (clock or FakeClock()).install(http)


def assert_secret_absent(secret: str, *, records: Any = (), folders: Any = (), texts: Any = ()) -> None:
    """The key value must not appear in any log record, any file under ``folders`` or any text."""
    needle = secret.encode("utf-8")
    for record in records:
        assert secret not in record.getMessage(), f"key leaked into log record from {record.name}"
        assert secret not in str(record.__dict__.get("exc_text") or "")
    for folder in folders:
        for path in Path(folder).rglob("*"):
            if path.is_file():
                assert needle not in path.read_bytes(), f"key leaked into {path}"
    for text in texts:
        assert secret not in str(text)
