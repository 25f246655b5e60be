"""gunicorn configuration: `gunicorn -c gunicorn.conf.py wsgi:app` in the checkout (or
beside a copy of these two files).

The configuration itself is `bridge.serve.gunicorn_conf`, installed with the package
(`gunicorn -c python:bridge.serve.gunicorn_conf bridge.wsgi:app` from any directory);
its settings come from BRIDGE_* environment variables (see README).
"""

from bridge.serve.gunicorn_conf import *  # noqa: F403 - gunicorn reads this namespace
