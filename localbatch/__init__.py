"""localbatch: a local Batch service that answers the openai SDK the way Azure OpenAI and OpenAI do.

Start it with ``python -m localbatch serve`` or, from Python, :func:`localbatch.launcher.start_service`.
Importing this package starts nothing and loads no model.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
