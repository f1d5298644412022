# SPDX-License-Identifier: MIT
"""pytest setup for integration tests: puts the acstest harness on sys.path, shared fixtures."""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[1] / 'harness'
if str(HARNESS) not in sys.path:
    sys.path.insert(0, str(HARNESS))

from acstest import fusecheck, procs  # noqa: E402
from acstest.dbus import Bus  # noqa: E402
from acstest.dovecot import Dovecot  # noqa: E402
from acstest.pki import PKI  # noqa: E402


def _unmount_below(root):
    root = os.path.realpath(root)
    with open('/proc/self/mountinfo') as f:
        mps = [line.split()[4].encode().decode('unicode_escape') for line in f]
    for mp in sorted(mps, key=len, reverse=True):
        if mp == root or mp.startswith(root + '/'):
            fusecheck.unmount(mp)


@pytest.fixture
def harness_tmp():
    """A fresh directory under /tmp that nobody can traverse (mode 755), removed afterwards
    (after unmounting anything still mounted below it). ACS_KEEP_TMP=1 keeps it."""
    d = tempfile.mkdtemp(prefix='acs-test-', dir='/tmp')
    os.chmod(d, 0o755)
    yield Path(d)
    _unmount_below(d)
    if os.environ.get('ACS_KEEP_TMP') != '1':
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def dovecot(tmp_path):
    """A started Dovecot (default users, CA-issued certificate) in tmp_path; stopped
    afterwards, and the teardown fails if any of its processes survived."""
    dv = Dovecot(tmp_path / 'dovecot')
    seen = set(dv.pids())
    yield dv
    seen |= set(dv.pids())
    dv.close()
    left = [p for p in seen if procs.alive(p)]
    assert not left, f'dovecot processes {left} still alive after stop'


@pytest.fixture
def pki(tmp_path):
    """A PKI (test CA) in tmp_path/pki."""
    return PKI(tmp_path / 'pki')


@pytest.fixture
def bus(harness_tmp):
    """A started private dbus-daemon; stopped afterwards."""
    b = Bus(harness_tmp / 'bus')
    yield b
    b.stop()
