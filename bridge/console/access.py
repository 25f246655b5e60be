"""Who may open the console: loopback clients, and others holding the admin key.

A request counts as remote when its peer is not a loopback address, or when it carries
a proxy's forwarding header (a reverse proxy on this host relays remote clients from
127.0.0.1). A remote client needs `--admin-key`: as `Authorization: Bearer KEY`, or
the cookie that the login form sets (an HMAC of the key, never the key itself). Any
other bearer credential is refused, from loopback too: a client key of shared mode
never opens the console.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

import flask

from bridge.core.redaction import bearer_token, secret_matches

COOKIE = "bridge_console"
FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")
ALLOWED, LOGIN, REFUSED, WRONG_KEY = "allowed", "login", "refused", "wrong key"


def cookie_value(admin_key: str) -> str:
    return hmac.new(admin_key.encode(), b"bridge console session", hashlib.sha256).hexdigest()


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
    if admin_key and secret_matches(request.cookies.get(COOKIE, ""), cookie_value(admin_key)):
        return ALLOWED
    if not is_remote(request):
        return ALLOWED
    return LOGIN if admin_key else REFUSED
