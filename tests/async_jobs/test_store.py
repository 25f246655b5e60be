"""The SQLite job store on real files: a job is (owner, fingerprint), and a state
directory of the version before owners (one job per fingerprint, credential query
parameters in the stored query) still opens, migrated once, its credentials moved or
dropped; a file of version 2 (before jobs of the translated APIs) keeps its jobs."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

from bridge.async_jobs.store import (
    DONE,
    FILE_NAME,
    QUEUED,
    SCHEMA_VERSION,
    Credential,
    Job,
    JobStore,
    Result,
)

# The file of the version before owners, as it wrote it.
VERSION_1 = """
CREATE TABLE jobs (
    fingerprint TEXT PRIMARY KEY, owner TEXT NOT NULL, content_hash TEXT NOT NULL,
    surface TEXT NOT NULL, endpoint TEXT NOT NULL, method TEXT NOT NULL, path TEXT NOT NULL,
    query TEXT NOT NULL, headers TEXT NOT NULL, body BLOB NOT NULL, facts TEXT NOT NULL,
    credential TEXT, status TEXT NOT NULL, created REAL NOT NULL,
    not_before REAL NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0, worker TEXT,
    lease_until REAL NOT NULL DEFAULT 0, started REAL, finished REAL, expires REAL,
    result_status INTEGER, result_headers TEXT, result_codec TEXT, result_body BLOB
);
CREATE INDEX jobs_by_status ON jobs (status, not_before, created);
"""
# The file of version 2 (jobs with owners; before `api` and `asked`): version 1's table
# with (owner, fingerprint) as its key.
VERSION_2 = VERSION_1.replace("fingerprint TEXT PRIMARY KEY", "fingerprint TEXT NOT NULL") \
    .replace("result_body BLOB\n", "result_body BLOB, PRIMARY KEY (owner, fingerprint)\n")
ENDED_SECRET, QUEUED_SECRET, HEADER_SECRET = "qs-ended-1234", "qs-queued-5678", "sk-head-9012"


def job(owner: str, fingerprint: str, credential: Credential | None = None) -> Job:
    return Job(fingerprint=fingerprint, owner=owner, content_hash="h", surface="openai",
               endpoint="chat", method="POST", path="/v1/chat/completions", query="",
               headers={}, body=b"{}", credential=credential)


def version_1_file(state_dir: Path) -> Path:
    path = state_dir / FILE_NAME
    with sqlite3.connect(path) as db:
        db.executescript(VERSION_1)
        row = ("POST", "/v1/chat/completions", "{}", b"{}", "{}")
        db.execute("INSERT INTO jobs (fingerprint, owner, content_hash, surface, endpoint, "
                   "method, path, query, headers, body, facts, credential, status, created, "
                   "finished, expires, result_status, result_headers, result_body) VALUES "
                   "('ended', '', 'h', 'openai', 'chat', ?, ?, ?, ?, ?, ?, NULL, 'done', 1, 2, "
                   "9e12, 200, '{}', X'7B7D')",
                   (*row[:2], f"a=1&key={ENDED_SECRET}", *row[2:]))
        db.execute("INSERT INTO jobs (fingerprint, owner, content_hash, surface, endpoint, "
                   "method, path, query, headers, body, facts, credential, status, created) "
                   "VALUES ('waiting', '', 'h', 'openai', 'chat', ?, ?, ?, ?, ?, ?, ?, "
                   "'queued', 3)",
                   (*row[:2], f"api_key={QUEUED_SECRET}&b=2", *row[2:],
                    f'{{"authorization": "Bearer {HEADER_SECRET}"}}'))
    os.chmod(path, 0o644)  # as an older version or an operator may have left it
    return path


def test_the_same_fingerprint_of_two_owners_is_two_jobs(tmp_path: Path) -> None:
    store = JobStore(tmp_path).open()
    assert store.submit(job("cred:aa", "fp"), 10)[1]
    assert store.submit(job("cred:bb", "fp"), 10)[1]
    assert not store.submit(job("cred:aa", "fp"), 10)[1]
    assert {stored.owner for stored in store.all()} == {"cred:aa", "cred:bb"}
    assert store.get("anonymous", "fp") is None
    assert store.purge("fp") == 2


def test_a_version_1_file_opens_migrated_with_its_credentials_moved_or_dropped(
        tmp_path: Path) -> None:
    path = version_1_file(tmp_path)
    store = JobStore(tmp_path).open()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
    ended = store.get("", "ended")  # a job without an owner: nobody's, kept to its end
    assert ended is not None and ended.status == DONE and ended.query == "a=1"
    assert ended.credential is None and ended.result_body == b"{}"
    waiting = store.get("", "waiting")
    assert waiting is not None and waiting.status == QUEUED and waiting.query == "b=2"
    assert waiting.credential == Credential({"authorization": f"Bearer {HEADER_SECRET}"},
                                            f"api_key={QUEUED_SECRET}")
    assert waiting.credential.full_query(waiting.query) == f"b=2&api_key={QUEUED_SECRET}"
    assert ENDED_SECRET.encode() not in path.read_bytes()  # dropped, pages overwritten

    claimed = store.claim("1:test", 15)
    assert claimed is not None and claimed.key == ("", "waiting")
    assert store.finish(claimed, DONE, Result(200, {}, b"{}"), 60)
    store.close()
    again = JobStore(tmp_path).open()  # a second open migrates nothing
    assert {stored.fingerprint for stored in again.all()} == {"ended", "waiting"}
    again.close()
    kept = b"".join(file.read_bytes() for file in tmp_path.glob(FILE_NAME + "*"))
    for secret in (ENDED_SECRET, QUEUED_SECRET, HEADER_SECRET):
        assert secret.encode() not in kept, secret


def test_a_new_store_is_made_readable_by_its_user_only(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "state").open()
    store.submit(job("shared", "fp", Credential({"authorization": "Bearer sk-x"})), 10)
    for path in (tmp_path / "state").glob(FILE_NAME + "*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700


def test_a_version_2_file_keeps_its_jobs_and_takes_jobs_of_the_translated_apis(
        tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    with sqlite3.connect(path) as db:
        db.executescript(VERSION_2)
        db.execute("INSERT INTO jobs (fingerprint, owner, content_hash, surface, endpoint, "
                   "method, path, query, headers, body, facts, status, created) VALUES "
                   "('old', 'someone', 'h', 'openai', 'chat', 'POST', "
                   "'/v1/chat/completions', '', '{}', X'7B7D', '{}', 'queued', 1)")
        db.execute("PRAGMA user_version = 2")
    store = JobStore(tmp_path).open()
    old = store.get("someone", "old")
    assert old is not None and old.status == QUEUED and old.body == b"{}"
    assert old.api == "" and old.asked is None  # answered in its surface's own shape
    asked = {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]}
    new = job("someone", "new")
    new.api, new.asked = "anthropic", asked
    store.submit(new, 10)
    stored = store.get("someone", "new")
    assert stored is not None and stored.api == "anthropic" and stored.asked == asked
    store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
