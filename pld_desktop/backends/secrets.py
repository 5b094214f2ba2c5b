"""API key lookup (environment, then the OS keychain) and redaction of keys from any text we show or log."""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import re
import threading
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

import keyring
import keyring.errors

log = logging.getLogger(__name__)

KEYRING_SERVICE = "pld-desktop"
REDACTED = "***"


class SecretStoreError(RuntimeError):
    """The OS keychain is missing or refused the operation. The message never contains the key."""


@dataclass(frozen=True)
class _ServiceKey:
    env_vars: tuple[str, ...]
    keyring_user: str


_SERVICES: dict[str, _ServiceKey] = {
    "gemini": _ServiceKey(env_vars=("GEMINI_API_KEY", "GOOGLE_API_KEY"), keyring_user="gemini-api-key"),
    "openai": _ServiceKey(env_vars=("OPENAI_API_KEY",), keyring_user="openai-api-key"),
    "huggingface": _ServiceKey(env_vars=("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"), keyring_user="huggingface-token"),
}

def server_origin(url: str | None) -> str | None:
    """`scheme://host:port` of a server URL (the default port written out), or None for no URL: the identity a
    stored key is bound to, so a key saved for one server is never sent to another."""
    from urllib.parse import urlsplit
    text = (url or "").strip()
    if not text:
        return None
    parts = urlsplit(text if "://" in text else f"http://{text}")
    scheme = (parts.scheme or "http").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    host = (parts.hostname or "").lower()
    return f"{scheme}://{host}:{port or (443 if scheme == 'https' else 80)}" if host else None


def _keyring_user(spec: _ServiceKey, server: str | None) -> str:
    # A key for a server (OpenAI-compatible endpoints) is one keychain entry per server origin.
    return spec.keyring_user if server is None else f"{spec.keyring_user}@{server}"


def _no_keychain(spec: _ServiceKey) -> str:
    return f"No OS keychain is available; set {spec.env_vars[0]} instead"


def _service(service: str) -> _ServiceKey:
    try:
        return _SERVICES[service]
    except KeyError:
        raise ValueError(f"unknown secret service {service!r}; known: {sorted(_SERVICES)}") from None


def _from_env(spec: _ServiceKey) -> tuple[str, str] | None:
    for name in spec.env_vars:
        value = os.environ.get(name, "").strip()
        if value:
            return value, name
    return None


def _from_keyring(spec: _ServiceKey, server: str | None = None) -> str | None:
    try:
        value = keyring.get_password(KEYRING_SERVICE, _keyring_user(spec, server))
    except Exception as exc:
        log.debug("OS keychain unavailable for lookup: %s", type(exc).__name__)
        return None
    value = (value or "").strip()
    return value or None


def get_api_key(service: str = "gemini", server: str | None = None) -> str | None:
    """The key from the service's environment variables (GEMINI_API_KEY, then GOOGLE_API_KEY, ...), then the OS
    keychain; None when none is set. With `server` (a URL or origin) only the keychain entry saved for that
    server is read: a key stored for one server never goes to another."""
    spec = _service(service)
    found = _from_env(spec)
    if found is not None:
        return found[0]
    return _from_keyring(spec, server_origin(server))


def api_key_source(service: str = "gemini", server: str | None = None) -> str | None:
    """Where `get_api_key` would find the key ("environment variable GEMINI_API_KEY", "OS keychain"), or None."""
    spec = _service(service)
    found = _from_env(spec)
    if found is not None:
        return f"environment variable {found[1]}"
    return "OS keychain" if _from_keyring(spec, server_origin(server)) is not None else None


def set_api_key(key: str, service: str = "gemini", server: str | None = None) -> None:
    """Store the key in the OS keychain (for `server` only, when given); raises SecretStoreError when there is
    no usable keychain."""
    spec = _service(service)
    key = key.strip()
    if not key:
        raise ValueError("the API key is empty")
    try:
        keyring.set_password(KEYRING_SERVICE, _keyring_user(spec, server_origin(server)), key)
    except keyring.errors.NoKeyringError:
        raise SecretStoreError(_no_keychain(spec)) from None
    except Exception as exc:
        detail = redact(str(exc), [key])
        raise SecretStoreError(
            f"Could not store the API key in the OS keychain ({type(exc).__name__}: {detail}); "
            f"set {spec.env_vars[0]} instead") from None


def delete_api_key(service: str = "gemini", server: str | None = None) -> None:
    """Remove the stored key from the OS keychain; a no-op when nothing is stored or there is no keychain."""
    spec = _service(service)
    try:
        keyring.delete_password(KEYRING_SERVICE, _keyring_user(spec, server_origin(server)))
    except (keyring.errors.PasswordDeleteError, keyring.errors.NoKeyringError):
        return
    except Exception as exc:
        raise SecretStoreError(
            f"Could not remove the API key from the OS keychain ({type(exc).__name__})") from None


