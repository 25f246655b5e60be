"""gunicorn's configuration for the bridge, installed with the package:
`gunicorn -c python:bridge.serve.gunicorn_conf bridge.wsgi:app` from any directory.

gunicorn takes the public names of a configuration module as its settings: importing
this module reads the BRIDGE_* environment variables (see README, "Options"), runs the
start-up checks (a bad setting exits with status 2 before anything listens) and defines
the gunicorn settings `gunicorn_options` makes of them, the same as the
`deepseek-ollama-bridge` command uses. The checkout's top-level `gunicorn.conf.py`
imports it.
"""

from bridge.core.settings import load_or_exit
from bridge.serve.server import check_or_exit, gunicorn_options

_settings = load_or_exit(None)
check_or_exit(_settings)
_options = gunicorn_options(_settings)
globals().update(_options)
# what `from bridge.serve.gunicorn_conf import *` (the top-level file) hands gunicorn
__all__ = sorted(_options)
