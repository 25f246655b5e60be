"""End-to-end tests of the Lua middleware's limits through gunicorn with real LuaJIT: a
script cannot take the time hook away (`debug.sethook`, a redefined `error`; a hook cleared
through the C API is set again for the next call), and a script that piles up memory gets
a Lua error while its worker stays small (`--luajit-max-memory`), every runtime serving
normally afterwards."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests
from helpers import worker_pids

from bridge.serve.processes import start_bridge

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "test_lua_limits.lua"
CHAT = "/v1/chat/completions"
BUDGET_MS = 300
LONG_BUDGET_MS = 120_000
MAX_MEMORY_MIB = 64
HANG_GUARD = 60.0  # seconds: far above what a limit takes, only there so a hang fails


def limits_bridge(standin_server, tmp_path_factory, budget_ms: int):
    """One worker with two runtimes (--luajit-instances-power 1): a request that broke
    out of a limit would have spoiled one of the two the next requests get."""
    return start_bridge("--enable-luajit", "--luajit-script", str(SCRIPT),
                        "--luajit-timeout", str(budget_ms),
                        "--luajit-max-memory", str(MAX_MEMORY_MIB),
                        upstream=standin_server.url, workers=1,
                        log_dir=tmp_path_factory.mktemp("lua-limits"))


@pytest.fixture(scope="module")
def time_bridge(standin_server, tmp_path_factory):
    with limits_bridge(standin_server, tmp_path_factory, BUDGET_MS) as process:
        yield process


@pytest.fixture(scope="module")
def memory_bridge(standin_server, tmp_path_factory):
    """A budget so long that only the memory limit can end the growing scripts."""
    with limits_bridge(standin_server, tmp_path_factory, LONG_BUDGET_MS) as process:
        yield process


def chat(url: str) -> requests.Response:
    return requests.post(url + CHAT, timeout=HANG_GUARD, json={
        "model": "qwen2.5", "messages": [{"role": "user", "content": "still there?"}]})


def assert_times_out(url: str) -> None:
    """A request to `url` gets the Lua time-out answer, well bounded."""
    started = time.monotonic()
    answer = requests.get(url, timeout=HANG_GUARD)
    assert answer.status_code == 504
    assert answer.json()["error"]["code"] == "lua_timeout"
    assert time.monotonic() - started < HANG_GUARD / 2


def peak_rss_mib(pid: int) -> float:
    """The most memory the process ever held (VmHWM, its peak resident set)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


@pytest.mark.parametrize("path", ["/unhook-spin", "/disarm-spin"])
def test_a_script_cannot_take_the_time_budget_away(time_bridge, path):
    # three in a row: the same runtime serves again (two per worker), still bounded
    for _ in range(3):
        assert_times_out(time_bridge.url + path)
    assert chat(time_bridge.url).status_code == 200


def test_the_time_hook_is_set_again_before_every_call(time_bridge):
    # the hook cleared through the C API in both hooks of a request: both runtimes
    for _ in range(2):
        assert requests.get(time_bridge.url + "/ffi-unhook", timeout=HANG_GUARD).text == "ok"
    for _ in range(3):
        assert_times_out(time_bridge.url + "/spin")


def test_debug_sethook_is_ignored_with_a_warning(time_bridge):
    assert_times_out(time_bridge.url + "/unhook-spin")
    assert "debug.sethook() is ignored: the bridge's time budget owns the hook" \
        in time_bridge.log()


@pytest.mark.parametrize("path", ["/grow", "/grow-pcall"])
def test_a_script_growing_without_end_gets_a_lua_error_and_its_worker_stays_small(
        memory_bridge, path):
    [worker] = worker_pids(memory_bridge.pid)
    # three times as many runs as runtimes: a replaced runtime's memory is given back
    for _ in range(6):
        answer = requests.get(memory_bridge.url + path, timeout=HANG_GUARD)
        assert answer.status_code == 500
        error = answer.json()["error"]
        assert error["code"] == "lua_error"
        assert "out of memory" in error["message"]
        assert f"{MAX_MEMORY_MIB} MiB" in error["message"]
    # at most two runtimes at their limit plus the worker itself (~55 MiB); without the
    # limit one request took it past 550 MiB, and the next ones further
    assert peak_rss_mib(worker) < 300
    assert worker_pids(memory_bridge.pid) == [worker]  # no recycling needed
    for _ in range(3):  # every runtime serves again
        answer = chat(memory_bridge.url)
        assert answer.status_code == 200
        assert answer.json()["choices"][0]["message"]["content"] == "Echo: still there?"
