"""One ``kailin run`` per run folder: ``RUN_DIR/run.lock`` names the holder (pid, host, start).

The lock file is created atomically (written aside, then hard-linked into place, which fails when
it exists). A second run on the same folder stops at once with an error naming the holder. A lock
whose process is gone (same host, pid dead or reused by another process) was left by a killed run
and is taken over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kailin.errors import KailinError

log = logging.getLogger("kailin.run")
LOCK_NAME = "run.lock"


class RunLockedError(KailinError):
    """Another ``kailin run`` holds the run folder."""


def _proc_start(pid: int) -> str | None:
    """The start time of a process in clock ticks since boot (Linux), to tell a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _proc_start(pid)
    return not (start and now and now != start)


def read_lock(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The holder of ``run_dir``'s lock (with ``alive``: None when on another host), or None."""
    p = Path(run_dir) / LOCK_NAME
    try:
        holder = json.loads(p.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError):
        return {"unreadable": True, "alive": True}
    if holder.get("host") == socket.gethostname():
        holder["alive"] = _alive(int(holder.get("pid", -1)), holder.get("proc_start"))
    else:
        holder["alive"] = None
    return holder


def describe(holder: dict[str, Any]) -> str:
    if holder.get("unreadable"):
        return "an unreadable lock file"
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
            + (f" ({holder['command']})" if holder.get("command") else ""))


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Hold ``RUN_DIR/run.lock`` for the duration of the block."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
          "proc_start": _proc_start(os.getpid()),
          "command": " ".join(sys.argv)[:300]}
    tmp = run_dir / f".run.lock.{os.getpid()}"
    tmp.write_text(json.dumps(me))
    try:
        for _ in range(3):
            try:
                os.link(tmp, path)
                break
            except FileExistsError:
                holder = read_lock(run_dir)
                if holder is None:
                    continue  # released meanwhile
                if holder.get("alive") is False:
                    log.warning("%s: taking over the lock of a run that is gone (%s)", run_dir,
                                describe(holder))
                    stale = run_dir / f".run.lock.stale.{os.getpid()}"
                    with contextlib.suppress(FileNotFoundError):
                        os.replace(path, stale)
                        stale.unlink()
                    continue
                raise RunLockedError(
                    f"{run_dir}: another `kailin run` is using this run folder: "
                    f"{describe(holder)}. Wait for it to finish, or stop it; a lock left by a "
                    f"killed run is taken over automatically ({path})") from None
        else:
            raise RunLockedError(f"{run_dir}: could not take the lock {path}")
    finally:
        tmp.unlink(missing_ok=True)
    try:
        yield me
    finally:
        holder = read_lock(run_dir)
        if holder and holder.get("pid") == me["pid"] and holder.get("host") == me["host"]:
            path.unlink(missing_ok=True)
