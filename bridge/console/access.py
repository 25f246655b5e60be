"""Who may open the console: loopback clients, and others holding the admin key.

A request counts as remote when its peer is not a loopback address, or when it carries
a proxy's forwarding header (a reverse proxy on this host relays remote clients from
127.0.0.1). A remote client needs `--admin-key`: as `Authorization: Bearer KEY`, or
the cookie that the login form sets: its issue time signed with the key (an HMAC, never
the key itself), good for `COOKIE_LIFETIME` from then, whatever the browser keeps. Any
other bearer credential is refused, from loopback too: a client key of shared mode
never opens the console.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time

import flask

from bridge.core.redaction import bearer_token, secret_matches

COOKIE = "bridge_console"
FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")
ALLOWED, LOGIN, REFUSED, WRONG_KEY = "allowed", "login", "refused", "wrong key"


COOKIE_LIFETIME = 12 * 3600  # seconds a login lasts
CLOCK_SKEW = 60  # seconds an issue time may lie ahead (workers read the same clock)


def cookie_value(admin_key: str, issued: int | None = None) -> str:
    """`ISSUED.SIGNATURE`: the issue time (Unix seconds) and its HMAC under the key."""
    issued = int(time.time()) if issued is None else issued
    return f"{issued}.{_signature(admin_key, issued)}"


def _signature(admin_key: str, issued: int) -> str:
    return hmac.new(admin_key.encode(), f"bridge console session {issued}".encode(),
                    hashlib.sha256).hexdigest()


def cookie_valid(value: str, admin_key: str, now: float | None = None) -> bool:
    """Whether `value` is a cookie this key signed less than `COOKIE_LIFETIME` ago."""
    issued, _, signature = value.partition(".")
    if not (issued.isascii() and issued.isdigit() and len(issued) <= 12):
        return False
    now = time.time() if now is None else now
    if not now - COOKIE_LIFETIME < int(issued) <= now + CLOCK_SKEW:
        return False
    return secret_matches(signature, _signature(admin_key, int(issued)))


def is_remote(request: flask.Request) -> bool:
    if any(name in request.headers for name in FORWARDING_HEADERS):
        return True
    try:
        return not ipaddress.ip_address(request.remote_addr or "").is_loopback
    except ValueError:
        return True  # not an IP address (a Unix socket?): not known to be local


def decide(request: flask.Request, admin_key: str) -> str:
    """ALLOWED; WRONG_KEY (a bearer credential that is not the admin key); LOGIN (remote,
    and an admin key is set: the login form or a 401); REFUSED (remote, no admin key)."""
    given = request.headers.get("authorization", "").strip()
    if given:
        if secret_matches(bearer_token(given), admin_key):
            return ALLOWED
        return WRONG_KEY
    if admin_key and cookie_valid(request.cookies.get(COOKIE, ""), admin_key):
        return ALLOWED
    if not is_remote(request):
        return ALLOWED
    return LOGIN if admin_key else REFUSED
