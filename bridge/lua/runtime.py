"""LuaJIT runtimes for the middleware: loading and checking the script, a per-worker pool
of runtimes each used by one call at a time, and calls held to a time budget and a
memory limit.

Why calls run in the request's own greenlet, not in a thread: a thread hop costs ~70 µs
per call, more than the whole budget for both hooks. Instead every runtime runs with the
JIT off and an instruction-count hook (a compiled loop never calls hooks) that, every
`HOOK_INSTRUCTIONS` instructions, asks Python for the time: past `SLICE` seconds since
the last pause it yields to the gevent loop (`gevent.sleep(0)`), so other requests are
served while a slow script runs; past the call's budget it raises a Lua error that the
script cannot swallow (`pcall`, `xpcall` and `coroutine.resume` pass it on). The script
cannot take the hook away: its `debug` has no `sethook` that works and nothing that reaches
the hook or the bridge's wrappers, and the hook is set again before every call. The runtime
stays usable after a time-out, so the pool never shrinks. A script that keeps running
`GRACE` seconds past its budget all the same gets its worker recycled gracefully (SIGTERM
to itself: gunicorn finishes the other requests and starts a fresh worker).

Memory: lupa's allocator holds each runtime to `--luajit-max-memory`. An allocation past
it fails with LuaJIT's "not enough memory" error, which `pcall` passes on too; the call
fails and its runtime is replaced by a fresh one (what filled it would fill it again), the
old Lua state freed at once. Left out of both limits: one long C call that allocates
little (a huge `string.gsub` on a body within the limit) runs without hooks and holds the
loop for its duration; a C module's own `malloc` is not counted.

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
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import gevent
from gevent.queue import Empty, Queue

log = logging.getLogger("bridge.lua")

SLICE = 0.002                 # seconds Lua may hold the gevent loop before it yields
HOOK_INSTRUCTIONS = 10_000    # VM instructions between two looks at the clock (~20-50 µs)
GRACE = 2.0                   # seconds past the budget before the worker is recycled
TIMEOUT_MARK = "bridge: the Lua time budget of this call is exhausted"
NO_MEMORY = "not enough memory"  # LuaJIT's message when the allocator refuses
REQUIRED = ("HandleServerRequest", "HandleServerResponse")

# Runs in every runtime before the script: the time hook, `print` to the bridge's log,
# the module search paths, and the protection of the hook and of the fatal errors (time
# and memory). Everything the protection calls is a local captured here: a script that
# redefines `error`, `type` or `string.find` cannot disarm it. Returns `arm`, which the
# bridge calls before every call: whatever removed the hook (ffi, a C module), it is back.
PRELUDE = """
local tick, log_line, notice, path, cpath, count, mark, no_memory = ...
local error, type, select, tostring, concat, find = error, type, select, tostring,
    table.concat, string.find
local raw_sethook = debug.sethook
jit.off()
jit.on = function() error("jit.on() is disabled by the bridge: its time budget needs "
                          .. "the interpreter", 2) end
local function budget_hook()
    local verdict = tick()
    if verdict then error(verdict, 0) end
end
local function arm() raw_sethook(budget_hook, "", count) end
arm()
-- The script's `debug` cannot reach the hook (sethook, gethook), the upvalues of the
-- wrappers below (getupvalue, setupvalue, upvaluejoin: the raw pcall) or the registry
-- (where LuaJIT keeps the hook); `debug.debug` would read the worker's stdin.
local ignored = false
local script_debug = {
    traceback = debug.traceback, getinfo = debug.getinfo, getlocal = debug.getlocal,
    getmetatable = debug.getmetatable, setmetatable = debug.setmetatable,
    getfenv = debug.getfenv, setfenv = debug.setfenv,
    gethook = function() return nil end,
    sethook = function()
        if not ignored then
            ignored = true
            notice("debug.sethook() is ignored: the bridge's time budget owns the hook")
        end
    end,
}
debug = script_debug
package.loaded.debug = script_debug
-- Time-outs and memory exhaustion end the call: `pcall` and company pass them on.
local function fatal(err)
    if type(err) ~= "string" then return nil end
    if find(err, mark, 1, true) then return mark end
    if find(err, no_memory, 1, true) then return no_memory end
end
local function pass_fatal(ok, ...)
    if not ok then
        local err = fatal((...))
        if err then error(err, 0) end
    end
    return ok, ...
