"""The WSGI entry point for `gunicorn -c gunicorn.conf.py wsgi:app`."""

from bridge.web.app import create_app
from bridge.core.settings import load_or_exit

app = create_app(load_or_exit(None))
