"""The upstreams file as an operator meets it: a bad file stops the bridge (and `upstreams
check`) with exit status 2 and one line naming the file and the line or field; a good
one is checked by probing each upstream; in shared mode each upstream gets its own key."""

from __future__ import annotations

import subprocess
import sys

import pytest
import requests

from bridge.core.settings import UPSTREAM_APIS
from bridge.ollama_standin import StandIn
from bridge.serve.processes import ROOT
from bridge.surfaces import crossing

GOOD = '''[[upstream]]
name = "gpu-a"
url = "{url}"
models = ["qwen*"]
'''

# (what is wrong, the file, what the one line must say)
BAD_FILES = [
    ("syntax", '[[upstream]]\nname = "gpu-a\nurl = "http://127.0.0.1:1"\n', "line 2"),
    ("unknown field", GOOD + 'colour = "blue"\n', ":5: upstream 'gpu-a': field 'colour'"),
    ("bad URL", GOOD.replace("{url}", "ftp://box") + "", ":3: upstream 'gpu-a': field 'url'"),
    ("pattern without upstream", 'models = ["qwen*"]\n\n' + GOOD,
     ":1: unknown field 'models' outside the [[upstream]] tables"),
    ("no patterns", GOOD.replace('["qwen*"]', "[]"), ":4: upstream 'gpu-a': field 'models'"),
    ("inline key", GOOD + 'api_key = "sk-written-in-the-file-123"\n',
     ":5: upstream 'gpu-a': field 'api_key': keys are not written in this file"),
    ("key variable unset", GOOD + 'api_key_env = "ROUTING_TEST_UNSET_VARIABLE"\n',
     "ROUTING_TEST_UNSET_VARIABLE is not set"),
    ("duplicate name", GOOD + "\n" + GOOD, ":7: name 'gpu-a' is used twice"),
]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bridge", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("problem,text,said", BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_a_bad_file_is_exit_2_with_one_line_naming_file_and_place(tmp_path, problem, text,
                                                                   said):
    path = tmp_path / "upstreams.toml"
    path.write_text(text.replace("{url}", "http://127.0.0.1:1"))
    for args in (["-l", "127.0.0.1:0", "--upstreams", str(path)],
                 ["upstreams", "check", "--upstreams", str(path)]):
        result = run(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert str(path) in lines[0] and said in lines[0], lines[0]
        assert "sk-written-in-the-file" not in lines[0]


def test_check_probes_each_upstream_and_lists_the_models_it_serves(tmp_path):
    with StandIn() as box:
        path = tmp_path / "upstreams.toml"
        path.write_text(GOOD.replace("{url}", box.url) + '''
[[upstream]]
name = "gone"
url = "http://127.0.0.1:9"
models = ["deepseek-*"]
''')
        result = run("upstreams", "check", "--upstreams", str(path))
    assert result.returncode == 1, result.stderr  # one upstream is unreachable
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert rows["gpu-a"].split()[1] == "ollama"  # its kind
    assert "yes: GET /api/version" in rows["gpu-a"] and "qwen3:latest" in rows["gpu-a"]
    assert "llama3.2" not in rows["gpu-a"]  # not one of its patterns
    assert "NO (unreachable): GET /api/version" in rows["gone"]


def test_in_shared_mode_each_upstream_gets_its_own_key_and_no_other(tmp_path, make_bridge):
    key_file = tmp_path / "api.key"
    key_file.write_text("sk-api-box-key-from-a-file-777\n")
    key_file.chmod(0o600)
    with StandIn() as box, StandIn() as api:
        api.configure(api_key="sk-api-box-key-from-a-file-777")
        path = tmp_path / "upstreams.toml"
        path.write_text(GOOD.replace("{url}", box.url) + f'''
[[upstream]]
name = "api"
url = "{api.url}"
models = ["deepseek-*"]
api_key_file = "{key_file}"
''')
        bridge = make_bridge("--upstreams", str(path), "--enable-shared-mode",
                             env={"BRIDGE_API_KEY": "sk-bridge-global-key-555"})
        for model in ("qwen3:latest", "deepseek-r1:7b"):
            answer = requests.post(bridge.url + "/v1/chat/completions", timeout=30, json={
                "model": model, "messages": [{"role": "user", "content": "hi"}]},
                headers={"authorization": "Bearer client-credential-1"})
            assert answer.status_code == 200, answer.text
        box_auth = {r.headers.get("authorization") for r in box.requests}
        api_auth = {r.headers.get("authorization") for r in api.requests}
    assert box_auth == {None}  # no key of its own: neither the client's nor another's
    assert api_auth == {"Bearer sk-api-box-key-from-a-file-777"}
    assert "sk-api-box-key-from-a-file-777" not in bridge.log()


def test_an_upstreams_own_rate_limit_applies_to_it_alone(tmp_path,
                                                          make_bridge):
    with StandIn() as box, StandIn() as other:
        path = tmp_path / "upstreams.toml"
        path.write_text(GOOD.replace("{url}", box.url) + f'''rate_limit = 1

[[upstream]]
name = "other"
url = "{other.url}"
models = ["deepseek-*"]
''')
        bridge = make_bridge("--upstreams", str(path))

        def ask(model: str) -> requests.Response:
            return requests.post(bridge.url + "/v1/chat/completions", timeout=30, json={
                "model": model, "messages": [{"role": "user", "content": "hi"}]})

        limited = [ask("qwen3:latest") for _ in range(3)]
        free = [ask("deepseek-r1:7b") for _ in range(3)]  # another upstream, no limit
    assert [r.status_code for r in free] == [200] * 3
    assert limited[0].status_code == 200 and 429 in [r.status_code for r in limited[1:]]
    refused = next(r for r in limited if r.status_code == 429)
    assert "upstream 'gpu-a'" in refused.json()["error"]["message"]
    assert refused.headers["retry-after"]


def test_every_api_an_upstream_may_speak_has_its_translation():
    assert sorted(UPSTREAM_APIS) == sorted(crossing.KINDS)
