"""gunicorn configuration: `gunicorn -c gunicorn.conf.py wsgi:app`.

The bridge's settings come from BRIDGE_* environment variables (see README), exactly
as `deepseek-ollama-bridge` flags would set them.
"""

from bridge.serve.server import check_or_exit, gunicorn_options
from bridge.core.settings import load_or_exit

_settings = load_or_exit(None)
check_or_exit(_settings)
globals().update(gunicorn_options(_settings))
