"""Claude Code itself (npm `@anthropic-ai/claude-code`, installed into .tools/ by `make
claude-code`) runs offline against the bridge in non-interactive mode: it posts to
`/v1/messages?beta=true` with `anthropic-beta` headers, a long system prompt and its
tools, and prints the model's answer, which must come without the `<think>` block the
stand-in writes into the text."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from bridge.ollama_standin.wire import answer_text
from bridge.serve.processes import ROOT

CLAUDE = ROOT / ".tools" / "claude-code" / "node_modules" / ".bin" / "claude"
MODEL = "deepseek-r1:7b"


@pytest.fixture
def claude() -> str:
    if shutil.which("node") is None:
        pytest.skip("needs node (Claude Code is a node program)")
    if not CLAUDE.exists():
        pytest.skip(f"needs Claude Code in {CLAUDE.parent.parent.parent}: `make claude-code` "
                    "(.ci/run does it)")
    return str(CLAUDE)


def test_claude_code_prints_the_answer_without_think_tags(claude, make_bridge, standin,
                                                          tmp_path):
    standin.configure(think="tags")  # the reasoning as raw <think>…</think> in the text
    bridge = make_bridge("--enable-cache", "--cache-dir", str(tmp_path / "cache"), workers=1)
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "ANTHROPIC_BASE_URL": bridge.url,
           "ANTHROPIC_AUTH_TOKEN": "sk-local-anything", "DISABLE_TELEMETRY": "1",
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1",
           "ANTHROPIC_SMALL_FAST_MODEL": MODEL}
    ran = subprocess.run([claude, "-p", "Say hello in five words", "--model", MODEL],
                         env=env, cwd=home, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    chats = [request for request in standin.requests if request.path == "/api/chat"]
    assert chats, "Claude Code's request never reached the upstream"
    native = chats[-1].json()
    assert native["model"] == MODEL and native["messages"][0]["role"] == "system"
    assert len(native["messages"][0]["content"]) > 2000  # Claude Code's long system prompt
    prompt = next(message["content"] for message in reversed(native["messages"])
                  if message["role"] == "user")
    answer = answer_text(prompt, len(native["messages"]))
    assert ran.stdout.strip() == answer.strip()
    assert "<think>" not in ran.stdout and "Let me think" not in ran.stdout
    line = next(line for line in bridge.log().splitlines() if '"POST /v1/messages"' in line)
    assert " 200 " in line and "api=anthropic" in line
