"""The Ollama-native surface, `/api/...`."""

from bridge.web.routes import surface_blueprint

ROUTES = [
    ("POST", "/chat", "chat"),
    ("POST", "/generate", "generate"),
    ("POST", "/embed", "embed"),
    ("GET", "/tags", "tags"),
    ("GET", "/version", "version"),
    ("POST", "/show", "show"),
    ("GET", "/ps", "ps"),
    ("GET", "/async/<fingerprint>", "async"),  # status of an async request
]

blueprint = surface_blueprint("ollama_api", "/api", "ollama", ROUTES)
