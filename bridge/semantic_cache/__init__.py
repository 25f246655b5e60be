"""The semantic cache: a question asked in other words is answered from the response cache.

`question` says what must match exactly (the scope digest) and which text is compared;
`embedding` asks the upstream for that text's embedding; `index` finds the nearest stored
question of the same scope (usearch); `store` keeps the entries (SQLite beside the disk
tier, or Redis with `--redis-url`); `lookup` ties them together for the cache stage.
"""
