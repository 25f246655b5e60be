"""Every setting of the bridge, declared once.

Each `Setting` names its flags, environment variable, parser (which also validates the
range), default and help. The command line, the environment reading used under
`gunicorn -c gunicorn.conf.py wsgi:app`, start-up validation and the README's option
table are all derived from `SETTINGS`. Adding a flag is one entry in that list.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
import types
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlsplit

from bridge import __version__
from bridge.core.reasoning import DEFAULT_START_INSIDE_MODELS

PROG = "deepseek-ollama-bridge"
ENV_PREFIX = "BRIDGE_"


class SettingError(ValueError):
    """A setting's value is malformed or out of range; the message is one line."""


# --- value parsers: each takes the raw text, returns the value or raises ValueError ---------


@dataclass(frozen=True)
class Integer:
    low: int
    high: int

    @property
    def allowed(self) -> str:
        return f"{self.low}-{self.high}"

    def __call__(self, text: str) -> int:
        try:
            value = int(text.strip(), 10)
        except ValueError:
            raise ValueError(f"not a whole number (allowed: {self.allowed})") from None
        if not self.low <= value <= self.high:
            raise ValueError(f"out of range (allowed: {self.allowed})")
        return value


@dataclass(frozen=True)
class Fraction:
    """A number from 0 to 1 (a cosine similarity, a ratio)."""

    allowed: str = "0-1"

    def __call__(self, text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"not a number (allowed: {self.allowed})") from None
        if not 0.0 <= value <= 1.0:  # NaN fails too
            raise ValueError(f"out of range (allowed: {self.allowed})")
        return value


@dataclass(frozen=True)
class Text:
    allowed: str = "any text"
    required: bool = False

    def __call__(self, text: str) -> str:
        if self.required and not text.strip():
            raise ValueError("must not be empty")
        return text


@dataclass(frozen=True)
class Choice:
    options: tuple[str, ...]

    @property
    def allowed(self) -> str:
        return "|".join(self.options)

    def __call__(self, text: str) -> str:
        if text not in self.options:
            raise ValueError(f"not one of {self.allowed}")
        return text


@dataclass(frozen=True)
class Url:
    allowed: str = "http(s)://host[:port][/path]"

    def __call__(self, text: str) -> str:
        parts = urlsplit(text.strip())
        if parts.scheme not in ("http", "https") or not _is_host(parts.hostname or ""):
            raise ValueError(f"not a URL (allowed: {self.allowed})")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError(f"bad port (allowed: {self.allowed})") from None
        return text.strip().rstrip("/")


@dataclass(frozen=True)
class HostPort:
    allowed: str = "HOST:PORT, port 0-65535"

    def __call__(self, text: str) -> tuple[str, int]:
        host, sep, port = text.strip().rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if (not sep or not _is_host(host) or not port.isdigit()
                or not 0 <= int(port) <= 65535):
            raise ValueError(f"not an address (allowed: {self.allowed})")
        return host, int(port)


_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def _is_host(host: str) -> bool:
    """An IP address or a DNS host name (RFC 1123 labels)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    return 0 < len(host) <= 253 and all(_HOST_LABEL.match(label)
                                        for label in host.removesuffix(".").split("."))


@dataclass(frozen=True)
class Switch:
    allowed: str = "on/off (1/0, true/false, yes/no)"

    def __call__(self, text: str) -> bool:
        word = text.strip().lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"not a switch (allowed: {self.allowed})")


class Secret:
    """A secret value (an API key): its repr and str never show it; `reveal()` does."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__


def _check_secret(value: str) -> Secret:
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ValueError("must not contain spaces or control characters")
    return Secret(value)


@dataclass(frozen=True)
class SecretText:
    """A secret given directly; error messages never echo it (see `Setting.is_secret`)."""

    allowed: str = "printable text without spaces"

    def __call__(self, text: str) -> Secret:
        return _check_secret(text)


@dataclass(frozen=True)
class SecretFile:
    """A secret read from a file (so it is not in the process list); the value is the path."""

    allowed: str = "a readable file holding the key"

    def __call__(self, text: str) -> Secret:
        try:
            with open(text.strip(), encoding="utf-8") as handle:
                content = handle.read(65536)
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read the file: {getattr(exc, 'strerror', None) or exc}"
                             ) from None
        try:
            return _check_secret(content)
        except ValueError as exc:
            raise ValueError(f"the file's content {exc}") from None


