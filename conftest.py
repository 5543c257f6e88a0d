"""Session set-up for every test run: isolate settings, and start the local service for nbval.

pytest fixtures do not reach nbval's notebook items, so the service the notebooks talk to is
started here, in `pytest_sessionstart`, and its address is put into `os.environ` before any kernel
starts (a kernel copies the environment when it starts). It is stopped in `pytest_sessionfinish`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
#: A developer's own settings must never reach the tests.
CLEARED = (
    "AZURE_OPENAI_ENDPOINT",
    "AZURE_OPENAI_API_ENDPOINT",
    "AZURE_OPENAI_API_KEY",
    "AZURE_OPENAI_AD_TOKEN",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_API_VERSION",
    "OPENAI_ORG_ID",
    "OPENAI_PROJECT_ID",
    "BATCH_DEPLOYMENT",
)


def _wants_notebooks(config: pytest.Config) -> bool:
    """True when this run may collect notebooks (no paths given, or a notebook path given)."""
    args = [a.split("::")[0] for a in config.args]
    return any(a.endswith(".ipynb") or "notebooks" in Path(a).resolve().parts for a in args)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Clear foreign settings; start the local service when notebooks are part of the run."""
    for name in CLEARED:  # set empty, not removed: then a developer's .env cannot fill them in either
        os.environ[name] = ""
    os.environ["BATCH_BACKEND"] = "local"
    if not _wants_notebooks(session.config):
        return
    from localbatch.launcher import start_service

    data_dir = Path(tempfile.mkdtemp(prefix="localbatch-nbval-"))
    handle = start_service(data_dir=data_dir, api_key="local-dev-key")
    os.environ["LOCALBATCH_URL"] = handle.base_url
    os.environ["LOCALBATCH_API_KEY"] = "local-dev-key"
    session.config.stash[_HANDLE] = (handle, data_dir)
    # the notebooks write into out/; start from a clean state so their outputs match
    from batchkit.walkthrough import clear_generated

    clear_generated(ROOT / "out")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop the service started for the notebooks and remove its data."""
    entry = session.config.stash.get(_HANDLE, None)
    if entry is not None:
        handle, data_dir = entry
        handle.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


_HANDLE = pytest.StashKey[tuple]()
