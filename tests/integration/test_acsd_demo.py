# SPDX-License-Identifier: MIT
"""The README's main command (issue 6 must-show): ./demo starts Dovecot with sample mail,
acsd and a demo user, after which `grep -r Subject` over the tree finds the mail; ./demo
stop leaves nothing running or mounted. Run in a temporary directory (ACS_DEMO_DIR,
ACS_DEMO_TREE) with the build under test (ACS_BUILD_DIR)."""

import os
import subprocess
import time

import pytest

from acstest import fusecheck, paths, procs

pytestmark = pytest.mark.timeout(300)


def test_demo_start_grep_stop(harness_tmp):
    fusecheck.require_fuse()
    state = harness_tmp / 'demo'
    tree = harness_tmp / 'tree'
    env = dict(os.environ, ACS_DEMO_DIR=str(state), ACS_DEMO_TREE=str(tree),
               ACS_BUILD_DIR=str(paths.BUILD_DIR))
    demo = str(paths.REPO / 'demo')
    t0 = time.monotonic()
    r = subprocess.run([demo], env=env, capture_output=True, timeout=240)
    took = time.monotonic() - t0
    try:
        log = ''
        if (state / 'acsd.log').exists():
            log = (state / 'acsd.log').read_text(errors='replace')[-4000:]
        assert r.returncode == 0, r.stderr.decode(errors='replace') + log
        print(f'\n./demo took {took:.1f} s (build already done)')
        out = r.stdout.decode()
        assert str(tree / 'demo') in out and 'grep -r Subject' in out and './demo stop' in out
        g = subprocess.run(['grep', '-r', 'Subject', str(tree / 'demo')], capture_output=True)
        assert g.returncode == 0, g.stderr
        hits = g.stdout.decode().splitlines()
        assert len(hits) == 60, f'{len(hits)} Subject lines, expected 60 sample messages'
        assert any('/Archive/2024/cur/' in h for h in hits)
        st = subprocess.run([demo, 'status'], env=env, capture_output=True, timeout=60)
        assert st.returncode == 0 and b'acsd: running' in st.stdout, st.stdout
        # Running it again while it runs: says so, changes nothing.
        again = subprocess.run([demo], env=env, capture_output=True, timeout=120)
        assert again.returncode == 0 and b'already running' in again.stderr
    finally:
        pid = (state / 'acsd.pid').read_text().strip() if (state / 'acsd.pid').exists() else None
        s = subprocess.run([demo, 'stop'], env=env, capture_output=True, timeout=120)
    assert s.returncode == 0, s.stderr
    assert not fusecheck.is_mounted(tree / 'demo')
    assert not state.exists()
    if pid:
        assert not procs.alive(int(pid))
    left = [p for p in os.listdir('/proc') if p.isdigit() and str(state) in procs.cmdline(int(p))]
    assert not left, [procs.cmdline(int(p)) for p in left]
