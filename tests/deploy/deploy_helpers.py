"""What the deployment tests share: where the files are and the tools that check them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.serve.processes import ROOT

DEPLOY = ROOT / "deploy"
TOOL_TIMEOUT = 60


def tool(name: str) -> str:
    """The path of a checking tool: from this virtualenv (PyPI's) or the system (Debian's);
    the test is skipped, saying so, where it is not installed (`.ci/run` installs them)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed here (.ci/run installs it)")
    return found


def run_tool(*cmd: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run a checking tool; the result with its output as text."""
    return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True,
                          timeout=TOOL_TIMEOUT, stdin=subprocess.DEVNULL)
