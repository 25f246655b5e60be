"""deploy/nginx/bridge.conf with Debian's nginx: `nginx -t` accepts it as shipped,
installed the way the README says, and a real nginx in front of two real bridges relays
SSE and NDJSON streams chunk by chunk, passes `X-Request-Id`, and keeps serving when one
bridge stops."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
import requests
from deploy_helpers import DEPLOY, run_tool, tool

from bridge.serve.processes import LOOPBACK, Process, free_port, start_server

DEBIAN_NGINX = Path("/etc/nginx")
INSTALLED_NAME = "deepseek-ollama-bridge.conf"  # README: /etc/nginx/conf.d/<this>
TOKEN_DELAY = "1.0"
# Longer than one token's wait, shorter than the whole stream: a relay that buffered the
# stream would let this read time out before the first chunk.
CHUNK_READ_TIMEOUT = 3.0


def nginx_config(prefix: Path, upstreams: list[str], port: int) -> Path:
    """The deployed site changed only in its upstream servers (these bridges) and its
    listening address (`port` on the loopback), inside a minimal nginx.conf whose files
    all live under `prefix`: for a real nginx started by a test."""
    site = (DEPLOY / "nginx" / "bridge.conf").read_text()
    site = re.sub(r"^ *(# )?server \S+:\d+ .*\n", "", site, flags=re.M)
    servers = "".join(f"    server {address} max_fails=3 fail_timeout=10s;\n"
                      for address in upstreams)
    site = site.replace("upstream deepseek_ollama_bridge {\n",
                        "upstream deepseek_ollama_bridge {\n" + servers)
    assert "listen 80;" in site
    site = site.replace("listen 80;", f"listen {LOOPBACK}:{port};")
    (prefix / "bridge.conf").write_text(site)
    temp = " ".join(f"{kind}_temp_path {prefix}/{kind};"
                    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    main = prefix / "nginx.conf"
    main.write_text(f"""worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/access.log;
    {temp}
    include {prefix}/bridge.conf;
}}
""")
    return main


@pytest.fixture
def prefix() -> Iterator[Path]:
    """nginx's directory: readable by its workers, which drop root to `nobody`."""
    path = Path(tempfile.mkdtemp(prefix="bridge-nginx-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def nginx_command(nginx: str, prefix: Path, config: Path, *args: str) -> list[str]:
    return [nginx, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(config),
            *args]


def test_nginx_t_accepts_the_site_as_shipped_installed_as_the_readme_says(prefix):
    """README, "Deploying": copy the file into Debian's /etc/nginx/conf.d/ (its
    nginx.conf includes conf.d/*.conf inside `http { }`) and remove the default site;
    here in a copy of the machine's /etc/nginx, whose paths are all that changes."""
    nginx = tool("nginx")
    if not (DEBIAN_NGINX / "nginx.conf").is_file():
        pytest.skip(f"{DEBIAN_NGINX}/nginx.conf is missing: not Debian's nginx package")
    etc = prefix / "etc-nginx"
    shutil.copytree(DEBIAN_NGINX, etc, symlinks=True)
    shutil.copy(DEPLOY / "nginx" / "bridge.conf", etc / "conf.d" / INSTALLED_NAME)
    (etc / "sites-enabled" / "default").unlink(missing_ok=True)
    main = etc / "nginx.conf"
    # the copy's own files, and logs nginx -t can open without root
    main.write_text(main.read_text().replace(f"{DEBIAN_NGINX}/", f"{etc}/")
                    .replace("/var/log/nginx/", f"{prefix}/"))
    result = run_tool(*nginx_command(nginx, etc, main, "-T"))
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    # -T prints every file it read: the site, unchanged, among them
    assert f"# configuration file {etc}/conf.d/{INSTALLED_NAME}:\n" in result.stdout
    assert (DEPLOY / "nginx" / "bridge.conf").read_text() in result.stdout


@pytest.fixture
def nginx_in_front(prefix, make_bridge) -> Iterator[tuple[Process, list[Process]]]:
    nginx = tool("nginx")
    bridges = [make_bridge("--disable-think-filter", workers=1) for _ in range(2)]
    port = free_port()
    config = nginx_config(prefix, [bridge.url.removeprefix("http://") for bridge in bridges],
                          port)
    proxy = start_server(nginx_command(nginx, prefix, config, "-g", "daemon off;"),
                         f"http://{LOOPBACK}:{port}", "/health", log_dir=prefix)
    try:
        yield proxy, bridges
    finally:
        proxy.stop()


def test_nginx_relays_streams_chunk_by_chunk_with_the_request_id(nginx_in_front, standin):
    proxy, _ = nginx_in_front
    direct = requests.post(standin.url + "/v1/chat/completions", timeout=30, json={
        "model": "llama3.2", "stream": True,
        "messages": [{"role": "user", "content": "Tell me more"}]}).text
    want = [line for line in direct.splitlines() if line.startswith("data: ")]

    answer = requests.post(proxy.url + "/v1/chat/completions", stream=True,
                           timeout=(10, CHUNK_READ_TIMEOUT),
                           headers={"x-standin-token-delay": TOKEN_DELAY,
                                    "X-Request-Id": "through-nginx-1"},
                           json={"model": "llama3.2", "stream": True,
                                 "messages": [{"role": "user", "content": "Tell me more"}]})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert answer.headers["x-request-id"] == "through-nginx-1"
    # Each event is read within CHUNK_READ_TIMEOUT of the previous one, while the whole
    # stream takes longer: nginx passes every chunk on as the bridge sends it.
    got = [line.decode() for line in answer.iter_lines() if line.startswith(b"data: ")]
    assert len(got) == len(want) and got[-1] == "data: [DONE]"
    contents = [json.loads(line[6:])["choices"][0]["delta"].get("content", "")
                for line in got[:-1] if json.loads(line[6:])["choices"]]
    assert "".join(contents) == "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content", "")
        for line in want[:-1] if json.loads(line[6:])["choices"])

    ndjson = requests.post(proxy.url + "/api/chat", stream=True, timeout=30,
                           json={"model": "llama3.2",
                                 "messages": [{"role": "user", "content": "Tell me more"}]})
    lines = [json.loads(line) for line in ndjson.iter_lines() if line]
    assert len(lines) > 2 and lines[-1]["done"] is True
    # Without a client id nginx makes one; the bridge uses and returns it.
    assert re.fullmatch(r"[0-9a-f]{32}", ndjson.headers["x-request-id"])


def test_nginx_keeps_serving_when_one_bridge_stops_and_hides_metrics(nginx_in_front):
    proxy, bridges = nginx_in_front
    assert requests.get(proxy.url + "/metrics", timeout=10).status_code == 404
    bridges[0].stop()
    for _ in range(6):  # round robin would reach the stopped one every other request
        answer = requests.post(proxy.url + "/v1/chat/completions", timeout=30, json={
            "model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]
