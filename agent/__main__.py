"""`python -m agent start ...` is the same as the `local-agent` console script."""

from __future__ import annotations

import sys

from agent.cli import main

if __name__ == "__main__":
    sys.exit(main())
