# SPDX-License-Identifier: MIT
"""Process bookkeeping for the harness: descendants of a pid, waiting for exits, atexit stops."""

import atexit
import os
import signal
import time

# Strong references: a running server must not be garbage-collected before it is stopped.
_live = []


def register(obj):
    """Remembers obj so that obj.stop() runs at interpreter exit if it is still running."""
    if not any(o is obj for o in _live):
        _live.append(obj)


def unregister(obj):
    _live[:] = [o for o in _live if o is not obj]


def stop_all():
    """Closes (or stops) every registered object (newest first), then sweeps leftover Dovecot
    processes; returns the pids the sweep had to kill."""
    for obj in reversed(list(_live)):
        try:
            getattr(obj, 'close', obj.stop)()
        except Exception:  # noqa: BLE001 - best effort
            pass
    return sweep()


def cmdline(pid):
    try:
        with open(f'/proc/{pid}/cmdline', 'rb') as f:
            return f.read().replace(b'\0', b' ').decode(errors='replace')
    except OSError:
        return ''


def tagged(tag=None):
    """Live pids whose command line starts with 'dovecot-<tag>/' (children of Dovecots this
    process started carry tag 'acstest-<our pid>' in their process titles)."""
    tag = tag or f'acstest-{os.getpid()}'
    out = []
    for e in os.listdir('/proc'):
        if e.isdigit() and cmdline(int(e)).startswith(f'dovecot-{tag}/') and alive(int(e)):
            out.append(int(e))
    return out


def sweep():
    """SIGKILLs processes left over from Dovecots this process started; returns their pids."""
    left = tagged()
    kill_all(left)
    wait_gone(left, 5)
    return left


atexit.register(stop_all)


def _stat(pid):
    """(ppid, state) of pid, or None if it is gone."""
    try:
        with open(f'/proc/{pid}/stat', 'rb') as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    rest = data[data.rindex(b')') + 2:].split()
    return int(rest[1]), rest[0].decode()


def state(pid):
    """The one-letter state of pid ('R', 'S', 'T' stopped, 'Z' ...), None if it is gone."""
    st = _stat(pid)
    return st[1] if st else None


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
