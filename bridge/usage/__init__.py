"""The usage ledger: what each principal (client key, or credential digest) spent per
model and UTC day, as the upstream reported it, and what the cache saved it.

`periods` (UTC days, weeks from Monday, calendar months), `ledger` (the state
directory's SQLite file), `redis_ledger` (the fleet's sums, `--redis-url`), `recorder`
(per worker: exchanges added up in memory, flushed off the event loop every second),
`stage` (records every exchange when it closes), `report` (`keys usage`, `/status`).
"""
