"""The function-calling loop: call the model → run its tool calls → append the results → repeat.

Small and visible on purpose (as smolagents / openai-agents): a step limit per turn, every tool
error fed back to the model as an observation (role "tool", same ``tool_call_id``), never a crash
and never a call with ``{}``; the same failing call three times ends the turn. Assistant messages
are appended whole — Deepseek's thinking mode rejects the next request when an assistant message
with tool calls comes back without its ``reasoning_content``.

Local servers answer tool calls in more shapes than ``tool_calls``: small models behind llama.cpp,
Ollama or LM Studio often write the call into the text — a JSON object ``{"name": ..., "arguments":
{...}}`` (bare, fenced, or a list of them) or Hermes/Qwen's ``<tool_call>…</tool_call>``.
``calls_in_content`` reads those as calls, so they run (or go back as tool errors) like any other.
Not every server reports token usage in a streamed answer: such requests are counted as
``Usage.unknown_requests`` and shown as unknown, never as a silent 0.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

from agent.llm.client import provider_error, thinking_extra_body
from agent.llm.toolspec import ToolArgumentError, ToolSpec, parse_json_arguments
from tools.errors import AldarError, ProviderError
from tools.secrets import StreamRedactor, redact, redact_value

if TYPE_CHECKING:  # the client hands over a loaded openai; the chat reaches its prompt without it
    import openai

log = logging.getLogger(__name__)

REPEATED_FAILURE_LIMIT = 3
MAX_RESULT_CHARS = 8000  # a tool result bigger than this is cut: it would crowd the context window


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    requests: int = 0
    unknown_requests: int = 0  # answers that carried no token usage (some local servers send none)

    def add(self, other: "Usage | Any") -> None:
        self.prompt_tokens += int(getattr(other, "prompt_tokens", 0) or 0)
        self.completion_tokens += int(getattr(other, "completion_tokens", 0) or 0)
        self.total_tokens += int(getattr(other, "total_tokens", 0) or 0)
        self.requests += int(getattr(other, "requests", 0) or 0)
        self.unknown_requests += int(getattr(other, "unknown_requests", 0) or 0)

    def as_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens, "requests": self.requests,
                "unknown_requests": self.unknown_requests}

    @property
    def all_unknown(self) -> bool:
        """No answer carried token usage (a server that reports none)."""
        return bool(self.requests) and self.unknown_requests == self.requests

    def total_text(self) -> str:
        """The total as shown: '1,234'; 'unknown' when the server reported no usage; '1,234 + unknown' partly."""
        if self.all_unknown:
            return "unknown"
        return f"{self.total_tokens:,}" + (" + unknown" if self.unknown_requests else "")

    def describe(self) -> str:
        """'1,234 tokens (1,000 in, 234 out, 3 requests)', saying where the server reported no usage."""
        if self.all_unknown:
            return f"tokens unknown (the server reported no usage; {self.requests} requests)"
        text = (f"{self.total_tokens:,} tokens ({self.prompt_tokens:,} in, {self.completion_tokens:,} out, "
                f"{self.requests} requests)")
        if self.unknown_requests:
            text += f"; {self.unknown_requests} request(s) whose usage the server did not report"
        return text


@dataclass
class ToolCallRecord:
    id: str
    name: str
    arguments: str  # the raw string the model sent
    ok: bool
    result: str  # what went back to the model
    value: Any = None  # the tool's return value (when ok)


@dataclass
class TurnResult:
    text: str
    stop_reason: str  # "answer" | "terminal_tool" | "step_limit" | "repeated_failure"
    steps: int
    usage: Usage
    tool_calls: list[ToolCallRecord] = field(default_factory=list)

    @property
    def terminal(self) -> ToolCallRecord | None:
        return self.tool_calls[-1] if self.stop_reason == "terminal_tool" else None


@dataclass
class LoopEvents:
    """Hooks for rendering; every one is optional."""

    on_text: Callable[[str], None] | None = None  # streamed answer text, piece by piece
    on_reasoning: Callable[[str], None] | None = None
    on_tool_start: Callable[[str, str], None] | None = None  # (name, raw arguments)
    on_tool_end: Callable[[ToolCallRecord], None] | None = None
    on_step_start: Callable[[int], None] | None = None


class ChatLoop:
    """One conversation with the model over a fixed set of tools."""

    def __init__(self, client: openai.OpenAI, model: str, tools: Iterable[ToolSpec], *, system_prompt: str = "",
                 max_steps: int = 12, thinking: bool = True, stream: bool = True,
                 events: LoopEvents | None = None, terminal_tools: Iterable[str] = (), max_tokens: int = 0) -> None:
        self.client, self.model = client, model
        self.tools = {spec.name: spec for spec in tools}
        self.max_steps = max_steps
        self.max_tokens = max_tokens  # per answer; 0 leaves it to the server
        self.stream = stream
        self.stream_usage = True  # ask for usage in streamed answers until the server refuses stream_options
        self.events = events or LoopEvents()
        self.terminal_tools = set(terminal_tools)
        self.extra_body = thinking_extra_body(str(client.base_url), thinking)
        self.messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}] if system_prompt else []
        self.usage = Usage()  # whole session

    # ------------------------------------------------------------------ the loop
    def run_turn(self, user_message: str, tool_choice: str | dict | None = None) -> TurnResult:
        """Answer one user message, calling tools as the model asks, up to ``max_steps`` model calls.

        An API failure raises ProviderError (one clear line); on the first step the conversation is left
        as it was before the turn, later the finished tool calls stay (with their results); Ctrl-C (KeyboardInterrupt) answers pending tool calls with "cancelled" and
        propagates, so the next turn starts from a valid conversation.
        """
        import openai  # for its error classes; loaded by the first turn, not by the chat's start

        start = len(self.messages)
        self.messages.append({"role": "user", "content": user_message})
        turn_usage = Usage()
        records: list[ToolCallRecord] = []
        failures: dict[tuple[str, str], int] = {}
        for step in range(1, self.max_steps + 1):
            if self.events.on_step_start:
                self.events.on_step_start(step)
            try:
                message, usage = self._complete(tool_choice if step == 1 else None)
            except (openai.OpenAIError, OSError) as exc:
                if len(self.messages) == start + 1:  # nothing happened yet: forget the question too
                    del self.messages[start:]
                raise self._error(exc) from None  # later steps keep their answered tool calls: still valid
            except KeyboardInterrupt:
                if len(self.messages) == start + 1:  # nothing happened yet: forget the question too
                    del self.messages[start:]
                raise
            turn_usage.add(usage)
            self.usage.add(usage)
            self.messages.append(message)
            calls = message.get("tool_calls") or []
            if not calls and self.tools:
                calls = calls_in_content(message.get("content") or "")
                if calls:  # the call ran from the text: the history must say so, or its result has no call
                    message["tool_calls"] = calls
            if not calls:
                return TurnResult(message.get("content") or "", "answer", step, turn_usage, records)
            for index, call in enumerate(calls):
                try:
                    record = self._run_tool_call(call)
                except KeyboardInterrupt:
                    for pending in calls[index:]:
                        self._append_tool_result(pending["id"], {"ok": False, "error": "cancelled by the user (Ctrl-C)"})
                    raise
                records.append(record)
                if record.ok and record.name in self.terminal_tools:
                    for pending in calls[index + 1:]:
                        self._append_tool_result(pending["id"], {"ok": False, "error": "skipped: the decision was made"})
                    return TurnResult(message.get("content") or "", "terminal_tool", step, turn_usage, records)
                if not record.ok:
                    key = (record.name, _canonical_arguments(record.arguments))
                    failures[key] = failures.get(key, 0) + 1
                    if failures[key] >= REPEATED_FAILURE_LIMIT:
                        for pending in calls[index + 1:]:
                            self._append_tool_result(pending["id"], {"ok": False, "error": "skipped: turn stopped"})
                        text = (f"I stopped: the call {record.name}({_short(record.arguments)}) failed "
                                f"{REPEATED_FAILURE_LIMIT} times in a row with the same arguments. "
                                f"Last error: {_error_text(record.result)}")
                        return TurnResult(text, "repeated_failure", step, turn_usage, records)
        text = (f"I stopped after {self.max_steps} model calls (llm_max_steps) without a final answer; "
                f"ask again to continue, or raise llm_max_steps in aldar.toml.")
        return TurnResult(text, "step_limit", self.max_steps, turn_usage, records)

    # ------------------------------------------------------------------ model calls
    def _request(self, tool_choice: str | dict | None) -> dict[str, Any]:
        request: dict[str, Any] = {"model": self.model, "messages": self.messages}
        if self.tools:
            request["tools"] = [spec.openai_schema() for spec in self.tools.values()]
            if tool_choice is not None:
                request["tool_choice"] = tool_choice
        if self.max_tokens:
            request["max_tokens"] = self.max_tokens
        if self.extra_body:
            request["extra_body"] = self.extra_body
        return request

    def _complete(self, tool_choice: str | dict | None) -> tuple[dict[str, Any], Usage]:
        """The model's next message, scrubbed of keys before anything (a tool, the history, a file) sees it:
        a misbehaving proxy or model can echo the key it was called with."""
        message, usage = self._receive(self._request(tool_choice))
        return redact_value(message, [getattr(self.client, "api_key", None)]), usage

    def _receive(self, request: dict[str, Any]) -> tuple[dict[str, Any], Usage]:
        if not self.stream:
            response = self.client.chat.completions.create(**request)
            return _message_from_response(response), _usage_of(getattr(response, "usage", None))
        stream = self._open_stream(request)
        content: list[str] = []
        reasoning: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        usage = Usage(requests=1, unknown_requests=1)
        # The pieces are shown as they arrive: a key the model echoes must not appear even in part.
        key = [getattr(self.client, "api_key", None)]
        shown_text, shown_reasoning = StreamRedactor(key), StreamRedactor(key)
        try:
            for chunk in stream:
                if getattr(chunk, "usage", None):
                    usage = _usage_of(chunk.usage)
                for choice in chunk.choices or []:
                    delta = choice.delta
                    if delta is None:
                        continue
                    thought = _extra(delta, "reasoning_content")
                    if thought:
                        reasoning.append(thought)
                        _emit(self.events.on_reasoning, shown_reasoning.feed(thought))
                    if delta.content:
                        content.append(delta.content)
                        _emit(self.events.on_text, shown_text.feed(delta.content))
                    for fragment in delta.tool_calls or []:
                        _merge_tool_fragment(calls, fragment)
        finally:
            stream.close()
        _emit(self.events.on_reasoning, shown_reasoning.flush())
        _emit(self.events.on_text, shown_text.flush())
        return _assistant_message("".join(content), "".join(reasoning), calls), usage

    def _open_stream(self, request: dict[str, Any]) -> Any:
        """A streamed answer, asking for its token usage where the server takes ``stream_options``: a server
        that refuses the field (400 naming it) is asked once more without it, and from then on never."""
        import openai

        if self.stream_usage:
            try:
                return self.client.chat.completions.create(**request, stream=True,
                                                           stream_options={"include_usage": True})
            except openai.BadRequestError as exc:
                if "stream_options" not in str(exc):
                    raise
                self.stream_usage = False
        return self.client.chat.completions.create(**request, stream=True)

    def _error(self, exc: BaseException) -> ProviderError:
        return provider_error(exc, client_timeout_s(self.client))

    # ------------------------------------------------------------------ tools
    def _run_tool_call(self, call: dict[str, Any]) -> ToolCallRecord:
        name = call["function"]["name"]
        raw = call["function"].get("arguments") or ""
        if self.events.on_tool_start:
            self.events.on_tool_start(name, raw)
        spec = self.tools.get(name)
        value: Any = None
        if spec is None:
            payload = {"ok": False, "error": f"unknown tool {name!r}; available tools: {', '.join(self.tools)}"}
        else:
            try:
                arguments = spec.parse_arguments(raw)
                value = spec(**arguments)
                payload = value if isinstance(value, dict) and "ok" in value else {"ok": True, "result": value}
            except ToolArgumentError as exc:
                payload = {"ok": False, "error": f"{exc}. Fix the arguments and call {name} again."}
            except AldarError as exc:
                payload = {"ok": False, "error": str(exc)}
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # a tool bug must not end the chat; the model and the log both see it
                log.warning("tool %s failed", name, exc_info=True)
                payload = {"ok": False, "error": f"{name} failed: {type(exc).__name__}: {exc}"}
        content = self._append_tool_result(call["id"], payload)
        record = ToolCallRecord(call["id"], name, raw, bool(payload.get("ok")), content, value)
        if self.events.on_tool_end:
            self.events.on_tool_end(record)
        return record

    def _append_tool_result(self, call_id: str, payload: Any) -> str:
        content = compact_json(payload)
        self.messages.append({"role": "tool", "tool_call_id": call_id, "content": content})
        return content

    # ------------------------------------------------------------------ transcript
    def transcript(self) -> dict[str, Any]:
        """The conversation and token usage, keys scrubbed, for saving next to the results."""
        return json.loads(redact(json.dumps({"model": self.model, "usage": self.usage.as_dict(),
                                             "messages": self.messages}, ensure_ascii=False)))


def client_timeout_s(client: Any) -> float:
    """The client's read deadline in seconds (0 when it has none): the loop knows the client, not the settings."""
    timeout = getattr(client, "timeout", None)
    seconds = getattr(timeout, "read", None) if timeout is not None and not isinstance(timeout, (int, float)) else timeout
    return float(seconds or 0) or 0.0


