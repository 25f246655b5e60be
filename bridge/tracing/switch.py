"""Whether traces are on, and where they go: read without importing the SDK (which only
a worker that traces imports).

Tracing is on with `--otlp-endpoint URL` (the collector's base URL: spans are POSTed to
`URL/v1/traces`) or with the standard `OTEL_EXPORTER_OTLP_ENDPOINT` /
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; `OTEL_SDK_DISABLED=true` turns it off whatever
else says.
"""

from __future__ import annotations

import os
from typing import Mapping

from bridge.core.settings import OTLP_ENDPOINT_VARIABLES, Settings

TRACES_PATH = "/v1/traces"


def enabled(settings: Settings, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether traces are exported: an endpoint given by flag or environment, and the
    SDK not disabled."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return bool(settings.otlp_endpoint) or any(environ.get(name)
                                               for name in OTLP_ENDPOINT_VARIABLES)


def traces_url(base: str) -> str:
    """The URL spans are POSTed to, for a collector at `base`."""
    base = base.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH
