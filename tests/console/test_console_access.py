"""Who opens the console: loopback clients; remote ones (a peer that is not loopback, or
a proxy's forwarding header) only with the admin key, as Bearer or through the login
form's cookie; never a client key; nobody with --disable-console."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import time
from urllib.parse import urlencode

import pytest
import requests

from bridge.console import access, login_backoff
from tests.helpers import keys_command, wait_for

ADMIN_KEY = "console-admin-key-4f1c9b"
REMOTE = {"x-forwarded-for": "203.0.113.7"}  # a reverse proxy on this host relays a remote client


@pytest.fixture(scope="module")
def guarded(standin_server, tmp_path_factory):
    from bridge.serve.processes import start_bridge

    with start_bridge("--admin-key", ADMIN_KEY, upstream=standin_server.url, workers=2,
                      log_dir=tmp_path_factory.mktemp("guarded")) as process:
        yield process


def test_loopback_opens_the_page_and_status_without_a_key(bridge):
    for path in ("/", "/console"):
        page = requests.get(bridge.url + path, timeout=10)
        assert page.status_code == 200 and "<title>DeepSeek-Ollama Bridge" in page.text
    status = requests.get(bridge.url + "/status", timeout=10)
    assert status.status_code == 200 and status.json()["version"]
    assert requests.get(bridge.url + "/console/static/console.js", timeout=10).ok


def test_a_remote_client_is_refused_without_an_admin_key_configured(bridge):
    for path in ("/status", "/status/requests"):
        answer = requests.get(bridge.url + path, headers=REMOTE, timeout=10)
        assert answer.status_code == 403
        assert answer.json()["error"]["code"] == "console_loopback_only"
        assert "--admin-key" in answer.json()["error"]["message"]
    page = requests.get(bridge.url + "/", headers=REMOTE, timeout=10)
    assert page.status_code == 403 and "loopback" in page.text and "<script" not in page.text


def test_a_remote_client_needs_the_admin_key(guarded):
    refused = requests.get(guarded.url + "/status", headers=REMOTE, timeout=10)
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    assert set(refused.json()["error"]) == {"message", "type", "param", "code"}
    form = requests.get(guarded.url + "/console", headers=REMOTE, timeout=10)
    assert form.status_code == 401 and 'name="key"' in form.text
    wrong = requests.get(guarded.url + "/status", timeout=10,
                         headers={**REMOTE, "authorization": "Bearer not-the-key"})
    assert wrong.status_code == 401 and "not-the-key" not in wrong.text
    allowed = requests.get(guarded.url + "/status", timeout=10,
                           headers={**REMOTE, "authorization": f"Bearer {ADMIN_KEY}"})
    assert allowed.status_code == 200
    assert ADMIN_KEY not in allowed.text and allowed.json()["settings"]["admin-key"] == "set"
    assert requests.get(guarded.url + "/status/requests", headers=REMOTE,
                        timeout=10).status_code == 401
    log = requests.get(guarded.url + "/status/requests", timeout=10,
                       headers={**REMOTE, "authorization": f"Bearer {ADMIN_KEY}"})
    assert log.status_code == 200 and log.json()["size"] == 200


def test_the_login_form_sets_a_cookie_that_opens_the_console(guarded):
    with requests.Session() as browser:
        browser.headers.update(REMOTE)
        bad = browser.post(guarded.url + "/console/login", data={"key": "guess"}, timeout=10)
        assert bad.status_code == 401 and "not the admin key" in bad.text
        good = browser.post(guarded.url + "/console/login", data={"key": ADMIN_KEY}, timeout=10)
        assert good.status_code == 200 and good.url.endswith("/console")
        assert "console.js" in good.text
        assert ADMIN_KEY not in str(browser.cookies.get_dict())
        assert browser.get(guarded.url + "/status", timeout=10).status_code == 200
    assert requests.get(guarded.url + "/status", headers=REMOTE, timeout=10).status_code == 401


def test_a_client_key_never_opens_the_console(make_bridge, tmp_path):
    state_dir, key_file = tmp_path / "state", tmp_path / "upstream.key"
    key_file.write_text("upstream-key-for-the-console-test\n")
    made = keys_command(state_dir, "create", "alice")
    assert made.returncode == 0, made.stderr
    client_key = made.stdout.strip()
    shared = make_bridge("--enable-shared-mode", "--api-key-file", str(key_file),
                         "--state-dir", str(state_dir), "--admin-key", ADMIN_KEY)
    for headers in ({"authorization": f"Bearer {client_key}"},  # even from loopback
                    {**REMOTE, "authorization": f"Bearer {client_key}"}):
        for path in ("/status", "/status/requests"):
            answer = requests.get(shared.url + path, headers=headers, timeout=10)
            assert answer.status_code == 401 and client_key not in answer.text


def test_disable_console_removes_it(make_bridge):
    off = make_bridge("--disable-console", workers=1)
    for path in ("/", "/console", "/status", "/status/requests"):
        assert requests.get(off.url + path, timeout=10).status_code == 404
    assert requests.get(off.url + "/health", timeout=10).ok


def test_a_bad_since_is_a_400_in_the_error_shape(bridge):
    answer = requests.get(bridge.url + "/status?since=yesterday", timeout=10)
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "since"


def login(url: str, key: str, source: str = "127.0.0.1") -> http.client.HTTPResponse:
    """A login form post from `source` (any 127.x address reaches the bridge), not
    following the redirect."""
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10,
                                            source_address=(source, 0))
    connection.request("POST", "/console/login", body=urlencode({"key": key}),
                       headers={"content-type": "application/x-www-form-urlencoded",
                                **REMOTE})
    answer = connection.getresponse()
    answer.text = answer.read().decode()  # type: ignore[attr-defined]
    connection.close()
    return answer


def test_the_login_cookie_lasts_twelve_hours_also_on_the_server(guarded):
    """Max-Age says 12 h to the browser; the bridge itself refuses a cookie signed longer
    ago (forged here with the admin key the test knows), one whose time was changed, and
    the old time-less cookie."""
    answer = login(guarded.url, ADMIN_KEY)
    assert answer.status == 303
    cookie = answer.getheader("set-cookie")
    assert f"Max-Age={access.COOKIE_LIFETIME}" in cookie and "Expires=" in cookie
    assert access.COOKIE_LIFETIME == 12 * 3600 and "HttpOnly" in cookie

    def status_with(value: str) -> int:
        return requests.get(guarded.url + "/status", cookies={access.COOKIE: value},
                            headers=REMOTE, timeout=10).status_code

    now = int(time.time())
    assert status_with(cookie.split(";")[0].split("=", 1)[1]) == 200
    assert status_with(access.cookie_value(ADMIN_KEY, now - 11 * 3600)) == 200
    assert status_with(access.cookie_value(ADMIN_KEY, now - 12 * 3600 - 60)) == 401
    _, signature = access.cookie_value(ADMIN_KEY, now - 13 * 3600).split(".")
    assert status_with(f"{now}.{signature}") == 401  # a moved time breaks the signature
    timeless = hmac.new(ADMIN_KEY.encode(), b"bridge console session",
                        hashlib.sha256).hexdigest()
    assert status_with(timeless) == 401  # the cookie before lifetimes: no longer good
    assert status_with(access.cookie_value("another-key", now)) == 401


def test_failed_logins_from_an_address_are_slowed_down_until_one_succeeds(make_bridge):
    bridge = make_bridge("--admin-key", ADMIN_KEY)
    for _ in range(login_backoff.FREE_FAILURES):
        assert login(bridge.url, "guess").status == 401
    sixth = login(bridge.url, "guess")
    assert sixth.status == 429 and sixth.getheader("retry-after") == "1"
    assert "not the admin key" in sixth.text and "try again in 1 s" in sixth.text
    # another address is not held up by this one's failures
    assert login(bridge.url, "guess", source="127.0.0.2").status == 401
    # each further failure waits longer (1 s, 2 s, 4 s … up to 60 s)
    seventh = wait_for(lambda: (answer := login(bridge.url, "guess")).status == 429
                       and "not the admin key" in answer.text and answer,
                       what="the block to end and the next guess to be checked")
    blocked_at = time.monotonic()
    assert seventh.getheader("retry-after") == "2"
    # blocked: even the right key is not looked at until Retry-After has passed
    early = login(bridge.url, ADMIN_KEY)
    assert early.status == 429 or time.monotonic() - blocked_at >= 2
    wait_for(lambda: login(bridge.url, ADMIN_KEY).status == 303, timeout=15,
             what="the right key to log in once the block is over")
    assert login(bridge.url, "guess").status == 401  # the success forgot the failures


def test_the_failed_login_table_is_bounded_and_the_wait_capped(tmp_path):
    backoff = login_backoff.LoginBackoff(tmp_path, max_addresses=3)
    waits = [backoff.failed("198.51.100.1") for _ in range(30)]
    assert waits[:login_backoff.FREE_FAILURES] == [0.0] * login_backoff.FREE_FAILURES
    assert waits[5:9] == [1.0, 2.0, 4.0, 8.0] and max(waits) == waits[-1] == 60.0
    assert 59 < backoff.wait("198.51.100.1") <= 60
    for n in range(2, 12):
        backoff.failed(f"198.51.100.{n}")
    table = json.loads((tmp_path / "console-logins.json").read_text())
    assert len(table) == 3 and "198.51.100.11" in table
    backoff.succeeded("198.51.100.11")
    assert backoff.wait("198.51.100.11") == 0
