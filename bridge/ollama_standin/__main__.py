"""`python -m bridge.ollama_standin`: run the stand-in in the foreground."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
