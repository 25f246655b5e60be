"""Shared mode's pipeline stage: client keys in, the bridge's upstream key out.

With `--enable-shared-mode`, every request goes upstream with `Authorization: Bearer
<the upstream key>`, and whatever credentials the client sent are dropped: the
`Authorization`, `X-Api-Key` and `Api-Key` headers and credential query parameters
(`?key=`, `?api_key=`, `?access_token=`, …). Once client keys exist in the key store
(`deepseek-ollama-bridge keys create`), a request must carry one, as `Authorization:
Bearer sk-bridge-…` or in `X-Api-Key` / `Api-Key` (Anthropic- and Azure-style clients):
missing, unknown, revoked or expired → 401, a model the key may not use → 403, over the
key's own rate → 429. A key in the query string is not accepted (URLs end up in logs and
browser histories). Responses are scrubbed of the upstream key in case the upstream
echoes it; log lines are scrubbed by the log set-up (`bridge.core.redaction`).
"""

from __future__ import annotations

import logging
import math
from typing import NoReturn

from bridge.core import events
from bridge.core.errors import BridgeError, Forbidden, RateLimited, ServiceUnavailable, Unauthorized
from bridge.core.exchange import Exchange
from bridge.core.pipeline import Context, Stage
from bridge.core.redaction import CREDENTIAL_HEADERS, Redactor, bearer_token, split_query
from bridge.core.settings import Settings, upstream_key
from bridge.shared_mode.keystore import ClientKey, KeyStore, KeyStoreError
from bridge.shared_mode.redis_stamps import revocation_stamps

log = logging.getLogger("bridge.auth")

CHALLENGE = {"www-authenticate": 'Bearer realm="deepseek-ollama-bridge"'}


def presented_key(headers: dict[str, str]) -> str:
    """The key the client sent: `Authorization: Bearer …`, else `X-Api-Key`, else `Api-Key`."""
    return (bearer_token(headers.get("authorization", "")) or headers.get("x-api-key", "").strip()
            or headers.get("api-key", "").strip())


class AuthStage(Stage):
    name = "auth"

    def __init__(self, settings: Settings):
        self.upstream_authorization = f"Bearer {upstream_key(settings)}"
        self.cache_per_client_key = settings.cache_per_client_key
        self.store = KeyStore(settings.state_dir, revocation_stamps(settings))
        self.redactor = Redactor([upstream_key(settings)])

    def start(self) -> None:
        try:
            self.store.open()
        except KeyStoreError as exc:  # every request retries it, and is refused meanwhile
            log.error("%s", exc)

    def stop(self) -> None:
        self.store.close()

    def on_request(self, ex: Exchange) -> None:
        presented = presented_key(ex.headers)
        for name in CREDENTIAL_HEADERS:
            ex.headers.pop(name, None)
        ex.query, in_query = split_query(ex.query)  # credentials in the query: dropped
        key = self.authenticate(ex, presented, bool(in_query))
        ex.headers["authorization"] = self.upstream_authorization
        if key is not None:
            ex.client_key = key.name
            ex.budget = key.budget  # enforced inside the cache (bridge.budgets)
            if self.cache_per_client_key:
                # the cache puts ex.cache_scope in its key: one cache per key
                ex.cache_scope = key.name

    def authenticate(self, ex: Exchange, presented: str,
                     in_query: bool = False) -> ClientKey | None:
        """The client's key, or None when no client keys exist (open shared mode); raises
        the refusal otherwise. `in_query`: credentials came in the query string (ignored)."""
        try:
            keys = self.store.keys()
        except KeyStoreError as exc:
            log.error("%s [%s]", exc, ex.request_id)
            raise ServiceUnavailable("the bridge's client key store is unavailable") from None
        if not keys:
            return None
        key = self.store.find(presented) if presented else None
        if key is None:
            reason = "invalid" if presented else "missing"
            message = ("Incorrect API key provided" if presented else
                       "Missing API key: send a bridge client key as 'Authorization: "
                       "Bearer sk-bridge-…'" + ("; keys in the query string are not "
                                               "accepted" if in_query else ""))
            self.refuse(ex, reason, Unauthorized(message, headers=CHALLENGE))
        status = key.status()
        if status != "active":
            self.refuse(ex, status, Unauthorized(f"API key {key.name!r} is {status}",
                                                 headers=CHALLENGE), key)
        if ex.is_model_request and not key.allows(ex.model):
            self.refuse(ex, "model", Forbidden(
                f"API key {key.name!r} may not use model {ex.model!r}",
                code="model_not_allowed", param="model"), key)
        wait = self.store.take(key)
        if wait is not None:
            self.refuse(ex, "rate", RateLimited(
                f"API key {key.name!r} is over its rate of {key.rate_text}; retry in "
                f"{math.ceil(wait)}s", headers={"retry-after": str(max(1, math.ceil(wait)))}),
                key)
        log.debug("client key %r accepted [%s]", key.name, ex.request_id)
        return key

    @staticmethod
    def refuse(ex: Exchange, reason: str, err: BridgeError,
               key: ClientKey | None = None) -> NoReturn:
        if key is not None:
            ex.client_key = key.name
            ex.budget = key.budget  # enforced inside the cache (bridge.budgets)
        events.emit("auth.refused", reason=reason)
        log.debug("request refused (%s, key %r) [%s]", reason, key.name if key else None,
                  ex.request_id)
        raise err

    def on_response(self, ex: Exchange) -> None:
        if ex.response is not None:
            self.redactor.response(ex.response)


def make_stage(settings: Settings, context: Context) -> AuthStage | None:
    return AuthStage(settings) if settings.enable_shared_mode else None
