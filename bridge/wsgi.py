"""The WSGI application, installed with the package: `bridge.wsgi:app` for gunicorn (with
`-c python:bridge.serve.gunicorn_conf`), configured by the BRIDGE_* environment
variables. Importing it builds the app; gunicorn does that in each worker, after fork.
The checkout's top-level `wsgi.py` imports it."""

from bridge.core.settings import load_or_exit
from bridge.web.app import create_app

app = create_app(load_or_exit(None))