def compact_json(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    text = redact(text)
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + f"...[cut: {len(text) - MAX_RESULT_CHARS} more characters]"
    return text


def _emit(hook: Callable[[str], None] | None, text: str) -> None:
    if hook and text:
        hook(text)


def _extra(obj: Any, name: str) -> Any:
    value = getattr(obj, name, None)
    if value is None:
        value = (getattr(obj, "model_extra", None) or {}).get(name)
    return value


def _merge_tool_fragment(calls: dict[int, dict[str, str]], fragment: Any) -> None:
    """Streamed tool calls arrive in pieces keyed by index: the id and name first, then argument text."""
    index = getattr(fragment, "index", None)
    index = len(calls) if index is None else index
    slot = calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
    if fragment.id:
        slot["id"] = fragment.id
    function = fragment.function
    if function is not None:
        if function.name and function.name != slot["name"]:
            slot["name"] += function.name
        if function.arguments:
            slot["arguments"] += _argument_text(function.arguments)


def _argument_text(arguments: Any) -> str:
    """Arguments as the JSON text the tools parse: some servers send an object instead of a string."""
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def _assistant_message(content: str, reasoning: str, calls: dict[int, dict[str, str]]) -> dict[str, Any]:
    # "" rather than null beside tool calls: llama.cpp's Python server (llama-cpp-python 0.3) refuses a null
    # assistant content with a 500, and the OpenAI API and Deepseek take either.
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = [
            {"id": slot["id"] or f"call_{index}", "type": "function",
             "function": {"name": slot["name"], "arguments": slot["arguments"]}}
            for index, slot in sorted(calls.items())]
    return message


def _message_from_response(response: Any) -> dict[str, Any]:
    message = response.choices[0].message
    calls = {i: {"id": c.id or "", "name": c.function.name or "", "arguments": _argument_text(c.function.arguments or "")}
             for i, c in enumerate(message.tool_calls or [])}
    return _assistant_message(message.content or "", _extra(message, "reasoning_content") or "", calls)


def _usage_of(raw: Any) -> Usage:
    usage = Usage(requests=1, unknown_requests=1 if raw is None else 0)
    if raw is not None:
        usage.prompt_tokens = int(getattr(raw, "prompt_tokens", 0) or 0)
        usage.completion_tokens = int(getattr(raw, "completion_tokens", 0) or 0)
        usage.total_tokens = int(getattr(raw, "total_tokens", 0) or 0)
    return usage


_TAGGED_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def calls_in_content(text: str) -> list[dict[str, Any]]:
    """Tool calls a model wrote into its answer text instead of ``tool_calls``: ``<tool_call>{...}</tool_call>``
    (Hermes, Qwen), or JSON objects naming a tool — ``{"name": ..., "arguments": {...}}`` (``parameters`` too,
    or wrapped as ``{"function": {...}}``), bare, in a code fence or a list. Nothing else in the text is read
    as a call: an answer that merely mentions a tool stays an answer."""
    tagged = _TAGGED_CALL.findall(text)
    candidates: list[Any] = []
    for chunk in tagged or [text]:
        candidates.extend(_json_values(chunk))
    calls: list[dict[str, Any]] = []
    for value in candidates:
        for item in value if isinstance(value, list) else [value]:
            call = _as_call(item)
            if call is not None:
                calls.append({"id": f"call_text_{len(calls)}", "type": "function", "function": call})
    return calls


def _json_values(text: str) -> list[Any]:
    """Every top-level JSON object or list in ``text`` (prose and code fences around them are skipped)."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    position = 0
    while True:
        starts = [i for i in (text.find("{", position), text.find("[", position)) if i >= 0]
        if not starts:
            return values
        start = min(starts)
        try:
            value, end = decoder.raw_decode(text, start)
        except (json.JSONDecodeError, RecursionError):
            position = start + 1
            continue
        values.append(value)
        position = end


def _as_call(item: Any) -> dict[str, str] | None:
    if isinstance(item, dict) and isinstance(item.get("function"), dict):
        item = item["function"]
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        return None
    arguments = item.get("arguments", item.get("parameters"))
    if arguments is None:
        return None  # some other object that happens to have a name
    return {"name": item["name"], "arguments": _argument_text(arguments)}


def _canonical_arguments(raw: str) -> str:
    """The arguments in one spelling, so the same failing call is recognised; unparsable ones as sent."""
    try:
        return json.dumps(parse_json_arguments(raw or ""), sort_keys=True)
    except ToolArgumentError:
        return (raw or "").strip()


def _short(text: str, limit: int = 80) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _error_text(content: str) -> str:
    try:
        return str(json.loads(content).get("error", content))
    except (json.JSONDecodeError, AttributeError):
        return content