REDIS_SCHEMES = ("redis", "rediss", "unix")
# The APIs an upstream may speak (`--upstream-api`, `api` of a routed upstream), each
# served by one kind of `bridge.surfaces.crossing`.
UPSTREAM_APIS = ("ollama", "openai", "anthropic")
BUDGET_PERIODS = ("day", "week", "month")  # UTC; a week from Monday, a calendar month
MAX_BUDGET_TOKENS = 10**15


@dataclass(frozen=True)
class RedisUrl(SecretText):
    """A Redis URL; it may carry a password, so it is held and reported like a secret."""

    allowed: str = "redis://[:PASSWORD@]HOST[:PORT][/DB], rediss://… or unix:///PATH[?db=DB]"

    def __call__(self, text: str) -> Secret:
        parts = urlsplit(text.strip())
        if parts.scheme not in REDIS_SCHEMES:
            raise ValueError("not a Redis URL")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError("bad port") from None
        if parts.scheme == "unix" and not parts.path:
            raise ValueError("a unix:// URL needs the socket's path")
        if parts.scheme != "unix" and not _is_host(parts.hostname or ""):
            raise ValueError("no host")
        database = parts.path.strip("/") if parts.scheme != "unix" else ""
        if database and not database.isdigit():
            raise ValueError("the database is a number (redis://HOST:PORT/DB)")
        return _check_secret(text)


@dataclass(frozen=True)
class Pattern:
    allowed: str = "a regular expression; empty = none"

    def __call__(self, text: str) -> str:
        try:
            re.compile(text)
        except re.error as exc:
            raise ValueError(f"not a regular expression ({exc})") from None
        return text


@dataclass(frozen=True)
class Setting:
    """One setting: its flags, parser, default and help, from which everything else comes."""

    name: str
    flags: tuple[str, ...]
    help: str
    parse: Callable[[str], Any] = Text()
    default: Any = None
    metavar: str | None = None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def is_switch(self) -> bool:
        return isinstance(self.parse, Switch)

    @property
    def is_secret(self) -> bool:
        return isinstance(self.parse, SecretText)

    @property
    def allowed(self) -> str:
        return getattr(self.parse, "allowed", "")

    @property
    def label(self) -> str:
        return self.flags[-1]

    def shown_default(self) -> str:
        if self.is_switch:
            return "off" if not self.default else "on"
        if self.default is None:
            return ""
        if isinstance(self.default, tuple):
            return ":".join(str(part) for part in self.default)
        return str(self.default)


def _cpu_count() -> int:
    return os.cpu_count() or 1


