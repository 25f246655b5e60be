"""`wsgi:app` for `gunicorn -c gunicorn.conf.py wsgi:app` run in the checkout (or beside a
copy of these two files); the app itself is `bridge.wsgi`, installed with the package."""

from bridge.wsgi import app

__all__ = ["app"]
