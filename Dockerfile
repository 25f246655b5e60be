# The bridge as a container: gunicorn with gevent workers, configured by BRIDGE_* variables.
#   docker build -t deepseek-ollama-bridge .
#   docker run -p 127.0.0.1:3000:3000 -e BRIDGE_OLLAMA=http://ollama:11434 deepseek-ollama-bridge
# See deploy/docker-compose.yml for the bridge with Ollama, Prometheus and Grafana.

# --- build: install the package and its dependencies into /install ---------------------
FROM python:3.12-slim-bookworm AS build
WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY bridge ./bridge
# gevent, greenlet and lupa come as manylinux wheels, the rest is pure Python: no compiler.
RUN pip install --no-cache-dir --prefer-binary --prefix=/install .

# --- run ------------------------------------------------------------------------------
FROM python:3.12-slim-bookworm
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BRIDGE_LISTEN=0.0.0.0:3000 \
    BRIDGE_CACHE_DIR=/var/lib/bridge/cache \
    BRIDGE_STATE_DIR=/var/lib/bridge/state
RUN groupadd --system --gid 10001 bridge \
    && useradd --system --uid 10001 --gid bridge --home-dir /var/lib/bridge \
       --no-create-home --shell /usr/sbin/nologin bridge \
    && mkdir -p /var/lib/bridge/cache /var/lib/bridge/state \
    && chown -R bridge:bridge /var/lib/bridge
COPY --from=build /install /usr/local
WORKDIR /app
COPY gunicorn.conf.py wsgi.py plugin.lua ./
USER 10001:10001
# The disk tier of the cache and the client-key store outlive the container.
VOLUME ["/var/lib/bridge/cache", "/var/lib/bridge/state"]
EXPOSE 3000
# /health never calls the upstream: a slow model server does not restart the bridge.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/health', timeout=2)"]
# gunicorn is PID 1 (exec form, no shell): it gets SIGTERM itself and drains (README,
# "Deploying"); give it --drain-delay + --graceful-timeout + a margin (docker stop -t 45).
STOPSIGNAL SIGTERM
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
