"""The package installed the way the systemd unit's steps install it (README,
"Deploying"), in a temporary root: a wheel built from the sources, installed without
`-e` into /opt/deepseek-ollama-bridge/.venv. There `systemd-analyze verify` accepts the
unit as shipped, and the unit's ExecStart, run from another directory, serves the bridge:
the gunicorn configuration and the app come with the package, not from the checkout."""

from __future__ import annotations

import importlib.metadata
import re
import shlex
import shutil
import signal
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from deploy_helpers import DEPLOY, run_tool, tool

from bridge.core.settings import SETTINGS
from bridge.serve.processes import GUNICORN_ARGS, LOOPBACK, ROOT, free_port, start_server

UNIT = DEPLOY / "systemd" / "deepseek-ollama-bridge.service"
UNIT_DIR = "etc/systemd/system"  # where the install steps copy the unit
SYSTEM_UNITS = Path("/usr/lib/systemd/system")  # the targets the unit names are there
VENV = "opt/deepseek-ollama-bridge/.venv"
# what `pip install .` builds from (the Dockerfile copies the same)
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "bridge")
PIP = (sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input")


@dataclass
class Installed:
    root: Path  # stands for / of the machine the steps ran on
    wheel: Path

    @property
    def venv(self) -> Path:
        return self.root / VENV


def run(*cmd: str | Path, cwd: Path = ROOT) -> str:
    """A step that must succeed: its output."""
    result = run_tool(*map(str, cmd), cwd=cwd)
    assert result.returncode == 0, f"{shlex.join(map(str, cmd))}:\n{result.stderr}"
    return result.stdout


def write_console_script(venv: Path, distribution: str, name: str) -> None:
    """The script `pip install` writes for a console entry point of `distribution`."""
    (point,) = [entry for entry in importlib.metadata.distribution(distribution).entry_points
                if entry.group == "console_scripts" and entry.name == name]
    script = venv / "bin" / name
    script.write_text(f"#!{venv}/bin/python\nimport sys\nfrom {point.module} import "
                      f"{point.attr}\nif __name__ == '__main__':\n    sys.exit({point.attr}())\n")
    script.chmod(0o755)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """`python3 -m venv /opt/deepseek-ollama-bridge/.venv` and `.venv/bin/pip install .`,
    offline: the wheel is built from a copy of the sources (the checkout stays clean) by
    this environment's setuptools, and the dependencies are this environment's."""
    build = tmp_path_factory.mktemp("build")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, build / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, build / name)
    run(*PIP, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w",
        build / "dist", build)
    (wheel,) = (build / "dist").glob("*.whl")

    root = tmp_path_factory.mktemp("root")
    venv = root / VENV
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    run(*PIP, "--python", venv / "bin" / "python", "install", "--no-deps", "--no-index", wheel)
    # The dependencies instead of a download: this environment's site-packages, after the
    # venv's own. Its editable install of the checkout does not come along: that is a .pth
    # file of its own, which a plain path line does not run.
    site = run(venv / "bin" / "python", "-c",
               "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
    dependencies = run(sys.executable, "-c",
                       "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
    (Path(site) / "bridge-test-dependencies.pth").write_text(dependencies + "\n")
    write_console_script(venv, "gunicorn", "gunicorn")  # as installing gunicorn would
    return Installed(root=root, wheel=wheel)


def exec_start() -> list[str]:
    (line,) = re.findall(r"^ExecStart=(.*)$", UNIT.read_text(), re.M)
    return shlex.split(line)


def test_the_wheel_carries_the_gunicorn_configuration_the_app_and_the_command(installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    assert {"bridge/serve/gunicorn_conf.py", "bridge/wsgi.py"} <= names
    assert any(name.startswith("bridge/console/static/") for name in names)
    entry_points = next(name for name in names if name.endswith(".dist-info/entry_points.txt"))
    assert "deepseek-ollama-bridge = bridge.serve.cli:main" in \
        zipfile.ZipFile(installed.wheel).read(entry_points).decode()
    assert (installed.venv / "bin" / "deepseek-ollama-bridge").exists()


def test_the_systemd_unit_verifies_as_shipped_where_the_install_steps_put_things(
        installed, tmp_path):
    analyze = tool("systemd-analyze")
    if not SYSTEM_UNITS.is_dir():
        pytest.skip(f"{SYSTEM_UNITS} is missing: systemd's own units are not installed")
    unit = UNIT.read_text()
    for line in ("KillSignal=SIGTERM", "NoNewPrivileges=yes", "ProtectSystem=strict"):
        assert line in unit.splitlines()
    stop = int(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M).group(1))
    defaults = {setting.name: setting.default for setting in SETTINGS}
    assert stop > (defaults["drain_delay"] + defaults["graceful_timeout"]) / 1000

    def verify(root: Path) -> subprocess.CompletedProcess:
        """`cp deploy/systemd/….service /etc/systemd/system/` in `root`, beside the
        machine's own units, then `systemd-analyze verify` there."""
        shutil.copytree(SYSTEM_UNITS, root / SYSTEM_UNITS.relative_to("/"), symlinks=True,
                        dirs_exist_ok=True)
        (root / UNIT_DIR).mkdir(parents=True, exist_ok=True)
        shutil.copy(UNIT, root / UNIT_DIR / UNIT.name)
        return run_tool(analyze, "verify", f"--root={root}", UNIT.name)

    result = verify(installed.root)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), \
        result.stdout + result.stderr
    # the check is real: without the install steps' virtualenv, the same unit fails
    bare = verify(tmp_path / "bare-root")
    assert bare.returncode != 0 and "is not executable" in bare.stdout + bare.stderr


def test_the_units_command_serves_the_bridge_from_another_directory(installed, standin,
                                                                    tmp_path):
    command = exec_start()
    assert command[0] == "/" + VENV + "/bin/gunicorn"
    assert tuple(command[1:]) == GUNICORN_ARGS["package"]  # README's command, too
    command[0] = str(installed.root / command[0].lstrip("/"))
    # from a directory with no file of the checkout, which is not on the path either
    imported = run(installed.venv / "bin" / "python", "-c",
                   "import bridge.wsgi, bridge.serve.gunicorn_conf as c; print(c.__file__)",
                   cwd=tmp_path)
    assert imported.startswith(str(installed.venv)), imported
    port = free_port()
    env = {"BRIDGE_LISTEN": f"{LOOPBACK}:{port}", "BRIDGE_OLLAMA": standin.url,
           "BRIDGE_WORKERS": "1", "BRIDGE_CACHE_DIR": str(tmp_path / "cache"),
           "BRIDGE_STATE_DIR": str(tmp_path / "state"), "PYTHONPATH": ""}
    with start_server(command, f"http://{LOOPBACK}:{port}", "/health", env=env,
                      log_dir=tmp_path, cwd=tmp_path, stop_signal=signal.SIGQUIT) as bridge:
        health = requests.get(bridge.url + "/health", timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        answer = requests.post(bridge.url + "/v1/chat/completions", timeout=30, json={
            "model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"]
        assert "bridge.serve.worker.GeventWorker" in bridge.log()
