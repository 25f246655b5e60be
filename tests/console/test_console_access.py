"""Who opens the console: loopback clients; remote ones (a peer that is not loopback, or
a proxy's forwarding header) only with the admin key, as Bearer or through the login
form's cookie; never a client key; nobody with --disable-console."""

from __future__ import annotations

import pytest
import requests

from tests.helpers import keys_command

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
    answer = requests.get(bridge.url + "/status", headers=REMOTE, timeout=10)
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
        answer = requests.get(shared.url + "/status", headers=headers, timeout=10)
        assert answer.status_code == 401 and client_key not in answer.text


def test_disable_console_removes_it(make_bridge):
    off = make_bridge("--disable-console", workers=1)
    for path in ("/", "/console", "/status"):
        assert requests.get(off.url + path, timeout=10).status_code == 404
    assert requests.get(off.url + "/health", timeout=10).ok


def test_a_bad_since_is_a_400_in_the_error_shape(bridge):
    answer = requests.get(bridge.url + "/status?since=yesterday", timeout=10)
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "since"
