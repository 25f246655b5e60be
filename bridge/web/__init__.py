"""The HTTP surface: the Flask app, its blueprints (OpenAI `/v1`, Ollama `/api`,
operations) and the glue that turns a Flask request into an exchange and back."""
