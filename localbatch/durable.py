"""File bytes that are either whole or absent, and a crash hook to prove it.

Every file the service writes (an upload, a batch's output or error file) is made under a temporary
name in the same folder (:func:`staging_path`): an upload is written there and flushed to disk, a
result file is a hard link to the batch's committed result spool; it is renamed to its final name
only when complete, and its database row is committed after the rename. A crash at any moment therefore
leaves either nothing, a temporary file, or a complete file without a row: none of them is listed,
and the start-up sweep (:meth:`localbatch.store.Store.remove_orphan_files`) removes them all.

``LOCALBATCH_CRASH_AT`` (tests only) names moments, comma-separated, at which the process kills
itself with SIGKILL, exactly as ``kill -9`` would, so tests can crash it mid-write:

* ``upload``: a file upload has written part of its bytes (uploads of more than one 1 MiB chunk);
* ``upload-renamed``: an upload is complete and renamed, its row not yet committed;
* ``finalize``: a result file is under its staging name (a hard link of the batch's synced spool,
  see :mod:`localbatch.store`), not yet renamed;
* ``finalize-renamed``: a batch's result files are renamed, the batch not yet finished.
"""

from __future__ import annotations

import logging
import os
import signal
from functools import cache
from pathlib import Path

log = logging.getLogger("localbatch.durable")

CRASH_ENV = "LOCALBATCH_CRASH_AT"
CRASH_MOMENTS = ("upload", "upload-renamed", "finalize", "finalize-renamed")


@cache
def crash_moments() -> frozenset[str]:
    """The moments named in ``LOCALBATCH_CRASH_AT`` (ValueError names an unknown one)."""
    names = {name.strip() for name in os.environ.get(CRASH_ENV, "").split(",") if name.strip()}
    unknown = sorted(names - set(CRASH_MOMENTS))
    if unknown:
        raise ValueError(f"{CRASH_ENV}: unknown moment {', '.join(unknown)}; use one of {', '.join(CRASH_MOMENTS)}")
    return frozenset(names)


def crash_point(moment: str) -> None:
    """Kill this process with SIGKILL if ``moment`` is named in ``LOCALBATCH_CRASH_AT`` (tests only)."""
    if moment in crash_moments():
        log.warning("%s=%s: killing the process (SIGKILL)", CRASH_ENV, moment)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def staging_path(final: Path) -> Path:
    """The temporary name, in the same folder, under which ``final`` is written until complete."""
    return final.with_name(f".{final.name}.part")


def sync_and_rename(staged: Path, final: Path) -> None:
    """Flush ``staged`` to disk and rename it to ``final`` (atomic within one folder)."""
    fd = os.open(staged, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(staged, final)
