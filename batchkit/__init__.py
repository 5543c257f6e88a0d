"""batchkit: Azure OpenAI Global Batch / OpenAI Batch jobs with Structured Outputs.

The notebooks use these steps, each a small function in its own module:

* `batchkit.config.connect` - pick the backend from `.env` and build the client;
* `batchkit.authoring` - rows + system message + schema -> request lines -> JSONL file;
* `batchkit.jobs` - upload, wait for the file, create, poll with progress, cancel, list;
* `batchkit.run` - the run: a durable job (manifest, split, submit once, poll, verified download, retry);
* `batchkit.results` - download output and error files -> one DataFrame row per request.

Names are imported lazily on first use, so `import batchkit` has no side effects and stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "connect": "batchkit.config",
    "Connection": "batchkit.config",
    "build_body": "batchkit.authoring",
    "build_requests": "batchkit.authoring",
    "write_jsonl": "batchkit.authoring",
    "requests_frame": "batchkit.authoring",
    "upload_file": "batchkit.jobs",
    "wait_for_file": "batchkit.jobs",
    "create_batch": "batchkit.jobs",
    "poll_batch": "batchkit.jobs",
    "cancel_batch": "batchkit.jobs",
    "list_batches": "batchkit.jobs",
    "download_results": "batchkit.results",
    "Run": "batchkit.run",
    "Limits": "batchkit.run",
    "parse_results": "batchkit.results",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the module that defines `name` on first access."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'batchkit' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
