"""Command line of the stand-in: serve in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from .config import CATALOGUES, KINDS, SHAPES, THINK_MODES, StandInConfig
from .server import StandIn


def _seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bridge.ollama_standin",
        description="An HTTP server speaking Ollama's wire format, with deterministic "
                    "answers. Prints its URL on the first line of stdout.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=11434, help="port; 0 = any free (11434)")
    parser.add_argument("--kind", choices=KINDS, default="ollama",
                        help="which API it is: ollama (every route), openai (an OpenAI-only "
                             "API: /v1 chat, completions, embeddings, models) or anthropic "
                             "(Claude's API: /v1/messages, /v1/models; x-api-key and "
                             "anthropic-version headers)")
    parser.add_argument("--shape", choices=SHAPES, default="new",
                        help="/v1 stream shape: new (v0.32.6+, /api/version 0.33.0), legacy "
                             "(0.32.5) or nulls (new, every delta key present, null if empty)")
    parser.add_argument("--think", choices=THINK_MODES, default="auto",
                        help="how reasoning is emitted (auto: as today's Ollama, from the "
                             "model's capabilities and the request's think/reasoning_effort)")
    parser.add_argument("--catalogue", choices=CATALOGUES, default="strict",
                        help="strict: unlisted models get 404; any: every name answers, "
                             "unknown ones as a plain chat model (the demo's choice)")
    parser.add_argument("--api-key", metavar="KEY",
                        help="require `Authorization: Bearer KEY` (`x-api-key: KEY` for the "
                             "anthropic kind; 401 otherwise)")
    parser.add_argument("--first-token-delay", type=_seconds, default=0.0, metavar="S",
                        help="seconds before the headers and first token")
    parser.add_argument("--token-delay", type=_seconds, default=0.0, metavar="S",
                        help="seconds between stream chunks")
    parser.add_argument("--max-recorded", type=int, default=10000, metavar="N",
                        help="keep only the last N requests for /_standin/stats (10000; "
                             "0 = all); counts stay exact")
    parser.add_argument("--model", action="append", dest="models", metavar="NAME",
                        help="a model to serve (repeatable; default: a built-in list)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = StandInConfig(kind=args.kind, shape=args.shape, think=args.think,
                           first_token_delay=args.first_token_delay,
                           token_delay=args.token_delay, catalogue=args.catalogue,
                           api_key=args.api_key)
    if args.models:
        config.models = args.models
    try:
        standin = StandIn(config, host=args.host, port=args.port,
                          max_recorded=args.max_recorded or None).start()
    except OSError as exc:
        print(f"ollama stand-in: cannot listen on {args.host}:{args.port}: {exc}",
              file=sys.stderr)
        return 1
    stopped = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stopped.set())
    print(standin.url, flush=True)
    try:
        while not stopped.wait(0.5):
            pass
    finally:
        standin.stop()
    return 0
