"""One writer per run folder: `<run>/.lock` holds the owner's pid and host.

A second `rlvr train` (or stage) on the same folder is refused while the owner lives; a lock left
by a process that is gone (killed, crashed, the machine rebooted) is taken over, and says so. A lock
from another host cannot be checked from here: it is refused with the command that clears it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path


class RunLockedError(RuntimeError):
    pass


class RunLock:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.owned = True
            return
        raise RunLockedError(f"{self.path.parent}: could not take the run folder's lock ({self.path})")

    def _take_over_if_stale(self) -> None:
        try:
            owner = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            owner = {}
        pid, host = owner.get("pid"), owner.get("host")
        if host and host != socket.gethostname():
            raise RunLockedError(
                f"{self.path.parent} is in use by pid {pid} on host {host} (since {owner.get('since')}); "
                f"if that run is over, remove {self.path} and start again"
            )
        if pid == os.getpid():  # this process's own, from a start that failed before it could release it
            self.path.unlink(missing_ok=True)
            return
        if isinstance(pid, int) and _alive(pid):
            raise RunLockedError(
                f"{self.path.parent} is in use by another run (pid {pid}, since {owner.get('since')}): "
                "wait for it, stop it, or give this run another name or seed"
            )
        print(f"rlvr: taking over the lock of {self.path.parent}: its owner (pid {pid}) is no longer running", file=sys.stderr)
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        if getattr(self, "owned", False):
            self.owned = False
            self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped by its parent) holds nothing
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return True
