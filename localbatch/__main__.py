"""``python -m localbatch serve``: run the local Batch service."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
