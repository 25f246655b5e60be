"""A stand-in for Ollama: a real HTTP server speaking Ollama's exact wire format
(OpenAI-compatible /v1 and native /api), with deterministic answers, configurable
reasoning output, delays and injected faults. Used by the tests, the benchmarks and
the bundled demo; run it alone with `python -m bridge.ollama_standin`.
"""

from .cli import main
from .config import Fault, StandInConfig
from .server import RecordedRequest, StandIn

__all__ = ["Fault", "RecordedRequest", "StandIn", "StandInConfig", "main"]
