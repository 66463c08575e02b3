"""A loopback fake of an OpenAI-compatible chat endpoint (Deepseek's shape), scripted by a queue.

Serves ``POST /v1/chat/completions`` and ``POST /chat/completions``, streaming (SSE chunks, then a usage
chunk, then ``data: [DONE]``) and non-streaming. Every request's path, headers and JSON body is recorded
for assertions. Replies are ``Reply`` objects (or callables ``body -> Reply``) taken from the queue in order.

    with FakeOpenAIServer() as server:
        server.enqueue(Reply.tools(("score_round", "{}")), Reply.text("done"))
        client = openai.OpenAI(api_key="sk-test", base_url=server.url)
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

# In a reply's text, reasoning or tool arguments, replaced by the bearer key the request came with:
# a misbehaving proxy or model echoing the caller's key.
BEARER_KEY = "{bearer_key}"
DEFAULT_USAGE = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}


@dataclass
class Reply:
    """One scripted answer. ``tool_calls`` are (name, raw argument string) pairs, sent verbatim."""

    content: str = ""
    tool_calls: list[tuple[str, str]] = field(default_factory=list)
    reasoning_content: str | None = None
    finish_reason: str | None = None  # None: "tool_calls" when there are tool calls, else "stop"
    usage: dict | None = field(default_factory=lambda: dict(DEFAULT_USAGE))
    status: int = 200
    error_message: str = ""
    keepalive_lines: int = 0  # blank lines / SSE comments sent before the answer (Deepseek under load)
    delay_s: float = 0.0  # sleep before answering (after keep-alives)

    @classmethod
    def text(cls, content: str, **kwargs: Any) -> "Reply":
        return cls(content=content, **kwargs)

    @classmethod
    def tools(cls, *calls: tuple[str, str], **kwargs: Any) -> "Reply":
        return cls(tool_calls=list(calls), **kwargs)

    @classmethod
    def error(cls, status: int, message: str) -> "Reply":
        return cls(status=status, error_message=message)


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict

    @property
    def messages(self) -> list[dict]:
        return self.body.get("messages", [])


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up (deadline tests, retries) is expected; don't print its traceback.
        pass


class FakeOpenAIServer:
    def __init__(self, replies: list[Reply] | None = None, default: Reply | None = None) -> None:
        self.queue: deque[Reply | Callable[[dict], Reply]] = deque(replies or [])
        self.default = default or Reply.text("(fake server: no scripted reply left)")
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._counter = 0
        self._httpd = _QuietServer(("127.0.0.1", 0), _make_handler(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    # --- lifecycle ---------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "FakeOpenAIServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- scripting -----------------------------------------------------------------
    def enqueue(self, *replies: Reply | Callable[[dict], Reply]) -> None:
        with self._lock:
            self.queue.extend(replies)

    def _next_reply(self, body: dict) -> tuple[Reply, int]:
        with self._lock:
            self._counter += 1
            item = self.queue.popleft() if self.queue else self.default
            number = self._counter
        reply = item(body) if callable(item) else item
        return reply, number

    def _record(self, path: str, headers: dict[str, str], body: dict) -> None:
        with self._lock:
            self.requests.append(RecordedRequest(path, headers, body))

    def tool_messages(self) -> list[dict]:
        """Every role="tool" message any request carried (later requests repeat earlier ones)."""
        return [m for request in self.requests for m in request.messages if m.get("role") == "tool"]


def _make_handler(server: FakeOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

        def do_POST(self) -> None:
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                return
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError:
                self._send_json(400, {"error": {"message": "request body is not JSON", "type": "invalid_request"}})
                return
            server._record(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            reply, number = server._next_reply(body)
            reply = _echo_bearer_key(reply, self.headers.get("Authorization", "").removeprefix("Bearer "))
            if reply.status != 200:
                self._send_json(reply.status, {"error": {"message": reply.error_message, "type": "fake_error",
                                                         "code": reply.status}})
                return
            model = body.get("model", "fake-model")
            if body.get("stream"):
                self._send_stream(reply, number, model, body)
            else:
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                self._send_json(200, _completion(reply, number, model))

        def _send_json(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def _send_stream(self, reply: Reply, number: int, model: str, body: dict) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for i in range(reply.keepalive_lines):
                    self._chunk(b"\n" if i % 2 == 0 else b": keep-alive\n\n")
                    time.sleep(0.05)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                for event in _stream_events(reply, number, model, include_usage):
                    self._chunk(f"data: {json.dumps(event)}\n\n".encode())
                self._chunk(b"data: [DONE]\n\n")
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (deadline tests)
                self.close_connection = True

    return Handler


def _echo_bearer_key(reply: Reply, key: str) -> Reply:
    def echo(text: str | None) -> str | None:
        return text.replace(BEARER_KEY, key) if text else text

    return dataclasses.replace(reply, content=echo(reply.content), reasoning_content=echo(reply.reasoning_content),
                               tool_calls=[(name, echo(args)) for name, args in reply.tool_calls])


def _finish_reason(reply: Reply) -> str:
    return reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")


def _completion(reply: Reply, number: int, model: str) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": reply.content or None}
    if reply.reasoning_content is not None:
        message["reasoning_content"] = reply.reasoning_content
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": f"call_{number}_{i}", "type": "function", "function": {"name": name, "arguments": args}}
            for i, (name, args) in enumerate(reply.tool_calls)]
    payload = {"id": f"chatcmpl-fake-{number}", "object": "chat.completion", "created": int(time.time()),
               "model": model, "choices": [{"index": 0, "message": message, "finish_reason": _finish_reason(reply)}]}
    if reply.usage:
        payload["usage"] = reply.usage
    return payload


def _pieces(text: str, size: int = 7) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def _stream_events(reply: Reply, number: int, model: str, include_usage: bool) -> list[dict]:
    base = {"id": f"chatcmpl-fake-{number}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model}

    def event(delta: dict, finish: str | None = None) -> dict:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    events = [event({"role": "assistant", "content": ""})]
    if reply.reasoning_content:
        events += [event({"reasoning_content": piece}) for piece in _pieces(reply.reasoning_content)]
    if reply.content:
        events += [event({"content": piece}) for piece in _pieces(reply.content)]
    for index, (name, args) in enumerate(reply.tool_calls):
        # First fragment names the call; the argument string then arrives in pieces, keyed by index only.
        events.append(event({"tool_calls": [{"index": index, "id": f"call_{number}_{index}", "type": "function",
                                             "function": {"name": name, "arguments": ""}}]}))
        events += [event({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
                   for piece in _pieces(args, 5) if piece]
    events.append(event({}, _finish_reason(reply)))
    if include_usage and reply.usage:
        events.append({**base, "choices": [], "usage": reply.usage})
    return events