SETTINGS: list[Setting] = [
    # --- core gateway ------------------------------------------------------------------
    Setting("debug", ("-d", "--debug"), "verbose debug logs tracing requests and responses",
            Switch(), False),
    Setting("listen", ("-l", "--listen"), "address the bridge listens on",
            HostPort(), ("127.0.0.1", 3000), "HOST:PORT"),
    Setting("ollama", ("-o", "--ollama"), "base URL of the upstream (Ollama or any "
            "OpenAI-compatible API)", Url(), "http://127.0.0.1:11434", "URL"),
    Setting("upstream_api", ("--upstream-api",), "the API the -o upstream speaks: ollama, "
            "openai (any OpenAI-compatible API) or anthropic (Claude's Messages API); what "
            "it does not speak is translated (see Protocol translation)",
            Choice(UPSTREAM_APIS), "ollama", "API"),
    Setting("upstreams", ("--upstreams",), "TOML file of [[upstream]] tables: route by "
            "model to several upstreams, balance, fail over (see Routing); models no "
            "pattern matches go to -o when -o is given, else get 404",
            Text("a file path"), None, "FILE"),
    Setting("timeout", ("-t", "--timeout"), "timeout of each upstream HTTP request, "
            "connect + whole response (streams too), in ms", Integer(1000, 86_400_000),
            300_000, "MS"),
    Setting("connect_timeout", ("--connect-timeout",), "longest wait in ms for the upstream "
            "to accept a connection, within -t (a black-holed host fails fast)",
            Integer(100, 86_400_000), 10_000, "MS"),
    Setting("retry_attempts", ("-a", "--retry-attempts"), "max retries after a failed "
            "upstream call; 0 = none", Integer(0, 1024), 0, "N"),
    Setting("retry_min_interval", ("-i", "--retry-min-interval"), "first retry wait in ms, "
            "grows exponentially", Integer(50, 300_000), 500, "MS"),
    Setting("retry_max_interval", ("-m", "--retry-max-interval"), "cap of the exponential "
            "back-off in ms", Integer(50, 300_000), 10_000, "MS"),
    Setting("workers", ("-w", "--workers"), "gevent worker processes (default: CPU count)",
            Integer(1, 256), None, "N"),
    Setting("max_body_size", ("--max-body-size",), "largest accepted request body in bytes",
            Integer(1024, 1 << 30), 16 << 20, "BYTES"),
    Setting("body_read_timeout", ("--body-read-timeout",), "longest time in ms a client may "
            "take to send its whole request body; slower bodies get 408",
            Integer(100, 3_600_000), 30_000, "MS"),
    Setting("graceful_timeout", ("--graceful-timeout",), "on stop, how long in ms requests "
            "and streams in progress may take to finish; streams still running are then "
            "ended with an error event", Integer(1000, 3_600_000), 30_000, "MS"),
    Setting("drain_delay", ("--drain-delay",), "on stop, how long in ms the bridge still "
            "accepts and serves new requests while /ready answers 503, so that load balancers "
            "take it out first; the graceful timeout starts after it",
            Integer(0, 600_000), 5_000, "MS"),
    Setting("upstream_pool_size", ("--upstream-pool-size",), "upstream connections kept "
            "per worker", Integer(1, 10_000), 256, "N"),
    # --- think filter (bridge/think/) ---------------------------------------------------
    Setting("disable_think_filter", ("--disable-think-filter",), "turn off removal of "
            "<think>...</think> and reasoning fields from responses", Switch(), False),
    Setting("keep_reasoning", ("--keep-reasoning",), "deliver the reasoning to requests "
            "that say nothing of it, as reasoning and reasoning_content (OpenAI API) or "
            "thinking (Ollama API); a request that asks for it always gets it",
            Switch(), False),
    Setting("think_start_models", ("--think-start-models",), "models (regex on the name) "
            "whose output may start inside reasoning, with only </think> shown: the last "
            "resort when neither the request, the upstream nor the model's earlier answers "
            "tell (see The think filter)",
            Pattern(), DEFAULT_START_INSIDE_MODELS, "REGEX"),
    Setting("think_heartbeat", ("--think-heartbeat",), "while the think filter removes "
            "reasoning from a stream and has nothing to send, an empty frame of the stream's "
            "own shape goes out at least this often, in ms, so that proxies (nginx's 60 s "
            "read timeout) and clients see a thinking model, not a dead bridge",
            Integer(50, 3_600_000), 10_000, "MS"),
    # --- enterprise shared mode (bridge/shared_mode/) --------------------------------------
    Setting("enable_shared_mode", ("--enable-shared-mode",), "send every upstream request "
            "with the bridge's own key (--api-key), never the client's credentials; once "
            "client keys exist (`keys create`), clients must send one", Switch(), False),
    Setting("api_key", ("--api-key",), "the upstream key used in shared mode (prefer the "
            "environment variable or --api-key-file: flags show in the process list)",
            SecretText(), None, "KEY"),
    Setting("api_key_file", ("--api-key-file",), "file holding the upstream key for shared "
            "mode", SecretFile(), None, "FILE"),
    Setting("state_dir", ("--state-dir",), "directory of the bridge's state (the client "
            "key store, the usage ledger)", Text(required=True), "./state", "DIR"),
    Setting("entitlement_ttl", ("--entitlement-ttl",), "how long in ms what an upstream "
            "said of a client's credentials for a model (a model call's status, or a "
            "probe that costs no generation) decides whether that client is served "
            "stored answers; hits renew it in the background",
            Integer(1000, 86_400_000), 300_000, "MS"),
    Setting("cache_per_client_key", ("--cache-per-client-key",), "in shared mode, keep a "
            "separate cache per client key instead of one shared by all clients",
            Switch(), False),
    # --- multi-tier response cache (bridge/cache) -----------------------------------
    Setting("enable_cache", ("--enable-cache",), "cache identical model requests (memory "
            "tier per worker over a disk tier shared by all workers)", Switch(), False),
    Setting("cache_dir", ("--cache-dir",), "directory of the persistent cache file",
            Text("a directory path", required=True), "./cache", "DIR"),
    Setting("cache_ttl", ("--cache-ttl",), "time after which a cached response expires, "
            "in ms", Integer(30_000, 86_400_000), 30_000, "MS"),
    Setting("cache_max_entries", ("--cache-max-entries",), "max entries on disk; the oldest "
            "go first when full", Integer(4500, 1_000_000), 65535, "N"),
    Setting("cache_hot_threshold", ("--cache-hot-threshold",), "initial hot-promotion "
            "threshold in requests per minute (adapts at run time)",
            Integer(1, 100_000), 12, "N"),
    Setting("cache_memory_entries", ("--cache-memory-entries",), "entries of the in-memory "
            "tier of each worker; 0 = no memory tier", Integer(0, 1_000_000), 8192, "N"),
    Setting("cache_memory_bytes", ("--cache-memory-bytes",), "byte budget of the in-memory "
            "tier of each worker, counting what is derived from entries (the least recently "
            "used go first); 0 = no memory tier", Integer(0, 1 << 40), 64 << 20, "BYTES"),
    # --- semantic cache (bridge/semantic_cache) -------------------------------------------
    Setting("semantic_cache_model", ("--semantic-cache-model",), "embedding model (asked "
            "through the upstream) that turns on the semantic cache: a question asked in "
            "other words is answered from the cache (needs --enable-cache)",
            Text("a model name", required=True), None, "NAME"),
    Setting("semantic_cache_threshold", ("--semantic-cache-threshold",), "least cosine "
            "similarity of the last user messages for a semantic hit (see the README before "
            "lowering it)", Fraction(), 0.85, "SIMILARITY"),
    Setting("semantic_cache_timeout", ("--semantic-cache-timeout",), "longest wait in ms for "
            "the embedding of a question; a slower one makes the request a plain miss",
            Integer(100, 60_000), 2_000, "MS"),
    Setting("semantic_cache_max_entries", ("--semantic-cache-max-entries",), "max entries "
            "of the semantic index; the oldest go first when full",
            Integer(100, 10_000_000), 100_000, "N"),
    # --- traffic control and observability ------------------------------------------------
    Setting("rate_limit", ("-r", "--rate-limit"), "max upstream calls per second for the whole "
            "instance (token bucket, burst N); 0 = unlimited", Integer(0, 65535), 0, "N"),
    Setting("rate_limit_wait", ("--rate-limit-wait",), "longest wait in ms for a rate-limit "
            "token before answering 429; 0 = answer at once", Integer(0, 600_000), 0, "MS"),
    Setting("max_concurrency", ("--max-concurrency",), "max upstream requests in flight for "
            "the whole instance (match OLLAMA_NUM_PARALLEL); 0 = unlimited",
            Integer(0, 4096), 0, "N"),
    Setting("max_queue", ("--max-queue",), "requests that may wait for a free slot when "
            "--max-concurrency is reached; more get 503", Integer(0, 10_000), 100, "N"),
    Setting("max_queue_wait", ("--max-queue-wait",), "longest wait in ms for a free slot "
            "before answering 503", Integer(0, 3_600_000), 30_000, "MS"),
    Setting("metrics_key", ("--metrics-key",), "bearer key that /metrics requires "
            "(`Authorization: Bearer KEY`); unset = /metrics is open to anyone who can "
            "reach the port", SecretText(), None, "KEY"),
    Setting("otlp_endpoint", ("--otlp-endpoint",), "send OpenTelemetry traces (OTLP/HTTP, "
            "POST URL/v1/traces) to this collector, a span per model request; unset = no "
            "traces unless OTEL_EXPORTER_OTLP_ENDPOINT is set", Url(), None, "URL"),
    # --- operator's console (bridge/console) ---------------------------------------------
    Setting("disable_console", ("--disable-console",), "turn off the operator's console "
            "(the status page at / and /console, and /status)", Switch(), False),
    Setting("admin_key", ("--admin-key",), "key that opens the console to clients other "
            "than loopback ones (`Authorization: Bearer KEY`, or its login form); unset = "
            "loopback clients only", SecretText(), None, "KEY"),
    Setting("request_log_size", ("--request-log-size",), "requests each worker keeps for "
            "the console's request log (time, key name, API, model, status, tokens, cache "
            "result, latency, request id; merged by /status/requests); 0 = no request log",
            Integer(0, 100_000), 200, "N"),
    Setting("request_log_bodies", ("--request-log-bodies",), "keep each logged request's "
            "prompt and answer too (clipped, credentials masked): they are then held in "
            "memory and written to the instance's run directory", Switch(), False),
    # --- async requests (bridge/async_jobs) ------------------------------------------------
    Setting("enable_async_request", ("--enable-async-request",), "answer model requests "
            "carrying request_fingerprint with 202 Accepted and run them as durable jobs "
            "(kept in --state-dir)", Switch(), False),
    Setting("async_max_queued", ("--async-max-queued",), "async jobs that may wait to run; "
            "more get 503 with Retry-After", Integer(1, 1_000_000), 1000, "N"),
    Setting("async_result_ttl", ("--async-result-ttl",), "how long an async job's result "
            "(or final error) is kept, in ms (default: --cache-ttl)",
            Integer(1000, 2_592_000_000), None, "MS"),
    Setting("log_format", ("--log-format",), "log lines as plain text or JSON (one object "
            "per line, for log shippers)", Choice(("text", "json")), "text", "FORMAT"),
    # --- usage ledger and budgets (bridge/usage, bridge/budgets) ----------------------------
    Setting("disable_usage_ledger", ("--disable-usage-ledger",), "turn off the usage "
            "ledger (tokens per client key, model and day in --state-dir; `keys usage`) "
            "and with it token budgets", Switch(), False),
    Setting("usage_retention_days", ("--usage-retention-days",), "days the usage ledger "
            "keeps its daily rows", Integer(1, 3650), 400, "DAYS"),
    Setting("budget_tokens", ("--budget-tokens",), "token budget (prompt + completion of "
            "upstream calls) per --budget-period of every client key (or credential) "
            "without one of its own; 0 = none", Integer(0, MAX_BUDGET_TOKENS), 0, "N"),
    Setting("budget_period", ("--budget-period",), "period of --budget-tokens, in UTC "
            "(week: from Monday; month: calendar month)", Choice(BUDGET_PERIODS),
            "month", "PERIOD"),
    # --- scale-out on Redis (bridge/core/redis_link.py) ----------------------------------
    Setting("redis_url", ("--redis-url",), "share the cache, rate limit, concurrency cap, "
            "async jobs and key revocations of several bridges through this Redis; unset = "
            "each instance keeps its own", RedisUrl(), None, "URL"),
    Setting("redis_prefix", ("--redis-prefix",), "prefix of every Redis key the bridge uses, "
            "so that several deployments can share one Redis",
            Text("any text", required=True), "bridge", "PREFIX"),
    Setting("redis_timeout", ("--redis-timeout",), "longest wait in ms for one Redis call "
            "(connect or reply) before this instance serves with its own backends for a "
            "second", Integer(5, 5_000), 50, "MS"),
    # --- LuaJIT middleware (bridge/lua) --------------------------------------------------
    Setting("enable_luajit", ("--enable-luajit",), "run the Lua script's HandleServerRequest "
            "on every request and HandleServerResponse on every response", Switch(), False),
    Setting("luajit_script", ("--luajit-script",), "the Lua middleware script, checked at "
            "start", Text("a file path", required=True), "./plugin.lua", "FILE"),
    Setting("luajit_instances_power", ("--luajit-instances-power",), "LuaJIT runtimes per "
            "worker, as a power of two (P=3: 8 runtimes)", Integer(1, 8), 1, "P"),
    Setting("luajit_package_path", ("--luajit-package-path",), "where `require` finds Lua "
            "modules (package.path templates, ';'-separated), before LuaJIT's default",
            Text(), "", "PATHS"),
    Setting("luajit_package_cpath", ("--luajit-package-cpath",), "where `require` finds C "
            "modules (package.cpath templates), before LuaJIT's default and the system's "
            "lua/5.1 directories", Text(), "", "PATHS"),
    Setting("luajit_timeout", ("--luajit-timeout",), "time budget of each Lua hook call in "
            "ms; a call over it answers 504", Integer(1, 600_000), 1000, "MS"),
    Setting("luajit_max_memory", ("--luajit-max-memory",), "memory limit of each LuaJIT "
            "runtime in MiB (allow a few times --max-body-size); a call that needs more "
            "answers 500 and its runtime is replaced; 0 = unlimited",
            Integer(0, 1 << 20), 64, "MIB"),
]

