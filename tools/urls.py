"""Where an API key may be sent: over TLS, or in plain HTTP to this machine only.

A base URL is a setting (``deepai_base_url``, ``llm_base_url``, ``OPENAI_BASE_URL``...) so that a proxy, a
local LLM server or a test fake can stand in for the real service. Over plain ``http://`` to any other host
the key would cross the network in clear text (``http://169.254.169.254`` is a cloud metadata service);
credentials inside the URL would land in logs and errors. Both are refused before anything connects.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from tools.errors import InsecureUrlError

LOOPBACK_NAMES = ("localhost",)
FIX = ("use an https:// URL; plain http:// only to this machine (localhost, 127.0.0.1, ::1), "
       "e.g. a local LLM server or a proxy listening there")


def key_url_problem(url: str) -> str:
    """Why a key must not be sent to ``url`` ('' when it may)."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
        _ = parts.port  # a malformed port raises here
    except ValueError as exc:
        return f"it is not a valid URL ({exc})"
    if parts.username is not None or parts.password is not None:
        return "it holds credentials (user:password@); keys go in .env, never in a URL"
    if not host:
        return "it names no host"
    if parts.scheme == "https":
        return ""
    if parts.scheme == "http":
        return "" if is_loopback(host) else "an API key would travel over plain http to another machine"
    return f"its scheme {parts.scheme or '(none)'!r} is neither https nor http"


def url_is_loopback(url: str) -> bool:
    """True for a URL on this machine: a local server (an LLM on loopback needs no key)."""
    try:
        return is_loopback(urlsplit(url.strip()).hostname or "")
    except ValueError:
        return False


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback  # 127.0.0.0/8 and ::1
    except ValueError:
        return False


def shown_url(url: str) -> str:
    """``url`` without any ``user:password@`` part, for messages."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return "(unparseable URL)"
    netloc = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=netloc).geturl()


def check_key_url(url: str, setting: str) -> None:
    """Raise ``InsecureUrlError`` naming ``setting`` when a key must not be sent to ``url``."""
    problem = key_url_problem(url)
    if problem:
        raise InsecureUrlError(f"{setting} is {shown_url(url)}: {problem}", FIX)
