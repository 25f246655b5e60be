"""The multi-tier response cache: a per-worker memory LRU over a shared sqlitedict disk
tier, with hot promotion, TTL sweeps, single flight and stream replay.

Modules by concern: `keys` (what makes two requests the same), `entry` (an entry and its
bytes), `memory` and `disk` (the tiers), `hot` (promotion and its adaptive threshold),
`sweeper` (background work), `flight` (single flight), `replay` (serving an entry in the
shape asked for), `stage` (the pipeline stage), `admin` (the `cache` command).
"""