_BY_NAME = {setting.name: setting for setting in SETTINGS}


class Settings(types.SimpleNamespace):
    """The resolved value of every setting, as attributes named after `Setting.name`,
    and `explicit`: the names of those given by a flag or an environment variable."""

    explicit: frozenset[str] = frozenset()

    def replace(self, **changes: Any) -> "Settings":
        values = dict(vars(self))
        unknown = set(changes) - set(values)
        if unknown:
            raise KeyError(f"unknown settings: {sorted(unknown)}")
        values.update(changes)
        return Settings(**values)

    @property
    def worker_count(self) -> int:
        return self.workers or _cpu_count()


def _parse(setting: Setting, raw: str, source: str) -> Any:
    try:
        return setting.parse(raw)
    except ValueError as exc:
        message = str(exc)
        if setting.allowed and setting.allowed not in message:
            message += f" (allowed: {setting.allowed})"
        shown = "(hidden)" if setting.is_secret else repr(raw)
        raise SettingError(f"{source}: invalid value {shown}: {message}") from None


def from_env(environ: Mapping[str, str] | None = None,
             settings: Iterable[Setting] = SETTINGS) -> dict[str, Any]:
    """The settings given by environment variables, parsed and validated."""
    environ = os.environ if environ is None else environ
    given = {}
    for setting in settings:
        if setting.env in environ:
            source = f"{setting.env} ({setting.label})"
            given[setting.name] = _parse(setting, environ[setting.env], source)
    return given


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line on stderr and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def tool_parser(tool: str, description: str, names: Iterable[str],
                commands: bool = True) -> tuple[argparse.ArgumentParser, Any]:
    """The parser of a tool subcommand (`keys`, `cache`, `jobs`, …) with the named
    settings as flags (read like the server's: flags, then `BRIDGE_*`, then defaults), a
    bad command line answered in one line with exit status 2, and, with `commands`, its
    own required sub-commands (the second value; else None)."""
    parser = _OneLineParser(prog=f"{PROG} {tool}", description=description)
    add_arguments(parser, names)
    sub = (parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                 parser_class=_OneLineParser) if commands else None)
    return parser, sub