# `key=...` in URLs and `x-goog-api-key: ...` / `"x-goog-api-key": "..."` in headers, dict reprs or JSON.
_QUERY_KEY = re.compile(r"([?&](?:api_?)?key=)[^&#\s'\"]+", re.IGNORECASE)
_HEADER_KEY = re.compile(r"(x-goog-api-key['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+", re.IGNORECASE)
_BEARER = re.compile(r"(bearer\s+)[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)
# Shorter strings are not keys and replacing them would garble unrelated text.
_MIN_SECRET_LEN = 4
# A leaked run of this many consecutive characters of a key (or of one of its encodings, scaled) is redacted,
# so a key minus its last characters, or a fragment of it, goes too; a random key shares no such run with text.
_FRAGMENT_CHARS = 12


def _fragment_len(secret: str) -> int:
    if len(secret) < 8:
        return len(secret)
    return min(_FRAGMENT_CHARS, len(secret) - 2)


def _encoded_forms(secret: str) -> list[tuple[str, int]]:
    """(form, window) pairs: every way a server might echo `secret`, with the length of the shortest run of
    that form that gives away a fragment of the key. Matching is case-insensitive (lower-cased key, hex)."""
    raw = secret.encode("utf-8")
    k = _fragment_len(secret)
    forms = [(secret, k), (json.dumps(secret)[1:-1], k),
             (urllib.parse.quote(secret, safe=""), k), (urllib.parse.quote_plus(secret), k),
             ("".join(f"%{b:02X}" for b in raw), 3 * k),  # percent-encoded byte by byte
             (raw.hex(), 2 * k)]
    for shift in range(3):
        # base64 of the key at any offset in a longer text: the characters that do not depend on neighbours.
        start = (shift * 4 + 2) // 3
        for enc in (base64.b64encode(b"\0" * shift + raw), base64.urlsafe_b64encode(b"\0" * shift + raw)):
            core = enc.decode("ascii").rstrip("=")[start:-1]
            forms.append((core, (4 * k + 2) // 3))
    return [(form, min(window, len(form))) for form, window in forms if len(form) >= _MIN_SECRET_LEN]


@functools.lru_cache(maxsize=32)
def _secret_pattern(secrets: frozenset[str]) -> re.Pattern[str] | None:
    """One regex finding, at every start position (a lookahead, so matches overlap), any window of any form."""
    windows: set[str] = set()
    for secret in secrets:
        for form, window in _encoded_forms(secret):
            windows.update(form[i:i + window] for i in range(len(form) - window + 1))
    if not windows:
        return None
    alternatives = "|".join(re.escape(w) for w in sorted(windows, key=len, reverse=True))
    return re.compile(f"(?=({alternatives}))", re.IGNORECASE)


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """Replace every known secret (the given ones and every key this process uses) in `text` with ***: plain,
    any case, URL- or percent-encoded, hex, base64, JSON-escaped, or any run of 12 of its characters (so a key
    minus its last character too); and every `key=` query value, `x-goog-api-key` header and bearer token."""
    known = frozenset(s for s in (*secrets, *tuple(_log_secrets)) if s and len(s) >= _MIN_SECRET_LEN)
    pattern = _secret_pattern(known) if known else None
    if pattern is not None and text:
        spans: list[list[int]] = []
        for match in pattern.finditer(text):
            start, end = match.start(1), match.end(1)
            if spans and start <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], end)
            else:
                spans.append([start, end])
        for start, end in reversed(spans):
            text = text[:start] + REDACTED + text[end:]
    text = _QUERY_KEY.sub(lambda m: m.group(1) + REDACTED, text)
    text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    return _HEADER_KEY.sub(lambda m: m.group(1) + REDACTED, text)


# Loggers of the HTTP stack that may print server replies or URLs (the SDK logs the error body before a retry).
_THIRD_PARTY_LOGGERS = ("google_genai._api_client", "google_genai.models", "google_genai._common",
                        "google_genai.types", "google_genai.batches", "google_genai.files", "httpx2", "httpx")
_log_secrets: set[str] = set()
_log_filter_lock = threading.Lock()
_log_filter_installed = False


class _RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _log_secrets:
            message = record.getMessage()
            cleaned = redact(message, _log_secrets)
            if cleaned != message:
                record.msg, record.args = cleaned, None
        return True


def protect_in_logs(secret: str) -> None:
    """Redact `secret` from whatever our HTTP stack logs, from now on (the SDK, httpx2, this package)."""
    global _log_filter_installed
    with _log_filter_lock:
        if secret and len(secret) >= _MIN_SECRET_LEN:
            _log_secrets.add(secret)
        if not _log_filter_installed:
            redacting = _RedactingFilter()
            for name in (*_THIRD_PARTY_LOGGERS, "pld_desktop.backends.gemini_teacher"):
                logging.getLogger(name).addFilter(redacting)
            _log_filter_installed = True
