"""LuaJIT runtimes for the middleware: loading and checking the script, a per-worker pool
of runtimes each used by one call at a time, and calls held to a time budget.

Why calls run in the request's own greenlet, not in a thread: a thread hop costs ~70 µs
per call, more than the whole budget for both hooks. Instead every runtime runs with the
JIT off and an instruction-count hook (a compiled loop never calls hooks) that, every
`HOOK_INSTRUCTIONS` instructions, asks Python for the time: past `SLICE` seconds since
the last pause it yields to the gevent loop (`gevent.sleep(0)`), so other requests are
served while a slow script runs; past the call's budget it raises a Lua error that the
script cannot swallow (`pcall`, `xpcall` and `coroutine.resume` pass it on). The runtime
stays usable afterwards, so the pool never shrinks. Left out of this: one long C call
(`string.rep('x', 1e9)`, a huge `string.gsub`) runs without hooks and holds the loop for
its duration. A script that keeps running `GRACE` seconds past its budget all the same
gets its worker recycled gracefully (SIGTERM to itself: gunicorn finishes the other
requests and starts a fresh worker).

Runtimes are made per worker process after fork (never at import), and a runtime is
checked out exclusively for a whole call: two greenlets inside one Lua state crash it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sysconfig
import time
from dataclasses import dataclass
from typing import Any, Callable

import gevent
from gevent.queue import Empty, Queue

log = logging.getLogger("bridge.lua")

SLICE = 0.002                 # seconds Lua may hold the gevent loop before it yields
HOOK_INSTRUCTIONS = 10_000    # VM instructions between two looks at the clock (~20-50 µs)
GRACE = 2.0                   # seconds past the budget before the worker is recycled
TIMEOUT_MARK = "bridge: the Lua time budget of this call is exhausted"
REQUIRED = ("HandleServerRequest", "HandleServerResponse")

# Runs in every runtime before the script: the time hook, `print` to the bridge's log,
# the module search paths, and the protection of the time-out error.
PRELUDE = """
local tick, log_line, path, cpath, count, mark = ...
jit.off()
jit.on = function() error("jit.on() is disabled by the bridge: its time budget needs "
                          .. "the interpreter", 2) end
debug.sethook(function()
    local verdict = tick()
    if verdict then error(verdict, 0) end
end, "", count)
local raw_pcall, raw_xpcall, raw_resume = pcall, xpcall, coroutine.resume
local find = string.find
local function is_timeout(err) return type(err) == "string" and find(err, mark, 1, true) end
local function pass_timeout(ok, ...)
    if not ok and is_timeout((...)) then error(mark, 0) end
    return ok, ...
end
pcall = function(...) return pass_timeout(raw_pcall(...)) end
xpcall = function(f, handler, ...)
    return pass_timeout(raw_xpcall(f, function(err)
        if is_timeout(err) then return err end
        return handler(err)
    end, ...))
end
coroutine.resume = function(...) return pass_timeout(raw_resume(...)) end
print = function(...)
    local parts = {}
    for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
    log_line(table.concat(parts, "\\t"))
end
if path ~= "" then package.path = path .. ";" .. package.path end
package.cpath = cpath .. package.cpath
"""

# Defined after the script: flat calls of the hooks, so that one Lua call (and no table
# walk from Python) builds each argument table.
WRAPPERS = """
local type = type
function __bridge_request(path, method, query, body, headers)
    local go_on, result = HandleServerRequest({path = path, method = method, query = query,
                                               body = body, headers = headers})
    if type(result) ~= "table" then
        error("HandleServerRequest must return true, request or false, response; its "
              .. "second value is a " .. type(result), 0)
    end
    if go_on then
        return true, result.path, result.method, result.query, result.body, result.headers
    end
    return false, result.status_code, nil, nil, result.body, result.headers
end
function __bridge_response(status, headers, body, stream)
    local result = HandleServerResponse({status_code = status, headers = headers,
                                         body = body, stream = stream})
    if type(result) ~= "table" then
        error("HandleServerResponse must return the response table; it returned a "
              .. type(result), 0)
    end
    return result.status_code, result.headers, result.body
end
__bridge_has_chunk_hook = type(HandleStreamChunk) == "function"
"""


class ScriptError(Exception):
    """The script cannot be used: missing, unreadable, bad syntax, hooks missing."""


class LuaFailure(Exception):
    """A hook raised a Lua error (or returned something unusable); `message` is one line."""

    def __init__(self, hook: str, message: str):
        super().__init__(f"{hook}: {message}")
        self.hook = hook
        self.message = message


class LuaTimeout(Exception):
    """A hook ran past its time budget (or found no free runtime within it)."""

    def __init__(self, hook: str, budget: float):
        super().__init__(f"{hook} ran past its time budget of {budget * 1000:.0f} ms")
        self.hook = hook


@dataclass(frozen=True)
class ScriptConfig:
    script: str
    package_path: str = ""
    package_cpath: str = ""


def _luajit() -> Any:
    import lupa.luajit21 as luajit  # plain `lupa.LuaRuntime` is Lua 5.5, not LuaJIT

    # C modules (Debian's lua-cjson) resolve lua_* symbols globally: make LuaJIT's global.
    ctypes.CDLL(luajit.__file__, mode=os.RTLD_NOLOAD | os.RTLD_GLOBAL)
    return luajit


def system_cpath() -> str:
    """Debian's directories of Lua 5.1 C modules (where `apt install lua-cjson` puts them)."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    dirs = [f"/usr/lib/{multiarch}/lua/5.1/?.so"] if multiarch else []
    return ";".join(dirs + ["/usr/lib/lua/5.1/?.so", "/usr/local/lib/lua/5.1/?.so"]) + ";"


