"""`python -m bridge` runs the same command as `deepseek-ollama-bridge`."""

from bridge.serve.cli import main

raise SystemExit(main())
