"""Shared fixtures: the Ollama stand-in (in this process) and bridges (real gunicorn
processes with gevent workers) in front of it, all on free loopback ports."""

from __future__ import annotations

import shutil
from typing import Callable, Iterator

import pytest

from bridge.ollama_standin import StandIn
from bridge.serve.processes import Process, start_bridge, start_redis


@pytest.fixture(scope="session")
def standin_server() -> Iterator[StandIn]:
    server = StandIn().start()
    yield server
    server.stop()


@pytest.fixture
def standin(standin_server: StandIn) -> Iterator[StandIn]:
    """The stand-in, with faults, counters, recorded requests and config reset, before the
    test and after it (module fixtures that use `standin_server` find it as it starts)."""
    standin_server.reset()
    yield standin_server
    standin_server.reset()


@pytest.fixture(scope="module")
def bridge(standin_server: StandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """A bridge with default settings and 2 workers in front of the stand-in."""
    with start_bridge(upstream=standin_server.url, workers=2,
                      log_dir=tmp_path_factory.mktemp("bridge")) as process:
        yield process


# Flags that turn off the features that are on by default: the bridge then relays
# every answer unchanged (the core gateway's tests compare it with the stand-in's).
RELAY_FLAGS = ("--disable-think-filter",)


@pytest.fixture(scope="module")
def relay(standin_server: StandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """A bridge (2 workers) with every default-on feature off: a plain relay."""
    with start_bridge(*RELAY_FLAGS, upstream=standin_server.url, workers=2,
                      log_dir=tmp_path_factory.mktemp("relay")) as process:
        yield process


LOG_TAIL = 4000  # characters of each bridge's log shown with a failed test


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A failed test's report ends with the end of the log of each bridge it started
    (`make_bridge`): what the bridge said is what tells a rare failure apart."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for process in getattr(item, "bridges", ()):
            report.sections.append((f"log of the bridge at {process.url}",
                                    process.log()[-LOG_TAIL:]))


@pytest.fixture
def make_bridge(request: pytest.FixtureRequest, standin_server: StandIn,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Process]]:
    """Start bridges with custom flags; all are stopped (by PID) after the test."""
    started: list[Process] = []
    request.node.bridges = started

    def make(*flags: str, upstream: str | None = None, workers: int = 2, **kwargs) -> Process:
        process = start_bridge(*flags, upstream=upstream or standin_server.url,
                               workers=workers, log_dir=tmp_path_factory.mktemp("bridge"),
                               **kwargs)
        started.append(process)
        return process

    yield make
    for process in started:
        process.stop()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """A throwaway `redis-server` on a free loopback port (tests use a key prefix each)."""
    if shutil.which("redis-server") is None:
        pytest.skip("needs Debian's redis-server (.ci/run installs it)")
    with start_redis(tmp_path_factory.mktemp("redis")) as process:
        yield process
