"""The OpenAI-compatible chat client: Deepseek by default, any local server (llama.cpp, Ollama, LM Studio, vLLM) otherwise.

Which endpoint: ``DEEPSEEK_API_KEY`` → ``settings.llm_base_url`` (https://api.deepseek.com) and
``settings.llm_model``; else ``OPENAI_API_KEY`` with ``OPENAI_BASE_URL`` (and ``OPENAI_MODEL`` if set);
else, with no key at all, a server on this machine (``llm_base_url`` or ``OPENAI_BASE_URL`` on a loopback
host): local servers take no key, but the openai client refuses to start without one, so it gets
``LOCAL_PLACEHOLDER_KEY`` — no secret ever goes there.
``settings.llm_timeout_s`` is a *total* deadline per request: Deepseek keeps a busy connection open
with blank keep-alive lines for minutes, which resets an ordinary read timeout forever
(``agent.llm.transport``). openai and httpx2 load with the first client, not with this module.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from tools.errors import ConfigError, ProviderError
from tools.secrets import api_key, mask, redact
from tools.settings import Settings
from tools.urls import check_key_url, url_is_loopback

DEEPSEEK_DEFAULT_URL = "https://api.deepseek.com"
OPENAI_DEFAULT_URL = "https://api.openai.com/v1"
# One retry covers a dropped connection or a 429/5xx blip; more would multiply the deadline.
MAX_RETRIES = 1
KEY_HELP = ("set DEEPSEEK_API_KEY (Deepseek), or OPENAI_API_KEY plus OPENAI_BASE_URL for an OpenAI-compatible "
            "server, in the environment or in .env; a server on this machine needs no key: "
            "--llm-base-url http://127.0.0.1:8080/v1 --llm-model NAME")
# What the openai client is given for a keyless local server (it will not start with an empty key).
LOCAL_PLACEHOLDER_KEY = "no-key-local-server"

if TYPE_CHECKING:  # the client libraries load with the first client: the chat reaches its prompt without them
    import openai


def resolve_endpoint(settings: Settings) -> tuple[str, str, str, str]:
    """(key env name, key value, base URL, model) of the configured endpoint; ConfigError when no key."""
    deepseek_key = api_key("DEEPSEEK_API_KEY")
    if deepseek_key:
        return "DEEPSEEK_API_KEY", deepseek_key, settings.llm_base_url or DEEPSEEK_DEFAULT_URL, settings.llm_model
    openai_key = api_key("OPENAI_API_KEY")
    if openai_key:
        configured = settings.llm_base_url if settings.llm_base_url != DEEPSEEK_DEFAULT_URL else ""
        base_url = os.environ.get("OPENAI_BASE_URL", "").strip() or configured or OPENAI_DEFAULT_URL
        model = os.environ.get("OPENAI_MODEL", "").strip() or settings.llm_model
        return "OPENAI_API_KEY", openai_key, base_url, model
    local_url = os.environ.get("OPENAI_BASE_URL", "").strip() or settings.llm_base_url
    if url_is_loopback(local_url):
        model = os.environ.get("OPENAI_MODEL", "").strip() or settings.llm_model
        return "", LOCAL_PLACEHOLDER_KEY, local_url, model
    raise ConfigError("no LLM API key is set", KEY_HELP)


def llm_configured(settings: Settings) -> bool:
    """Whether an LLM can be asked: a key is set, or the endpoint is a keyless local server."""
    try:
        resolve_endpoint(settings)
    except ConfigError:
        return False
    return True


def make_client(settings: Settings) -> tuple[openai.OpenAI, str]:
    """An ``openai.OpenAI`` client for the configured endpoint, and the model name to ask for."""
    _, key, base_url, model = resolve_endpoint(settings)  # no key: one line, before the libraries load
    check_key_url(base_url, "the LLM base URL (llm_base_url / ALDAR_LLM_BASE_URL, or OPENAI_BASE_URL)")
    import httpx2
    import openai

    from agent.llm.transport import DeadlineTransport

    budget = float(settings.llm_timeout_s)
    http_client = httpx2.Client(transport=DeadlineTransport(budget), timeout=httpx2.Timeout(budget),
                                follow_redirects=True)
    client = openai.OpenAI(api_key=key, base_url=base_url, timeout=budget, max_retries=MAX_RETRIES,
                           http_client=http_client)
    return client, model


def is_deepseek(base_url: str) -> bool:
    host = urlparse(base_url).hostname or ""
    return host == "deepseek.com" or host.endswith(".deepseek.com")


def thinking_extra_body(base_url: str, thinking: bool) -> dict | None:
    """Deepseek's thinking switch; other servers would reject the unknown field, so send nothing there."""
    if not is_deepseek(base_url):
        return None
    return {"thinking": {"type": "enabled" if thinking else "disabled"}}


