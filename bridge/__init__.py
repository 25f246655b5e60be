"""DeepSeek-Ollama Bridge: an OpenAI-compatible caching gateway in front of Ollama."""

__version__ = "0.2.0"
