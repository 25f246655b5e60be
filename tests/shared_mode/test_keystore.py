"""The client key store: hashes only, expiry, revocation seen by other workers, per-key
rates shared across workers, allowed models, and the `keys` command on top of it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import keys_command

from bridge.serve.processes import ROOT
from bridge.shared_mode.keystore import (
    KEY_PREFIX,
    KeyStore,
    KeyStoreError,
    open_access_warning,
    parse_expiry,
    parse_rate,
)


def store_bytes(state_dir: Path) -> bytes:
    return b"".join(path.read_bytes() for path in state_dir.iterdir() if path.is_file())


def test_keys_are_stored_only_as_hashes(tmp_path: Path) -> None:
    with KeyStore(tmp_path) as store:
        raw, record = store.create("alice")
        assert raw.startswith(KEY_PREFIX) and len(raw) > len(KEY_PREFIX) + 40
        assert store.find(raw) == record
        assert store.find(raw + "x") is None and store.find(raw[:-1]) is None
    assert raw.encode() not in store_bytes(tmp_path)
    assert (tmp_path / "keys.sqlite3").stat().st_mode & 0o077 == 0


def test_two_keys_are_different_and_names_are_unique(tmp_path: Path) -> None:
    with KeyStore(tmp_path) as store:
        first, _ = store.create("alice")
        second, _ = store.create("bob")
        assert first != second
        with pytest.raises(KeyStoreError, match="already exists"):
            store.create("alice")
        with pytest.raises(KeyStoreError, match="bad key name"):
            store.create("no spaces please")


def test_revocation_is_seen_by_another_workers_store(tmp_path: Path) -> None:
    manager, worker = KeyStore(tmp_path).open(), KeyStore(tmp_path).open()
    raw, _ = manager.create("alice")
    assert worker.find(raw).status() == "active"
    manager.revoke("alice")
    assert worker.find(raw).status() == "revoked"
    assert len(worker.keys()) == 1  # revoked keys stay: revoking the last key never opens up


def test_expiry(tmp_path: Path) -> None:
    with KeyStore(tmp_path) as store:
        raw, record = store.create("temp", expires=time.time() + 60)
        assert record.status() == "active"
        assert record.status(now=time.time() + 61) == "expired"


def test_allowed_models_read_an_untagged_name_as_latest(tmp_path: Path) -> None:
    with KeyStore(tmp_path) as store:
        _, record = store.create("coder", models=["deepseek-coder", "qwen2.5:7b"])
    assert record.allows("deepseek-coder:latest") and record.allows("deepseek-coder")
    assert record.allows("qwen2.5:7b")
    assert not record.allows("qwen2.5") and not record.allows("llama3.2")


def test_rate_is_counted_across_workers(tmp_path: Path) -> None:
    first, second = KeyStore(tmp_path).open(), KeyStore(tmp_path).open()
    raw, _ = first.create("limited", rate=(3, 60))
    now = 60 * 20_000 + 20.0  # 20 s into a minute window
    results = [store.take(store.find(raw), now=now) for store in (first, second, first, second)]
    assert results[:3] == [None, None, None]
    assert results[3] == pytest.approx(40.0)  # seconds until the window ends
    assert first.take(first.find(raw), now=now + 40) is None  # the next minute


@pytest.mark.parametrize(("text", "expected"), [("10", (10, 60)), ("10/min", (10, 60)),
                                                ("2/s", (2, 1)), ("5/second", (5, 1))])
def test_parse_rate(text: str, expected: tuple[int, int]) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["0", "x/min", "3/h", "-1", "2000000"])
def test_parse_rate_refuses(text: str) -> None:
    with pytest.raises(KeyStoreError, match="bad rate"):
        parse_rate(text)


def test_parse_expiry() -> None:
    assert parse_expiry("90s", now=1000.0) == 1090.0
    assert parse_expiry("2d", now=1000.0) == 1000.0 + 2 * 86400
    assert parse_expiry("2099-01-01T00:00:00+00:00") == 4070908800.0
    for text in ("2001-01-01", "soon", "5y"):
        with pytest.raises(KeyStoreError, match="bad expiry"):
            parse_expiry(text)


def test_open_access_warning(tmp_path: Path) -> None:
    assert open_access_warning(tmp_path, "127.0.0.1") is None
    assert open_access_warning(tmp_path, "::1") is None
    assert "ANYONE" in open_access_warning(tmp_path, "0.0.0.0")
    with KeyStore(tmp_path) as store:
        store.create("alice")
    assert open_access_warning(tmp_path, "0.0.0.0") is None


def test_keys_command_create_list_revoke(tmp_path: Path) -> None:
    created = keys_command(tmp_path, "create", "alice", "--expires", "30d", "--rate", "5/s",
                           "--models", "llama3.2,qwen3")
    assert created.returncode == 0, created.stderr
    raw = created.stdout.strip()
    assert raw.startswith(KEY_PREFIX) and "only this once" in created.stderr
    listed = keys_command(tmp_path, "list")
    assert listed.returncode == 0
    row = next(line for line in listed.stdout.splitlines() if line.startswith("alice"))
    assert "active" in row and "5/s" in row and "llama3.2,qwen3" in row
    assert raw not in listed.stdout  # only a short hint of the key
    revoked = keys_command(tmp_path, "revoke", "alice")
    assert revoked.returncode == 0
    assert "revoked" in keys_command(tmp_path, "list").stdout
    assert raw.encode() not in store_bytes(tmp_path)


def test_keys_command_uses_the_servers_state_dir_setting(tmp_path: Path) -> None:
    env = {"BRIDGE_STATE_DIR": str(tmp_path / "from-env"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "bridge", "keys", "create", "bob"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "from-env" / "keys.sqlite3").exists()


@pytest.mark.parametrize(("args", "status", "message"), [
    (("revoke", "nobody"), 1, "no key named 'nobody'"),
    (("create", "x", "--rate", "fast"), 1, "bad rate"),
    (("create", "x", "--expires", "yesterday"), 1, "bad expiry"),
    (("create",), 2, "required"),
    (("rotate", "x"), 2, "invalid choice"),
])
def test_keys_command_errors_are_one_line(tmp_path: Path, args: tuple[str, ...], status: int,
                                          message: str) -> None:
    keys_command(tmp_path, "create", "someone")
    done = keys_command(tmp_path, *args)
    assert done.returncode == status
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
