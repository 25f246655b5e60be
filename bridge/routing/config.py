"""The upstreams file (`--upstreams`): TOML `[[upstream]]` tables, read and checked.

Every mistake is one line naming the file and the line or the field: a TOML syntax
error, an unknown field, a bad URL, an upstream without model patterns, a duplicate
name, a key written in the file. Keys are never inline (a file like this ends up in
version control): `api_key_env` names an environment variable, `api_key_file` a file.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Callable

from bridge.core.exchange import UpstreamTarget
from bridge.core.settings import UPSTREAM_APIS, Integer, SecretFile, Url

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # also names its lock and bucket files
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
INLINE_KEY_FIELDS = frozenset({"api_key", "key", "token", "authorization", "bearer"})


class UpstreamsError(ValueError):
    """The upstreams file is unusable; the message is one line naming file and place."""


@dataclass(frozen=True)
class Upstream:
    """One `[[upstream]]` table, checked; `target` is what an exchange carries."""

    target: UpstreamTarget
    patterns: tuple[str, ...]
    key_source: str = ""   # where its key comes from (for `upstreams check`), never the key

    @property
    def name(self) -> str:
        return self.target.name

    def serves(self, model: str) -> bool:
        """Whether a client asking for `model` may be sent here."""
        return model in self.target.model_map or any(
            fnmatchcase(model, pattern) for pattern in self.patterns)


@dataclass(frozen=True)
class Upstreams:
    """The whole file: the upstreams in file order."""

    path: str
    upstreams: tuple[Upstream, ...] = field(default_factory=tuple)


def _positive_number(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1_000_000:
        raise ValueError("must be a number above 0 (up to 1000000)")
    return value


# field → (parser of its value, what it must be); parsers raise ValueError
def _string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    return value


def _integer(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be a whole number ({low}-{high})")
        return Integer(low, high)(str(value))
    return parse


def _name(value: Any) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError("must be 1-64 letters, digits, '.', '_' or '-'")
    return value


def _url(value: Any) -> str:
    return Url()(_string(value))


def _patterns(value: Any) -> tuple[str, ...]:
    if (not isinstance(value, list) or not value
            or not all(isinstance(item, str) and item.strip() for item in value)):
        raise ValueError('must be a non-empty list of model patterns, e.g. ["qwen*"]')
    return tuple(value)


def _api(value: Any) -> str:
    if value not in UPSTREAM_APIS:
        raise ValueError(f"must be one of {', '.join(UPSTREAM_APIS)}")
    return value


def _model_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and k and isinstance(v, str) and v for k, v in value.items()):
        raise ValueError('must be a table of model names, e.g. {"gpt-4o-mini" = "qwen2.5:7b"}')
    return dict(value)


def _env_name(value: Any) -> str:
    if not isinstance(value, str) or not _ENV_NAME.match(value):
        raise ValueError("must be the name of an environment variable")
    return value


def _weight(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be a number above 0")
    return _positive_number(str(value))


FIELDS: dict[str, Callable[[Any], Any]] = {
    "name": _name,
    "url": _url,
    "models": _patterns,
    "api": _api,
    "api_key_env": _env_name,
    "api_key_file": _string,
    "max_concurrency": _integer(0, 4096),
    "rate_limit": _integer(0, 65535),
    "timeout_ms": _integer(1000, 86_400_000),
    "weight": _weight,
    "model_map": _model_map,
}
REQUIRED = ("name", "url", "models")


def _line_of(text: str, table: int, key: str | None) -> int | None:
    """The line (1-based) of `key` in the `table`-th `[[upstream]]` (of the table header
    when `key` is None): tomllib reports lines of syntax errors only."""
    lines = text.splitlines()
    seen = -1
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("[[") and stripped.rstrip("]").strip("[ ") == "upstream":
            seen += 1
            if seen == table and key is None:
                return number
        elif seen == table and key is not None and re.match(
                rf"^\s*\"?{re.escape(key)}\"?\s*=", line):
            return number
        elif seen > table:
            break
    return None


def load(path: str, shared_mode: bool = False,
         environ: dict[str, str] | None = None) -> Upstreams:
    """Read and check the file; raises `UpstreamsError`. Keys are read here (from the
    environment or their files): in shared mode an upstream without a key of its own gets
    none, without shared mode the client's credentials."""
    environ = dict(os.environ) if environ is None else environ
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UpstreamsError(f"{path}: cannot read it: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UpstreamsError(f"{path}: TOML syntax error: {exc}") from None
    for key in document:
        if key != "upstream":
            where = _top_line(text, key)
            raise UpstreamsError(f"{path}:{where}: unknown field {key!r} outside the "
                                 "[[upstream]] tables")
    tables = document.get("upstream")
    if not isinstance(tables, list) or not tables:
        raise UpstreamsError(f"{path}: no [[upstream]] table")
    upstreams: list[Upstream] = []
    for index, table in enumerate(tables):
        upstream = _upstream(path, text, index, table, shared_mode, environ)
        if any(other.name == upstream.name for other in upstreams):
            raise UpstreamsError(f"{path}:{_line_of(text, index, 'name')}: name "
                                 f"{upstream.name!r} is used twice")
        upstreams.append(upstream)
    return Upstreams(path, tuple(upstreams))


def _top_line(text: str, key: str) -> int | None:
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("["):
            return None
        if re.match(rf"^\s*\"?{re.escape(key)}\"?\s*=", line):
            return number
    return None


def _upstream(path: str, text: str, index: int, table: dict[str, Any], shared_mode: bool,
              environ: dict[str, str]) -> Upstream:
    def fail(key: str | None, message: str) -> UpstreamsError:
        line = _line_of(text, index, key)
        label = table.get("name") if isinstance(table.get("name"), str) else f"#{index + 1}"
        where = f"{path}:{line}" if line else path
        return UpstreamsError(f"{where}: upstream {label!r}"
                              + (f": field {key!r}" if key else "") + f": {message}")

    values: dict[str, Any] = {}
    for key, value in table.items():
        if key in INLINE_KEY_FIELDS:
            raise fail(key, "keys are not written in this file: give api_key_env (an "
                       "environment variable) or api_key_file")
        parse = FIELDS.get(key)
        if parse is None:
            raise fail(key, f"unknown field (known: {', '.join(FIELDS)})")
        try:
            values[key] = parse(value)
        except ValueError as exc:
            raise fail(key, str(exc)) from None
    for key in REQUIRED:
        if key not in values:
            raise fail(None, f"field {key!r} is missing")
    if "api_key_env" in values and "api_key_file" in values:
        raise fail("api_key_file", "give the key once: api_key_env or api_key_file")
    key: str | None = "" if shared_mode else None
    source = ""
    if "api_key_env" in values:
        source = f"env {values['api_key_env']}"
        key = environ.get(values["api_key_env"], "").strip()
        if not key:
            raise fail("api_key_env", f"the environment variable {values['api_key_env']} "
                       "is not set")
    elif "api_key_file" in values:
        source = f"file {values['api_key_file']}"
        try:
            key = SecretFile()(values["api_key_file"]).reveal()
        except ValueError as exc:
            raise fail("api_key_file", str(exc)) from None
    target = UpstreamTarget(
        name=values["name"], url=values["url"], key=key,
        model_map=values.get("model_map", {}), api=values.get("api", "ollama"),
        max_concurrency=values.get("max_concurrency", 0),
        rate_limit=values.get("rate_limit", 0), timeout_ms=values.get("timeout_ms", 0),
        weight=values.get("weight", 1.0))
    return Upstream(target, values["models"], source)
