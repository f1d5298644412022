# SPDX-License-Identifier: MIT
"""Process bookkeeping for the harness: descendants of a pid, waiting for exits, atexit stops."""

import atexit
import os
import signal
import time
import weakref

_live = weakref.WeakSet()


def register(obj):
    """Remembers obj so that obj.stop() runs at interpreter exit if it is still running."""
    _live.add(obj)


def unregister(obj):
    _live.discard(obj)


@atexit.register
def _stop_all():
    for obj in list(_live):
        try:
            obj.stop()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def _stat(pid):
    """(ppid, state) of pid, or None if it is gone."""
    try:
        with open(f'/proc/{pid}/stat', 'rb') as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    rest = data[data.rindex(b')') + 2:].split()
    return int(rest[1]), rest[0].decode()


def alive(pid):
    """True if pid exists and is not a zombie."""
    st = _stat(pid)
    return st is not None and st[1] not in ('Z', 'X')


def descendants(pid):
    """All live descendant pids of pid (children, grandchildren, ...)."""
    children = {}
    for e in os.listdir('/proc'):
        if e.isdigit():
            st = _stat(int(e))
            if st:
                children.setdefault(st[0], []).append(int(e))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            if alive(c):
                out.append(c)
            todo.append(c)
    return out


def wait_gone(pids, timeout):
    """Waits until none of pids is alive; returns the list still alive after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if alive(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.01)


def kill_all(pids, sig=signal.SIGKILL):
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass
