"""Records of translated answers (the Responses API's `previous_response_id`): a request
that continues an earlier answer is completed from that answer's record once shared
mode has said who asks, and before the cache keys the request; each answer is named by
a record, kept for the cache TTL in the cache's tiers (`bridge.cache.records`).

An answer's id names its record and carries a nonce of its own (`Call.name`,
`Call.nonce`). A fresh answer (a miss) writes a record of its own when it is complete.
The answers the cache replays from one stored entry to one principal, for one
conversation, share one record (named by a digest of those), written by the first of
them: the others only check that it is still there (this worker's memory, then the
tier behind it), so a repeat costs no write, and the web layer may repeat one as the
bytes it sent with a fresh nonce (`bridge.web.fast_hits`). A refreshed entry is another
entry: its answers name another record. Should an answer of a shared record say
something else than the record holds (a filter outside the cache changed its verdict),
the record is replaced by `GONE`: every id naming it is refused as no longer available,
never continued from another answer than the one it gave.

Records belong to the principal that wrote them: another client naming one finds
nothing. Without the cache the bridge keeps nothing, and a request that names a record
is refused with a 400 saying so.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from bridge.cache.records import GONE, Records
from bridge.core.exchange import Exchange
from bridge.core.pipeline import Context, Stage
from bridge.core.settings import Settings
from bridge.surfaces import adapter_for
from bridge.surfaces.adapter import NAME_DIGITS, Call
from bridge.surfaces.edge import call_of

NO_CACHE = ("the bridge keeps earlier answers only with its cache on (--enable-cache), "
            "and the upstream keeps none: send the whole conversation as 'input' instead")
_GONE = Records.encode(GONE)
REPLACED = ("it is no longer available: the bridge would now answer that question "
            "differently; send the whole conversation as 'input' instead")


class Kept:
    """The record that one answer leaves under its name (`Call.remember`)."""

    def __init__(self, records: Records, kind: str, key: str, found: bytes | None):
        self.records, self.kind, self.key = records, kind, key
        self.found = found  # the shared record as it was when the answer began
        self.body: bytes | None = None  # this answer's own, once it is complete

    def __call__(self, nonce: str, value: Any) -> None:
        body = self.body = self.records.encode(value, nonce)
        if self.found is None:
            self.records.store(self.key, self.kind, body)
        elif self.found != body:
            self.records.store(self.key, self.kind, _GONE)

    def current(self) -> bool:
        """Whether the record still names this answer (`fast_hits`: its repeats, with the
        same name, are served only then); rewritten when the memory tier let it go."""
        held = self.records.held(self.key)
        if held is None and self.body is not None:
            self.records.store(self.key, self.kind, self.body)
            return True
        return held is not None and held == self.body


class RecordsStage(Stage):
    name = "surfaces"

    def __init__(self, context: Context):
        self.context = context
        self.cache: Stage | None = None

    def start(self) -> None:
        pipeline = self.context.pipeline
        self.cache = pipeline.stage("cache") if pipeline is not None else None

    @property
    def records(self) -> Records | None:
        """The cache's records (None without the cache, or before it started)."""
        return getattr(self.cache, "records", None)

    def on_request(self, ex: Exchange) -> None:
        call = call_of(ex)
        surface = adapter_for(ex.api)
        if call is None or surface is None or not surface.keeps_records:
            return
        named = surface.recall(call)
        records = self.records
        if records is None:
            if named is not None:
                surface.resume(call, None, NO_CACHE)
            return
        if named is not None:
            name, nonce = named
            record = records.get(surface.name, self.context.principals.of(ex), name, nonce)
            surface.resume(call, None if record == GONE else record,
                           REPLACED if record == GONE else "")
            ex.replace_payload(call.native)

    def on_response(self, ex: Exchange) -> None:
        """Name the record the answer leaves (before the edge translates it: its id)."""
        call, surface, records = call_of(ex), adapter_for(ex.api), self.records
        response = ex.response
        if call is None or surface is None or not surface.keeps_records or records is None \
                or response is None or not response.ok:
            return
        principal = self.context.principals.of(ex)
        found = None
        if response.source is not None:
            call.name = shared_name(surface.name, principal, response.source, call)
            found = records.find(records.key(surface.name, principal, call.name))
            if found == _GONE:  # its answers said different things: this one is on its own
                found = None
                call.name = ""
        if not call.name:
            call.name = secrets.token_hex(NAME_DIGITS // 2)
        kept = Kept(records, surface.name, records.key(surface.name, principal, call.name),
                    found)
        call.remember, call.current = kept, kept.current


def shared_name(kind: str, principal: str, source: str, call: Call) -> str:
    """The name of the record shared by the answers replayed from one stored entry
    (`source`) to one principal, for one conversation (`Call.basis`)."""
    digest = hashlib.blake2b(digest_size=NAME_DIGITS // 2, person=b"bridge.records")
    for part in (kind.encode(), principal.encode("utf-8", "surrogatepass"), source.encode(),
                 call.basis()):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


def make_stage(settings: Settings, context: Context) -> RecordsStage:
    return RecordsStage(context)
