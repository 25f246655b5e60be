"""The `deepseek-ollama-bridge` command: run the gateway, or one of its tool subcommands."""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

from bridge.core import settings as bridge_settings

# Subcommands: name → "module:function", the function taking the remaining arguments
# and returning an exit status.
SUBCOMMANDS: dict[str, str] = {
    "keys": "bridge.shared_mode.keys_cli:main",
    "cache": "bridge.cache.admin:main",
    "jobs": "bridge.async_jobs.jobs_cli:main",
    "upstreams": "bridge.routing.check_cli:main",
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        module_name, function_name = SUBCOMMANDS[argv[0]].split(":")
        return getattr(importlib.import_module(module_name), function_name)(argv[1:])
    settings = bridge_settings.load_or_exit(argv)
    from bridge.serve.server import check_or_exit, serve

    check_or_exit(settings)
    serve(settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
