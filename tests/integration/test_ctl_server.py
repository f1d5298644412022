# SPDX-License-Identifier: MIT
"""acsd's socket and session code (ctl/server.c, ctl/session.c, ctl/acsd.c) over a real Unix
socket, with a test double of the per-user instances (acsd-fake: ctl/test-fake-instance.c):
protocol and tokens, failed-login delays, connection caps, groups, expiry, daemon mode,
shutdown, 1,000 idle connections with a client that does not read and oversized lines.
The scenarios live in ctl/test-server.py (also runnable alone: test-server.py ACSD_FAKE;
ACSD_WRAPPER="valgrind ..." runs acsd-fake under valgrind). The same behaviour with the
real instances is tested in test_acsd_*.py."""

import importlib.util
import os
import tempfile

import pytest

from acstest import paths

_spec = importlib.util.spec_from_file_location('ctl_test_server', paths.REPO / 'ctl' / 'test-server.py')
ts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ts)


@pytest.fixture
def acsd_fake():
    ts.EXE = paths.binary('ctl/acsd-fake')
    assert os.geteuid() == 0, 'acsd runs as root: these tests need root'
    return ts.EXE


@pytest.mark.parametrize('scenario', ts.TESTS, ids=[t.__name__[2:] for t in ts.TESTS])
def test_server(acsd_fake, scenario):
    with tempfile.TemporaryDirectory(prefix='acsd-t', dir='/tmp') as tmp:
        os.chmod(tmp, 0o755)  # peers of another uid connect to the socket in it
        try:
            scenario(tmp)
        except BaseException:
            try:
                print(open(f'{tmp}/acsd.log').read()[-4000:])
            except OSError:
                pass
            raise
