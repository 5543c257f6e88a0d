"""Whether a process still runs (for stopping a service and for clearing what dead ones left)."""

from __future__ import annotations

import os
from pathlib import Path


def alive(pid: int) -> bool:
    """True while ``pid`` runs. A zombie (ended, not yet reaped by its parent, e.g. the notebook
    kernel that started a detached service) has stopped: nothing is left to wait for or keep."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # gone meanwhile, or a system without /proc (then the signal is all there is)
        return not Path("/proc/self/status").exists()
    return "\nState:\tZ" not in status