end
local raw_pcall, raw_xpcall, raw_resume = pcall, xpcall, coroutine.resume
pcall = function(...) return pass_fatal(raw_pcall(...)) end
xpcall = function(f, handler, ...)
    return pass_fatal(raw_xpcall(f, function(err)
        if fatal(err) then return err end
        return handler(err)
    end, ...))
end
coroutine.resume = function(...) return pass_fatal(raw_resume(...)) end
print = function(...)
    local parts = {}
    for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
    log_line(concat(parts, "\\t"))
end
if path ~= "" then package.path = path .. ";" .. package.path end
package.cpath = cpath .. package.cpath
return arm
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


class LuaOutOfMemory(LuaFailure):
    """A hook needed more than its runtime's memory limit; the runtime is replaced."""

    def __init__(self, hook: str, limit: int):
        super().__init__(hook, "out of memory" + (
            f": the script needs more than the {limit / (1 << 20):g} MiB of its runtime "
            "(--luajit-max-memory)" if limit else ""))


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
    max_memory: int = 0  # bytes per runtime; 0: unlimited


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
        # lupa's allocator enforces the limit (it works with the 64-bit LuaJIT of lupa 2.8):
        # an allocation past it fails with LuaJIT's "not enough memory" error.
        self.max_memory = config.max_memory
        self.lua = luajit.LuaRuntime(encoding=None, unpack_returned_tuples=True,
                                     register_eval=False,
                                     max_memory=config.max_memory or None)
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
        self._arm = prelude(_weak(self._tick), _weak(self._print), _weak(self._notice),
                            config.package_path.strip(";").encode(), cpath.encode(),
                            HOOK_INSTRUCTIONS, TIMEOUT_MARK.encode(), NO_MEMORY.encode())
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
        self._arm()

    def end_call(self) -> None:
        self.deadline = float("inf")

    def close(self) -> None:
        """Free the Lua state now, whoever still holds this object."""
        self.request_hook = self.response_hook = self.chunk_hook = None
        self._arm = None
        self.lua = None

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

    def _notice(self, text: bytes) -> None:
        log.warning("lua: %s [%s]", text.decode("utf-8", "replace"), self.request_id or "-")


def _weak(method: Callable[..., Any]) -> Callable[..., Any]:
    """`method` as handed to Lua, without a strong reference to its runtime: the Lua state
    keeps what it is given, and that cycle would keep a discarded runtime's memory alive."""
    ref = weakref.WeakMethod(method)

    def call(*args: Any) -> Any:
        bound = ref()
        return None if bound is None else bound(*args)

    return call


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
        out_of_memory = False
        try:
            try:
                runtime.start_call(budget - (time.perf_counter() - started), request_id)
                return use(runtime)
            except runtime.errors as exc:
                message = first_line(exc)
                if TIMEOUT_MARK in message:
                    raise LuaTimeout(hook, budget) from None
                if isinstance(exc, MemoryError) or NO_MEMORY in message:
                    out_of_memory = True
                    raise LuaOutOfMemory(hook, self.config.max_memory) from None
                raise LuaFailure(hook, message) from None
        finally:
            runtime.end_call()
            self._free.put(self._renew(runtime) if out_of_memory else runtime)

    def _renew(self, runtime: Runtime) -> Runtime:
        """A fresh runtime for one that ran out of memory: whatever filled it (a global
        table, say) would fill it again. The old Lua state is freed at once."""
        try:
            fresh = Runtime(self.config, self.on_print)
        except ScriptError as exc:  # the script changed on disk since the start
            log.error("lua: cannot replace a runtime that ran out of memory: %s", exc)
            return runtime
        runtime.close()
        return fresh


def check_script(config: ScriptConfig) -> None:
    """Load the script once in a throw-away runtime; raises `ScriptError` (one line)."""
    if not os.path.isfile(config.script):
        raise ScriptError(f"{config.script}: no such script file")
    Runtime(config, lambda text, request_id: log.info("lua: %s", text))


def script_config(settings: Any) -> ScriptConfig:
    """The script settings (`--luajit-script`, `--luajit-package-path/-cpath`,
    `--luajit-max-memory`)."""
    return ScriptConfig(settings.luajit_script, settings.luajit_package_path,
                        settings.luajit_package_cpath, settings.luajit_max_memory << 20)
