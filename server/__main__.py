"""`python -m server` is the `local-agent-server` console script."""

from server.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
