"""`make run`: start the bridge against a real Ollama, or the bundled stand-in if none answers.

When the upstream URL (`-o`/`BRIDGE_OLLAMA`, default http://127.0.0.1:11434) does not
answer and points at this machine, the Ollama stand-in is started on that port first, so
a newcomer sees the bridge work; it is stopped when the bridge stops.

The bridge runs as a child process (`python -m bridge`): this process has imported
`requests` (and so `ssl`), and gevent workers forked from it would patch `ssl` too late.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
from urllib.parse import urlsplit

from bridge.core import settings as bridge_settings
from bridge.core.upstream import UpstreamClient
from bridge.serve import processes

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    settings = bridge_settings.load_or_exit(argv)
    upstream = urlsplit(settings.ollama)
    answered, _ = UpstreamClient(settings).ask("/api/version", None, {}, timeout=2)
    if answered is not None:
        print(f"Using the upstream at {settings.ollama}", flush=True)
    elif upstream.hostname not in LOCAL_HOSTS:
        print(f"warning: {settings.ollama} does not answer", file=sys.stderr)
    else:
        standin = processes.start_standin("--catalogue", "any", port=upstream.port or 80)
        owner = os.getpid()
        atexit.register(lambda: os.getpid() == owner and standin.stop())
        print(f"No Ollama answers at {settings.ollama}: started the bundled stand-in "
              f"there (pid {standin.pid}).", flush=True)
    host, port = settings.listen
    print(f"Bridge on http://{host}:{port}/v1 (OpenAI API) and /api (Ollama API). Try:\n"
          f"  curl http://{host}:{port}/v1/chat/completions -H 'Content-Type: application/json'"
          " -d '{\"model\":\"deepseek-r1:7b\",\"messages\":[{\"role\":\"user\","
          "\"content\":\"Why is the sky blue?\"}]}'", flush=True)
    # No load balancer watches the demo's /ready: Ctrl-C need not wait out a drain delay.
    drain = [] if "--drain-delay" in argv or "BRIDGE_DRAIN_DELAY" in os.environ \
        else ["--drain-delay", "0"]
    bridge = subprocess.Popen([sys.executable, "-m", "bridge", *drain, *argv])
    signal.signal(signal.SIGTERM, lambda *_: bridge.terminate())
    while True:
        try:
            return bridge.wait()
        except KeyboardInterrupt:  # Ctrl-C reached the bridge too: wait for it to stop
            continue


if __name__ == "__main__":
    raise SystemExit(main())