def describe_endpoint(settings: Settings) -> str:
    """One line for /config and /doctor: model, URL, which key (masked)."""
    try:
        env_name, key, base_url, model = resolve_endpoint(settings)
    except ConfigError:
        return f"not configured — {KEY_HELP}"
    return f"{model} at {base_url} ({f'{env_name} {mask(key)}' if env_name else 'local server, no key'})"


class ToolsUnsupportedError(ProviderError):
    """The server refused the request because of its tools: it (or its chat template) has no tool calling."""


TOOLS_HELP = ("serve a model with tool calling (llama.cpp: --chat_format chatml-function-calling; Ollama: a model "
              "tagged 'tools'; LM Studio/vLLM: tool use enabled), or decide with the rule policy (--no-llm)")
# Servers without tool calling answer a request with tools 400 (llama.cpp, vLLM), 422 (schema
# validation) or 500 (a chat template that cannot render them), with the word in the message.
_TOOL_REFUSAL_STATUS = (400, 422, 500, 501)
_TOOL_WORDS = ("tool", "function call", "function_call")


def refuses_tools(exc: BaseException) -> bool:
    """Whether an API error says the server does not take the request's tools."""
    import openai

    if not isinstance(exc, openai.APIStatusError) or exc.status_code not in _TOOL_REFUSAL_STATUS:
        return False
    detail = _server_message(exc).lower() or str(exc).lower()
    return any(word in detail for word in _TOOL_WORDS)


def provider_error(exc: BaseException, timeout_s: float) -> ProviderError:
    """An API failure as one typed error: what happened (``problem``) and what to do (``fix``); never a
    traceback, never a key. ``timeout_s``: the client's deadline, named when it ran out. A tool refusal is a
    ``ToolsUnsupportedError``."""
    import httpx2
    import openai

    if isinstance(exc, (openai.APITimeoutError, httpx2.TimeoutException)):
        return ProviderError(f"the LLM did not answer within llm_timeout_s = {timeout_s:g} s",
                             "retry, or raise llm_timeout_s in aldar.toml")
    if isinstance(exc, openai.APIStatusError):
        status, detail = exc.status_code, redact(_server_message(exc))
        said = f"{status}{': ' + detail if detail else ''}"
        if refuses_tools(exc):
            return ToolsUnsupportedError(f"the LLM server does not take tools ({said})", TOOLS_HELP)
        if status == 401:
            return ProviderError("the LLM endpoint rejected the API key (401)",
                                 "check DEEPSEEK_API_KEY / OPENAI_API_KEY in .env")
        if status == 402:
            return ProviderError("the LLM account has insufficient balance (402)",
                                 "top it up, or point OPENAI_API_KEY + OPENAI_BASE_URL at a local server; slash "
                                 "commands keep working without an LLM")
        if status == 429:
            return ProviderError("the LLM endpoint is rate limiting requests (429)", "wait a minute and retry")
        if status >= 500:
            return ProviderError(f"the LLM server failed ({said})", "retry in a while")
        return ProviderError(f"the LLM endpoint refused the request ({said})")
    if isinstance(exc, (openai.APIConnectionError, httpx2.TransportError)):
        return ProviderError("cannot reach the LLM endpoint", "check the network, llm_base_url or OPENAI_BASE_URL")
    return ProviderError(redact(f"the LLM call failed ({type(exc).__name__}: {exc})"[:300]))


def _server_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        if message:
            return " ".join(str(message).split())[:200]
    return ""