def first_line(error: BaseException) -> str:
    """A Lua error's message without lupa's stack traceback."""
    text = str(error).split("\nstack traceback:", 1)[0].strip()
    return text.removeprefix("error loading code: ").splitlines()[0] if text else "error"


class Runtime:
    """One LuaJIT state with the script loaded; used by one call at a time."""

    def __init__(self, config: ScriptConfig, on_print: Callable[[str, str], None]):
        luajit = _luajit()
        self.lua = luajit.LuaRuntime(encoding=None, unpack_returned_tuples=True,
                                     register_eval=False)
        self.errors = (luajit.LuaError,)
        self.deadline = float("inf")
        self.budget = 0.0
        self.paused_at = 0.0
        self.request_id = ""
        self.recycling = False
        self._on_print = on_print
        prelude = self.lua.eval("function(...) " + PRELUDE + " end")
        own_cpath = config.package_cpath.strip(";")
        cpath = (own_cpath + ";" if own_cpath else "") + system_cpath()
        prelude(self._tick, self._print, config.package_path.strip(";").encode(),
                cpath.encode(), HOOK_INSTRUCTIONS, TIMEOUT_MARK.encode())
        self.load_script(config.script)

    def load_script(self, path: str) -> None:
        try:
            with open(path, "rb") as handle:
                source = handle.read()
        except OSError as exc:
            raise ScriptError(f"{path}: cannot read the script: {exc.strerror or exc}") from None
        name = os.path.basename(path).encode()
        self.start_call(5.0, "")  # a script's top level is bounded too
        try:
            loaded = self.lua.globals().loadstring(source, b"@" + name)
            chunk, problem = loaded if isinstance(loaded, tuple) else (loaded, None)
            if chunk is None:
                raise ScriptError(f"{path}: syntax error: {problem.decode(errors='replace')}")
            chunk()
        except self.errors as exc:
            raise ScriptError(f"{path}: error while loading: {first_line(exc)}") from None
        finally:
            self.end_call()
        lua_globals = self.lua.globals()
        for hook in REQUIRED:
            if lua_globals[hook.encode()] is None:
                raise ScriptError(f"{path}: the script does not define {hook}")
        self.lua.execute(WRAPPERS)
        self.request_hook = lua_globals[b"__bridge_request"]
        self.response_hook = lua_globals[b"__bridge_response"]
        self.chunk_hook = (lua_globals[b"HandleStreamChunk"]
                           if lua_globals[b"__bridge_has_chunk_hook"] else None)

    def start_call(self, budget: float, request_id: str) -> None:
        self.budget = budget
        self.paused_at = time.perf_counter()
        self.deadline = self.paused_at + budget
        self.request_id = request_id

    def end_call(self) -> None:
        self.deadline = float("inf")

    def _tick(self) -> bytes | None:
        """Called by the count hook: yield the loop now and then; fail past the budget."""
        now = time.perf_counter()
        if now > self.deadline:
            if now > self.deadline + GRACE and not self.recycling:
                self.recycling = True
                log.error("a Lua script keeps running %.0f s past its time budget despite "
                          "its time-out error; recycling this worker [%s]", GRACE,
                          self.request_id)
                os.kill(os.getpid(), signal.SIGTERM)  # gunicorn: graceful worker stop
            gevent.sleep(0)
            return TIMEOUT_MARK.encode()
        if now - self.paused_at > SLICE:
            gevent.sleep(0)  # other greenlets run; the runtime stays ours (checked out)
            self.paused_at = time.perf_counter()
        return None

    def _print(self, text: bytes) -> None:
        self._on_print(text.decode("utf-8", "replace"), self.request_id)


class Pool:
    """The worker's runtimes; `checkout` waits for a free one within the call's budget."""

    def __init__(self, config: ScriptConfig, size: int, on_print: Callable[[str, str], None]):
        self.config = config
        self.size = size
        self.on_print = on_print
        self._free: Queue | None = None

    def start(self) -> None:
        self._free = Queue()
        for _ in range(self.size):
            self._free.put(Runtime(self.config, self.on_print))

    def call(self, hook: str, budget: float, request_id: str,
             use: Callable[[Runtime], Any]) -> Any:
        """`use(runtime)` with a runtime of its own, held to `budget` seconds (the wait for
        a free runtime included). Lua errors become `LuaFailure`, the budget `LuaTimeout`."""
        if self._free is None:
            self.start()
        assert self._free is not None
        started = time.perf_counter()
        try:
            runtime: Runtime = self._free.get(block=True, timeout=budget) \
                if self._free.empty() else self._free.get_nowait()
        except Empty:
            raise LuaTimeout(hook, budget) from None
        try:
            runtime.start_call(budget - (time.perf_counter() - started), request_id)
            try:
                return use(runtime)
            except runtime.errors as exc:
                message = first_line(exc)
                if TIMEOUT_MARK in message:
                    raise LuaTimeout(hook, budget) from None
                raise LuaFailure(hook, message) from None
        finally:
            runtime.end_call()
            self._free.put(runtime)


def check_script(config: ScriptConfig) -> None:
    """Load the script once in a throw-away runtime; raises `ScriptError` (one line)."""
    if not os.path.isfile(config.script):
        raise ScriptError(f"{config.script}: no such script file")
    Runtime(config, lambda text, request_id: log.info("lua: %s", text))


def script_config(settings: Any) -> ScriptConfig:
    """The script settings (`--luajit-script`, `--luajit-package-path/-cpath`)."""
    return ScriptConfig(settings.luajit_script, settings.luajit_package_path,
                        settings.luajit_package_cpath)
