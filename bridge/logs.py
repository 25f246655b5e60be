"""Logging set-up for the bridge's processes."""

from __future__ import annotations

import logging
import sys

from bridge.settings import Settings

FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"


def configure(settings: Settings) -> None:
    """Route the bridge's loggers to stderr at INFO (DEBUG with `-d`); idempotent."""
    root = logging.getLogger("bridge")
    root.setLevel(logging.DEBUG if settings.debug else logging.INFO)
    if not any(getattr(handler, "_bridge", False) for handler in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._bridge = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.propagate = False
