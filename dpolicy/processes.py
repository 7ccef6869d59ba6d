"""Process helpers: worker processes that never outlive the process that started them, and the
process's peak memory.

A pool's workers normally learn that their parent is gone only when they next talk to it; a
parent killed by SIGKILL (or the OOM killer) leaves them running, holding CPU and memory on the
robot's computer. :func:`exit_with_parent`, called in a worker at start-up, ends the worker within
``poll_s`` seconds of the parent's death, however it died.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time

#: How often a worker checks that its parent is alive.
PARENT_POLL_S = 0.5


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else (the pid was reused): treat as gone
        return False
    return True


def exit_with_parent(parent_pid: int, poll_s: float = PARENT_POLL_S) -> None:
    """Start a daemon thread that ends this process when ``parent_pid`` no longer runs.

    Also ends it when this process is re-parented (its parent id changes), which is how an
    orphan of a killed parent shows on POSIX systems.
    """
    original_ppid = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if not _alive(parent_pid) or os.getppid() != original_ppid:
                os._exit(1)  # no cleanup handlers: the owner that would use the results is gone

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # macOS reports bytes, Linux KiB