def tool_args(parser: argparse.ArgumentParser, argv: Iterable[str],
              names: Iterable[str]) -> tuple[argparse.Namespace, "Settings"]:
    """A tool's command line and the named settings it resolves to; a bad value is one
    line and exit status 2, as for the server."""
    args = parser.parse_args(list(argv))
    try:
        return args, resolve(args, names)
    except SettingError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog=PROG,
        description="OpenAI-compatible caching gateway in front of Ollama and other LLM APIs.",
        add_help=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-h", "--help", action="help", help="show this help and exit")
    parser.add_argument("-V", "--version", action="version", version=f"{PROG} {__version__}")
    add_arguments(parser, [setting.name for setting in SETTINGS])
    return parser


def add_arguments(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    """Add the flags of the named settings to `parser` (also used by tool subcommands,
    so that e.g. `keys --state-dir` is the same setting as the server's)."""
    for setting in (_BY_NAME[name] for name in names):
        extra = [f"env {setting.env}"]
        if setting.shown_default():
            extra.append(f"default {setting.shown_default()}")
        if setting.allowed and not setting.is_switch:
            extra.append(f"allowed {setting.allowed}")
        text = f"{setting.help} [{'; '.join(extra)}]".replace("%", "%%")
        if setting.is_switch:
            parser.add_argument(*setting.flags, dest=setting.name, action="store_true",
                                default=argparse.SUPPRESS, help=text)
        else:
            parser.add_argument(*setting.flags, dest=setting.name, default=argparse.SUPPRESS,
                                metavar=setting.metavar or "VALUE", help=text)


def resolve(parsed: argparse.Namespace, names: Iterable[str],
            environ: Mapping[str, str] | None = None) -> Settings:
    """The named settings (only those): defaults, then environment, then the flags in
    `parsed` that `add_arguments` declared (a flag not given is absent from `parsed`).
    Used by the server's `load` and by tool subcommands alike."""
    names = list(names)
    from_environ = from_env(environ, [_BY_NAME[name] for name in names])
    values = {name: from_environ.get(name, _BY_NAME[name].default) for name in names}
    explicit = set(from_environ)
    for name in names:
        if hasattr(parsed, name):
            raw = getattr(parsed, name)
            setting = _BY_NAME[name]
            values[name] = bool(raw) if setting.is_switch else _parse(
                setting, raw, "/".join(setting.flags))
            explicit.add(name)
    settings = Settings(**values)
    settings.explicit = frozenset(explicit)
    return settings


def load(argv: Iterable[str] | None = None,
         environ: Mapping[str, str] | None = None) -> Settings:
    """Resolve every setting: defaults, then environment, then command line.

    Raises `SettingError` with a one-line message naming the flag, the value and the
    allowed range. `-h`/`-V` and unknown flags exit through argparse.
    """
    parsed = (build_parser().parse_args(list(argv)) if argv is not None
              else argparse.Namespace())
    settings = resolve(parsed, _BY_NAME, environ)
    check(settings)
    check_otlp_environment(os.environ if environ is None else environ)
    return settings


def upstream_key(settings: Settings) -> str:
    """The bridge's own upstream key (shared mode), from `--api-key` or its file; "" if none."""
    secret = settings.api_key or settings.api_key_file
    return secret.reveal() if secret else ""


def configured_secrets(settings: Settings) -> list[str]:
    """Every secret the settings hold (the upstream key, the metrics key, …): what the log
    redaction removes wherever it appears."""
    values = (getattr(settings, setting.name, None) for setting in SETTINGS)
    return [value.reveal() for value in values if isinstance(value, Secret) and value]


def check(settings: Settings) -> None:
    """Rules that involve more than one setting."""
    if settings.retry_min_interval > settings.retry_max_interval:
        raise SettingError(
            f"--retry-min-interval: invalid value '{settings.retry_min_interval}': "
            f"must not exceed --retry-max-interval ({settings.retry_max_interval})")
    if settings.api_key and settings.api_key_file:
        raise SettingError("--api-key-file: give the upstream key once: either --api-key "
                           "(or BRIDGE_API_KEY) or --api-key-file, not both")
    if settings.semantic_cache_model and not settings.enable_cache:
        raise SettingError("--semantic-cache-model: the semantic cache answers from the "
                           "response cache: add --enable-cache")
    if settings.enable_shared_mode and not (settings.api_key or settings.api_key_file):
        raise SettingError("--enable-shared-mode: needs the upstream key: give --api-key, "
                           "BRIDGE_API_KEY or --api-key-file")


# the standard variables that, like --otlp-endpoint, turn traces on (bridge/tracing)
OTLP_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def check_otlp_environment(environ: Mapping[str, str]) -> None:
    """An OTLP endpoint given by the environment is a URL, as --otlp-endpoint's is: else
    every batch of spans would fail to export, each with a warning, and none arrive."""
    for name in OTLP_ENDPOINT_VARIABLES:
        value = environ.get(name)
        if value:
            try:
                Url()(value)
            except ValueError as exc:
                raise SettingError(f"{name}: invalid value {value!r}: {exc}") from None


def load_or_exit(argv: Iterable[str] | None = None,
                 environ: Mapping[str, str] | None = None) -> Settings:
    try:
        return load(argv, environ)
    except SettingError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def defaults() -> Settings:
    """Every setting at its default (for tests and tools)."""
    return Settings(**{setting.name: setting.default for setting in SETTINGS})


def markdown_table() -> str:
    """The README's option table, generated from `SETTINGS`."""
    rows = ["| flag | environment | meaning | allowed | default |", "|---|---|---|---|---|"]
    for setting in SETTINGS:
        flags = ", ".join(f"`{flag}`" for flag in setting.flags)
        if not setting.is_switch:
            flags += f" `{setting.metavar or 'VALUE'}`"
        allowed = "" if setting.is_switch else setting.allowed
        cells = [flags, f"`{setting.env}`", setting.help, allowed, setting.shown_default()]
        rows.append("| " + " | ".join(_table_cell(cell) for cell in cells) + " |")
    return "\n".join(rows)


def _table_cell(text: str) -> str:
    # A literal "|" (in a regex default, say) would end the cell; "<" would start HTML.
    return text.replace("|", "\\|").replace("<", "&lt;")


if __name__ == "__main__":
    print(markdown_table())
