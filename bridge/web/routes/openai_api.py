"""The OpenAI-compatible surface, `/v1/...`."""

from bridge.web.routes import surface_blueprint

ROUTES = [
    ("POST", "/chat/completions", "chat"),
    ("POST", "/completions", "completions"),
    ("POST", "/embeddings", "embeddings"),
    ("GET", "/models", "models"),
    ("GET", "/async/<fingerprint>", "async"),  # status of an async request
]

blueprint = surface_blueprint("openai_api", "/v1", "openai", ROUTES)
