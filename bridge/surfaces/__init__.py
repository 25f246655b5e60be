"""Client APIs served by translation to Ollama's native chat, one module each: the
Anthropic Messages API (`anthropic`); the contract they follow (`adapter`) and the edge
that applies them around the pipeline (`edge`). This registry says which APIs there
are and which paths each serves: the web layer's routes, the error shape of a path, and
the label of an API in metrics, logs and the console all come from it.
"""

from __future__ import annotations

from bridge.surfaces.adapter import Surface
from bridge.surfaces.anthropic import Anthropic
from bridge.surfaces.responses import Responses

ADAPTERS: dict[str, Surface] = {surface.name: surface for surface in (Anthropic(), Responses())}
NAMES = tuple(ADAPTERS)
# (method, path, api) of every route an adapter serves
ROUTES = tuple((method, path, surface.name) for surface in ADAPTERS.values()
               for method, path in surface.routes)
_PATHS = {path: api for _, path, api in ROUTES}


def adapter_for(api: str) -> Surface | None:
    """The adapter of a client API; None for the native surfaces ("openai", "ollama")."""
    return ADAPTERS.get(api)


def api_of(path: str) -> str | None:
    """The translated API a request path (or route template) belongs to, if any."""
    return _PATHS.get(path)


def client_api(path: str) -> str:
    """The API a request path (or route template) belongs to: a translated one, else
    "openai" (/v1) or "ollama" (/api); "" for the operations' routes."""
    translated = api_of(path)
    if translated:
        return translated
    if path.startswith("/v1/"):
        return "openai"
    if path.startswith("/api/"):
        return "ollama"
    return ""
