"""`deepseek-ollama-bridge jobs list|show|purge`: the async jobs of `--state-dir`, for
operators, while the bridge runs or not. A job's owner is shown as its principal (a
client key's name, `shared`, `anonymous` or a `cred:` digest); credentials are never
shown (only whether the job still holds one)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Sequence

from bridge.async_jobs.store import Job, JobStore
from bridge.core import settings as bridge_settings

STORE_SETTINGS = ("state_dir",)
BODY_PREVIEW = 2000


def build_parser() -> argparse.ArgumentParser:
    parser, commands = bridge_settings.tool_parser(
        "jobs", "Inspect or remove the async jobs (requests sent with request_fingerprint).",
        STORE_SETTINGS)
    listing = commands.add_parser("list", help="one line per job")
    listing.add_argument("--json", action="store_true", help="as JSON")
    show = commands.add_parser("show", help="the jobs of a fingerprint (one per owner): "
                                           "their requests and states, as a JSON list")
    show.add_argument("fingerprint")
    purge = commands.add_parser("purge", help="remove the ended jobs (done or failed)")
    purge.add_argument("fingerprint", nargs="?",
                       help="remove this fingerprint's jobs only (every owner's), whatever "
                            "their state")
    purge.add_argument("--all", action="store_true", dest="everything",
                       help="remove every job, waiting and running ones too")
    return parser


def summary(job: Job, now: float) -> dict:
    return {"fingerprint": job.fingerprint, "status": job.status, "owner": job.owner or None,
            "path": job.path, "attempts": job.attempts,
            "age_seconds": round(now - job.created, 1),
            "result_status": job.result_status,
            "holds_credential": job.credential is not None}


def details(job: Job, now: float) -> dict:
    shown = summary(job, now)
    shown["query"] = job.query  # stored without its credential parameters
    shown["request"] = job.body.decode("utf-8", "replace")[:BODY_PREVIEW]
    shown["result"] = job.result_body.decode("utf-8", "replace")[:BODY_PREVIEW]
    return shown


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    args, state = bridge_settings.tool_args(parser, argv, STORE_SETTINGS)
    store = JobStore(state.state_dir)
    if not store.path.exists():
        print(f"no async jobs (no job store at {store.path})", file=sys.stderr)
        return 0 if args.command == "list" else 1
    now = time.time()
    if args.command == "list":
        jobs = [summary(job, now) for job in store.all()]
        if args.json:
            print(json.dumps(jobs, indent=2))
            return 0
        print(f"{'FINGERPRINT':40} {'STATUS':8} {'RESULT':6} {'RUNS':4} {'AGE':>8}  "
              "OWNER (principal)")
        for job in jobs:
            print(f"{job['fingerprint']:40} {job['status']:8} {job['result_status'] or '-'!s:6} "
                  f"{job['attempts']:<4} {job['age_seconds']:>7}s  {job['owner'] or '-'}")
        return 0
    if args.command == "show":
        jobs = [job for job in store.all() if job.fingerprint == args.fingerprint]
        if not jobs:
            print(f"{parser.prog}: error: no job {args.fingerprint!r}", file=sys.stderr)
            return 1
        print(json.dumps([details(job, now) for job in jobs], indent=2, ensure_ascii=False))
        return 0
    removed = store.purge(args.fingerprint, args.everything)
    print(f"purged {removed} job(s) from {store.path}")
    return 0
