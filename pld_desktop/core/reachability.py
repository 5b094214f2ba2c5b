"""One cheap reachability check of a remote teacher before a phase spends minutes failing item by item.

A TCP connect with a short timeout (no request is sent, so no key and no data leave): a refused connection, an
unknown host or a timeout is reported with the host, port and error before any item is attempted.
"""

from __future__ import annotations

import socket
import urllib.request
from urllib.parse import urlparse

from .settings import RunSettings

GEMINI_ENDPOINT = "https://generativelanguage.googleapis.com/"
PROBE_TIMEOUT_S = 5.0


class TeacherUnreachable(Exception):
    """The teacher's server cannot be reached; the message names the host, port and the error."""


def teacher_endpoint(settings: RunSettings) -> str | None:
    """The URL a remote teacher will call, or None for a teacher in this process."""
    if settings.teacher == "gemini":
        return settings.teacher_base_url or GEMINI_ENDPOINT
    if settings.teacher == "openai":
        return settings.teacher_openai_base_url
    return None


def _through_proxy(url: str) -> bool:
    # Behind a proxy the direct connect below says nothing about the real path (the client goes through the
    # proxy), so the check is left to the first real call.
    parsed = urlparse(url)
    proxies = urllib.request.getproxies()
    return bool(proxies.get(parsed.scheme)) and not urllib.request.proxy_bypass(parsed.hostname or "")


def check_reachable(url: str, *, what: str = "the teacher", timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise `TeacherUnreachable` when nothing accepts a connection at `url`'s host and port within `timeout_s`."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if not host or _through_proxy(url):
        return
    where = f"{host}:{port}"
    try:
        # A connect only, no HTTP request: nothing reaches the server's logs or bills, and a closed port, an
        # unknown host or a dead network show up here in seconds instead of after every item's retries.
        socket.create_connection((host, port), timeout=timeout_s).close()
    except socket.gaierror as exc:
        raise TeacherUnreachable(f"Cannot reach {what} at {where}: the host name does not resolve "
                                 f"({exc.strerror or exc}). Check the address and the network.") from None
    except TimeoutError:
        raise TeacherUnreachable(f"Cannot reach {what} at {where}: no answer within {timeout_s:.0f} s. "
                                 "Check the address, the network and that the server runs.") from None
    except ConnectionRefusedError:
        raise TeacherUnreachable(f"Cannot reach {what} at {where}: connection refused (nothing listens on "
                                 "that port). Start the server or correct the address.") from None
    except OSError as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise TeacherUnreachable(f"Cannot reach {what} at {where}: {reason}.") from None
