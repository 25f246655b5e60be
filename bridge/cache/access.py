"""Who may be served a stored answer: only a client the upstream would have answered.

Without shared mode the bridge forwards each client's credentials (`Authorization`,
`x-api-key`, `api-key`, the query string) and the upstream checks them, so a cache hit,
answered before anyone checks, must go only to a client whose credentials the upstream
accepted. The cache remembers the credentials behind every 2xx of a model call for
`CREDENTIAL_TTL` seconds (renewed by each 2xx, forgotten at once on a 401 or 403), as
an HMAC-SHA256 with a secret salt of this instance: never the credentials themselves.
A request without any credentials answered 2xx proves that the upstream checks nothing
(a local Ollama): then every client may share, as the cache did before it learned this.

A client whose credentials are not known to be good is a miss that goes upstream on its
own: it neither reads the tiers nor joins another client's single flight, so the
upstream's own 401 reaches it. In shared mode the shared-mode stage has already decided
who may ask (and the upstream only ever sees the bridge's key): everyone shares.

The memory is instance-wide, in the run directory that every worker shares: a file per
known credential under `cache-credentials/`, its mtime the last time it was accepted.
The salt is made there by the first worker, so it lives and dies with the instance.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from pathlib import Path

from bridge.core import instance
from bridge.core.exchange import Exchange
from bridge.core.redaction import CREDENTIAL_HEADERS

log = logging.getLogger("bridge.cache")

CREDENTIAL_TTL = 300.0   # seconds a credential the upstream accepted is trusted without asking
SWEEP_INTERVAL = 60.0    # how often forgotten credentials' files are removed
_SALT_FILE = "cache-credential-salt"
_DIRECTORY = "cache-credentials"
_DENIED = (401, 403)


def credential_text(headers: dict[str, str], query: str) -> str:
    """Everything in a request that an upstream may read as credentials."""
    return "\n".join([*(headers.get(name, "") for name in CREDENTIAL_HEADERS), query])


ANONYMOUS = credential_text({}, "")


def _salt(run_dir: Path) -> bytes:
    """The instance's secret salt, created once by whichever worker comes first."""
    path = run_dir / _SALT_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(100):  # the creator may not have written it yet (bounded)
            salt = path.read_bytes()
            if salt:
                return salt
            time.sleep(0.01)
        raise RuntimeError(f"{path} stays empty") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(os.urandom(32))
    return path.read_bytes()


class Access:
    """The credentials the upstream accepted, shared by the workers of this instance."""

    def __init__(self, everyone: bool):
        self.everyone = everyone  # shared mode: the shared-mode stage decides who may ask
        self._directory: Path | None = None
        self._salt = b""
        self._swept = 0.0

    def start(self) -> None:
        if self.everyone:
            return
        run_dir = instance.directory()
        self._salt = _salt(run_dir)
        self._directory = run_dir / _DIRECTORY
        self._directory.mkdir(exist_ok=True)

    def _path(self, credentials: str) -> Path:
        assert self._directory is not None, "Access.start() first"
        digest = hmac.new(self._salt, credentials.encode("utf-8", "surrogatepass"),
                          hashlib.sha256).hexdigest()
        return self._directory / digest

    def _known(self, credentials: str, now: float) -> bool:
        try:
            return now - os.stat(self._path(credentials)).st_mtime < CREDENTIAL_TTL
        except FileNotFoundError:
            return False

    def may_share(self, ex: Exchange) -> bool:
        """Whether this client may be served what others' requests stored, and join them."""
        if self.everyone:
            return True
        now = time.time()
        return self._known(ANONYMOUS, now) or \
            self._known(credential_text(ex.headers, ex.query), now)

    def learn(self, ex: Exchange, status: int) -> None:
        """What the upstream said to this request's credentials (a model call's status)."""
        if self.everyone:
            return
        path = self._path(credential_text(ex.headers, ex.query))
        try:
            if 200 <= status < 300:
                path.touch()
                os.utime(path)  # touch() keeps an old mtime on some filesystems
            elif status in _DENIED:
                path.unlink(missing_ok=True)
        except OSError as exc:  # the run directory is gone: the instance is stopping
            log.warning("cache: cannot remember an accepted credential: %s", exc)
        self._sweep()

    def _sweep(self) -> None:
        """Remove the files of credentials not accepted for a while (bounded growth)."""
        now = time.time()
        if now - self._swept < SWEEP_INTERVAL or self._directory is None:
            return
        self._swept = now
        for path in self._directory.iterdir():
            try:
                if now - path.stat().st_mtime >= CREDENTIAL_TTL:
                    path.unlink()
            except OSError:
                continue  # another worker removed it first

