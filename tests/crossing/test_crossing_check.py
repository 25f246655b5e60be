"""`upstreams check` with upstreams of every kind: each row says the upstream's kind and
whether it answered its kind's probe, sent with the key as its kind wants it (the
fake upstreams refuse a key in another header, and an Anthropic probe without
`anthropic-version`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from crossing_helpers import KEY_ENV, KEYS, fake_upstream, headers_of, upstream_table

from bridge.ollama_standin import StandIn
from bridge.serve.processes import ROOT


def check(path, *env_keys: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **{KEY_ENV[kind]: KEYS[kind] for kind in env_keys}}
    return subprocess.run([sys.executable, "-m", "bridge", "upstreams", "check",
                           "--upstreams", str(path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def rows(result: subprocess.CompletedProcess) -> dict[str, str]:
    return {line.split()[0]: line for line in result.stdout.splitlines()[1:] if line.strip()}


def test_check_shows_each_upstreams_kind_and_its_probe(tmp_path):
    with StandIn() as box:
        cloud, claude = fake_upstream("openai", KEYS["openai"]), fake_upstream(
            "anthropic", KEYS["anthropic"])
        try:
            path = tmp_path / "upstreams.toml"
            path.write_text("\n".join([
                upstream_table("gpu", box.url, "ollama", "qwen*"),
                upstream_table("deepseek", cloud.url, "openai", "deepseek-*"),
                upstream_table("claude", claude.url, "anthropic", "llama*"),
                upstream_table("gone", "http://127.0.0.1:9", "anthropic", "claude-*", key=False)]))
            result = check(path, "openai", "anthropic")
            assert result.returncode == 1, result.stderr  # one upstream is unreachable
            found = rows(result)
            answered = {name: re.search(r"(?<!\w)(yes|NO)(?!\w)", row).group(1)
                        for name, row in found.items()}
            assert answered == {"gpu": "yes", "deepseek": "yes", "claude": "yes", "gone": "NO"}
            kinds = {name: row.split()[1] for name, row in found.items()}
            assert kinds == {"gpu": "ollama", "deepseek": "openai", "claude": "anthropic",
                             "gone": "anthropic"}
            assert "deepseek-r1:7b" in found["deepseek"]
            assert "llama3.2:latest" in found["claude"]
            assert box.count("/api/version") >= 1
            assert cloud.count("/v1/models") >= 1 and claude.count("/v1/models") >= 1
            assert not [r for r in cloud.requests + claude.requests
                        if r.path.startswith("/api/")]
            probe = headers_of(claude.requests[0])
            assert probe["x-api-key"] == KEYS["anthropic"] and probe["anthropic-version"]
            assert headers_of(cloud.requests[0])["authorization"] == f"Bearer {KEYS['openai']}"
            assert all(key not in result.stdout + result.stderr for key in KEYS.values())
        finally:
            cloud.stop()
            claude.stop()
