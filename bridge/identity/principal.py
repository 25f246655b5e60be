"""Who asks: one principal per exchange, computed once and asked by every decision that
depends on it (the cache's access check, single flight, async job owners, per-key
figures), like Django's `request.user`.

- Shared mode: the name of the client key the shared-mode stage accepted, or `shared`
  when no client keys exist (every client is then the bridge's own).
- Pass-through: `cred:` and a keyed digest (HMAC-SHA256) of every credential the
  upstream may read: the credential headers and the credential query parameters. The
  credentials themselves are never kept.
- No credentials at all: `anonymous`.

The digest's secret is made once (32 random bytes) in `--state-dir`, readable by the
bridge's user only, and kept across restarts; with `--redis-url` the first instance's
secret is stored in Redis and every instance adopts it (and keeps it in its own state
directory too), so a fleet computes the same principal for the same credentials.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from pathlib import Path

from bridge.core.exchange import Exchange
from bridge.core.forking import PerProcess
from bridge.core.redaction import CREDENTIAL_HEADERS, split_query
from bridge.core.redis_link import RedisDown, link_for
from bridge.core.settings import Settings

log = logging.getLogger("bridge.identity")

ANONYMOUS = "anonymous"
SHARED = "shared"
SECRET_FILE = "principal.secret"
SECRET_BYTES = 32
MEMO_ENTRIES = 4096  # credentials → principal, per worker: a repeat costs no HMAC


def credential_text(headers: dict[str, str], query: str) -> str:
    """Everything in a request that an upstream may read as credentials ("" for none)."""
    values = [headers.get(name, "") for name in CREDENTIAL_HEADERS]
    values.append(split_query(query)[1])
    return "\n".join(values) if any(values) else ""


def _written(path: Path, secret: bytes) -> Path:
    """A temporary file beside `path` holding `secret`, readable by this user only."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret)
    return temporary


def local_secret(state_dir: Path) -> bytes:
    """This installation's secret, created in `state_dir` by whoever comes first."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_dir / SECRET_FILE
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        secret = b""
    if len(secret) == SECRET_BYTES:
        return secret
    temporary = _written(path, os.urandom(SECRET_BYTES))
    try:
        os.link(temporary, path)  # fails if another process made it meanwhile: theirs wins
    except FileExistsError:
        if len(path.read_bytes()) != SECRET_BYTES:  # a damaged one: replace it
            os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path.read_bytes()


class Principals:
    """Computes `ex.principal` (once per exchange) for this worker."""

    name = "identity"  # started with the stages, before them (`Pipeline.start`)

    def __init__(self, settings: Settings):
        self.shared_mode = settings.enable_shared_mode
        # who asks matters to the cache, async jobs and the usage ledger; without them the
        # secret is not read at start (nor its file made in --state-dir), only if asked
        self.asked = settings.enable_cache or settings.enable_async_request or \
            not settings.disable_usage_ledger
        self.state_dir = Path(settings.state_dir)
        self.link = link_for(settings)
        self._secret = PerProcess(self._load_secret)
        self._memo: dict[str, str] = {}

    def _load_secret(self) -> bytes:
        secret = local_secret(self.state_dir)
        if self.link is None:
            return secret
        key = self.link.key("identity", "secret")
        try:
            shared = self.link.run(lambda client: client.set(key, secret, nx=True)
                                   or client.get(key))
        except RedisDown as exc:
            log.warning("identity: the fleet's principal secret is not reachable in Redis "
                        "(%s): this instance keys its clients by its own secret, so its "
                        "entitlements are not shared until it restarts", exc)
            return secret
        if shared is True:  # SET NX took ours: the fleet's secret is this one
            return secret
        if isinstance(shared, bytes) and len(shared) == SECRET_BYTES:
            if shared != secret:
                path = self.state_dir / SECRET_FILE
                os.replace(_written(path, shared), path)  # atomic: old or new, never half
            return shared
        return secret

    def start(self) -> None:
        """Read (or make) the secret in this worker: at start, not on a request."""
        if self.asked and not self.shared_mode:
            self._secret.get()

    def of(self, ex: Exchange) -> str:
        """The exchange's principal, computed on first use and kept on it."""
        if ex.principal is None:
            ex.principal = self._compute(ex)
        return ex.principal

    def _compute(self, ex: Exchange) -> str:
        if self.shared_mode:
            return ex.client_key or SHARED
        text = credential_text(ex.headers, ex.query)
        if not text:
            return ANONYMOUS
        principal = self._memo.get(text)
        if principal is None:
            digest = hmac.new(self._secret.get(), text.encode("utf-8", "surrogatepass"),
                              hashlib.sha256).hexdigest()
            principal = f"cred:{digest[:32]}"
            if len(self._memo) >= MEMO_ENTRIES:
                del self._memo[next(iter(self._memo))]
            self._memo[text] = principal
        return principal
