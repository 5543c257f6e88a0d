"""Start the local Batch service from Python as a child process and wait until it answers.

The implementation lives in :mod:`batchkit.local_service` (batchkit starts the service as a
process and never imports this package); this module keeps the names the tests and older callers
use. Here ``api_key=None`` means "no key is checked" (batchkit's ``start_local_service`` makes up
a random key for None instead).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from batchkit.local_service import LocalService, ServiceStartError, free_port, is_running, start_local_service

#: The handle of a running service (``base_url``, ``api_key``, ``pid``, ``stop()``, ``kill()``).
ServiceHandle = LocalService
is_serving = is_running

__all__ = ["ServiceHandle", "ServiceStartError", "free_port", "is_serving", "start_service"]


def start_service(
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    data_dir: str | os.PathLike[str],
    api_key: str | None,
    engine: str = "llama",
    extra_args: Sequence[str] = (),
    wait: float = 60.0,
    detached: bool = False,
) -> ServiceHandle:
    """Start ``python -m localbatch serve`` and wait until ``/healthz`` answers.

    ``api_key`` None starts the service without a key. Everything else as
    :func:`batchkit.local_service.start_local_service`.
    """
    return start_local_service(host=host, port=port, data_dir=data_dir, api_key=api_key or "", engine=engine,
                               extra_args=extra_args, wait=wait, detached=detached)
