# SPDX-License-Identifier: MIT
"""Where the repository, the build tree and its programs are, and free loopback ports."""

import os
import socket
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def _build_dir():
    d = Path(os.environ.get('ACS_BUILD_DIR', 'build'))
    if not d.is_absolute():
        d = REPO / d
    return d


BUILD_DIR = _build_dir()


def binary(name):
    """Absolute path (str) of a built program under the build directory.

    `name` may be a bare program name ('acs-syncd', found in any subdirectory of the build
    tree) or a relative path ('fs/acs-fs'). Raises FileNotFoundError naming the build
    directory when it is missing, so a test fails with a clear message.
    """
    build = _build_dir()
    p = build / name
    if p.is_file() and os.access(p, os.X_OK):
        return str(p)
    if '/' not in name and build.is_dir():
        hits = sorted(q for q in build.glob('*/' + name) if q.is_file() and os.access(q, os.X_OK))
        hits += sorted(q for q in build.glob('*/*/' + name) if q.is_file() and os.access(q, os.X_OK))
        if hits:
            return str(hits[0])
    raise FileNotFoundError(
        f"program {name!r} not found in build directory {build} "
        f"(ACS_BUILD_DIR={os.environ.get('ACS_BUILD_DIR', '<unset>')}); build it with "
        f"'meson setup {build} && ninja -C {build}'")


_given = set()
_given_lock = threading.Lock()


def free_port():
    """A free TCP port on 127.0.0.1 (bind port 0); never the same one twice per process."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]
        with _given_lock:
            if port not in _given:
                _given.add(port)
                return port
    raise RuntimeError('no free TCP port on 127.0.0.1')


def port_open(port, host='127.0.0.1', timeout=0.2):
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_listening(port, ip='127.0.0.1'):
    """True if a TCP socket LISTENs on ip:port (read from /proc/net/tcp; connects nowhere)."""
    a = ip.split('.')
    want = ('%02X%02X%02X%02X:%04X' % (int(a[3]), int(a[2]), int(a[1]), int(a[0]), port))
    any_ = '00000000:%04X' % port
    with open('/proc/net/tcp') as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[3] == '0A' and parts[1] in (want, any_):
                return True
    return False


def nobody_can_traverse(path):
    """True if 'other' may search every directory from / down to path (mode o+x)."""
    p = Path(path).resolve()
    for d in [p, *p.parents]:
        try:
            if not os.stat(d).st_mode & 0o001:
                return False
        except FileNotFoundError:
            return False
    return True


def sanitized_build():
    """True when the build directory under test was configured with b_sanitize (ASan/UBSan),
    read from meson's own introspection file."""
    import json
    info = _build_dir() / 'meson-info' / 'intro-buildoptions.json'
    with open(info) as f:
        opts = json.load(f)
    return any(o['name'] == 'b_sanitize' and o['value'] not in ('none', '') for o in opts)
