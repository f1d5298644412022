# SPDX-License-Identifier: MIT
"""pytest setup for integration tests: puts the acstest harness on sys.path, shared fixtures."""

import faulthandler
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[1] / 'harness'
if str(HARNESS) not in sys.path:
    sys.path.insert(0, str(HARNESS))

from acstest import fusecheck, paths, procs  # noqa: E402
from acstest.dbus import Bus  # noqa: E402
from acstest.dovecot import Dovecot  # noqa: E402
from acstest.pki import PKI  # noqa: E402


# tests/run sets ACS_SANITIZER_LOG_DIR for the build-asan tree: sanitizer reports of every
# program the tests start go to files there, and the test during which one appears fails.
SANITIZER_LOG_DIR = os.environ.get('ACS_SANITIZER_LOG_DIR')
if SANITIZER_LOG_DIR:
    os.makedirs(SANITIZER_LOG_DIR, exist_ok=True)
    for _var, _name in (('ASAN_OPTIONS', 'asan'), ('UBSAN_OPTIONS', 'ubsan')):
        _cur = os.environ.get(_var, '')
        if 'log_path=' not in _cur:
            os.environ[_var] = (_cur + ':' if _cur else '') + \
                f'log_path={SANITIZER_LOG_DIR}/{_name}'

DEFAULT_TIMEOUT = int(os.environ.get('ACS_TEST_TIMEOUT', '600'))


def _on_sigterm(signum, frame):
    # tests/run's outer timeout sends SIGTERM: end like ^C, so fixtures tear down, the
    # junit report is written and the atexit hook stops what is still running.
    raise KeyboardInterrupt('SIGTERM')


signal.signal(signal.SIGTERM, _on_sigterm)


def pytest_sessionfinish(session, exitstatus):
    """Stops whatever tests left running, and sweeps stray Dovecot processes."""
    left = procs.stop_all()
    if left:
        print(f'\nacstest: killed stray Dovecot processes {left}', file=sys.stderr)


def pytest_configure(config):
    config.addinivalue_line('markers', 'timeout(seconds): per-test time limit '
                            f'(default ACS_TEST_TIMEOUT or {DEFAULT_TIMEOUT})')
    config.addinivalue_line('markers', 'plain_build_only: a measurement a sanitizer distorts '
                            '(peak RSS): collected only for a plain build, never skipped')


def pytest_collection_modifyitems(config, items):
    """Leaves plain_build_only tests out of a sanitizer build's run (they are counted in the
    plain build's run; a skip would count as a failure)."""
    if not paths.sanitized_build():
        return
    drop = [i for i in items if i.get_closest_marker('plain_build_only')]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [i for i in items if not i.get_closest_marker('plain_build_only')]


class TestTimeout(Exception):
    """Raised in the test when its time limit is over."""


@pytest.fixture(autouse=True)
def _test_time_limit(request):
    """Fails a test (setup, call and teardown of later fixtures) that runs too long; if
    the exception cannot get through, faulthandler dumps all stacks and ends pytest."""
    m = request.node.get_closest_marker('timeout')
    secs = float(m.args[0]) if m else DEFAULT_TIMEOUT

    def on_alarm(signum, frame):
        raise TestTimeout(f'{request.node.nodeid} exceeded its time limit of {secs:g}s')

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, secs)
    faulthandler.dump_traceback_later(secs + 120, exit=True)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(autouse=True)
def _sanitizer_reports():
    """With ACS_SANITIZER_LOG_DIR set, fails the test if a sanitizer report appeared."""
    if not SANITIZER_LOG_DIR:
        yield
        return
    before = set(os.listdir(SANITIZER_LOG_DIR))
    yield
    new = sorted(set(os.listdir(SANITIZER_LOG_DIR)) - before)
    texts = []
    for n in new:
        with open(os.path.join(SANITIZER_LOG_DIR, n), errors='replace') as f:
            text = f.read()
        # A log holding only "Suppressions used:" (LSan suppressions matched) is no error.
        if any(k in text for k in ('ERROR: ', 'runtime error', 'SUMMARY: ')):
            texts.append(f'--- {n}\n{text[:20000]}')
    if texts:
        pytest.fail('sanitizer report(s) from programs started by this test:\n'
                    + '\n'.join(texts), pytrace=False)


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
