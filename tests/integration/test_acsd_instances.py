# SPDX-License-Identifier: MIT
"""acsd's per-user instances (issue 6 must-shows): idle timeout (unmounted, children gone,
memory cache gone); who may read a user's tree; kill -9 of acs-syncd or acs-fs (restarted,
tree back, sessions resume)."""

import os
import subprocess
import time

import pytest

from acstest import fusecheck, procs
from acstest.acsd import Acsd, maildir_files, wait_for
from acstest.corpus import Corpus

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def seeded(dovecot):
    Corpus(62, 20).seed_maildir(dovecot, 'user1')
    Corpus(63, 12).seed_maildir(dovecot, 'user2')
    return dovecot


def _teardown(a):
    left = a.stop()
    a.close()
    assert not left['pids'] and not left['mounts'], \
        f'acsd left processes or mounts behind after SIGTERM: {left}\n{a.log_tail()}'


def _files(*dirs):
    return sorted(os.path.join(r, n) for d in dirs for r, _, ns in os.walk(d) for n in ns)


def test_idle_timeout(seeded, harness_tmp):
    fusecheck.require_fuse()
    a = Acsd(harness_tmp / 'acsd', dovecot=seeded, idle_timeout=2)
    try:
        ok = a.open('user1', 'pass1')
        wait_for(lambda: maildir_files(a.tree('user1') / 'INBOX'), 60, 'mail in the tree')
        agents = a.agents('user1')
        pids = agents['syncd'] + agents['fs']
        assert agents['syncd'] and agents['fs'], f'agents of user1: {agents}\n{a.log_tail()}'
        cache = _files(a.memory_dir)
        assert cache, 'no memory cache file while the instance runs'

        # A session is open: the idle timer does not run.
        time.sleep(4)
        assert a.mounted('user1'), 'unmounted while a session was open'
        assert all(procs.alive(p) for p in pids)

        with a.client() as c:
            c.resume(ok['token'])
            c.call('CLOSE')
        t0 = time.monotonic()
        wait_for(lambda: not a.mounted('user1'), 30, 'the idle unmount')
        wait_for(lambda: not any(procs.alive(p) for p in pids), 30, 'the children to exit')
        wait_for(lambda: not _files(a.memory_dir), 30, 'the memory cache to be deleted')
        print(f'\nidle stop {time.monotonic() - t0:.1f} s after CLOSE (idle_timeout 2 s)')
        assert not any(a.agents().values())
        assert not os.path.exists(cache[0])

        # The user can open again afterwards (a fresh instance).
        ok = a.open('user1', 'pass1')
        wait_for(lambda: maildir_files(a.tree('user1') / 'INBOX'), 60, 'mail after reopening')
    finally:
        _teardown(a)


def _as_uid(uid, gid, *cmd):
    return subprocess.run(['setpriv', '--reuid', str(uid), '--regid', str(gid), '--clear-groups',
                           *cmd], capture_output=True)


def test_tree_access(seeded, harness_tmp):
    """tree group www-data, mode 0750: www-data reads, nobody does not; user2's agent uid
    cannot read user1's tree or cache."""
    fusecheck.require_fuse()
    a = Acsd(harness_tmp / 'acsd', dovecot=seeded, group='www-data', mode='0750')
    try:
        a.open('user1', 'pass1')
        a.open('user2', 'pass2')
        inbox1 = a.tree('user1') / 'INBOX'
        wait_for(lambda: maildir_files(inbox1), 60, 'mail in user1\'s tree')
        one = maildir_files(inbox1)[0]

        r = _as_uid(33, 33, 'cat', one)  # www-data: the configured group
        assert r.returncode == 0 and r.stdout, r.stderr
        r = _as_uid(65534, 65534, 'cat', one)  # nobody: not allowed
        assert r.returncode != 0 and b'Permission denied' in r.stderr, r
        r = _as_uid(65534, 65534, 'ls', str(a.tree('user1')))
        assert r.returncode != 0 and b'Permission denied' in r.stderr, r

        # user2's agents run as another uid than user1's; they cannot read user1's tree
        # or user1's cache database.
        s1 = a.agents('user1')['syncd']
        s2 = a.agents('user2')['syncd']
        assert s1 and s2, (s1, s2)
        u1, u2 = a.agent_uid(s1[0]), a.agent_uid(s2[0])
        print(f'\nagent uids: user1 {u1}, user2 {u2}')
        assert u1 != u2, 'both users\' agents run as the same uid'
        assert u1 != 0 and u2 != 0
        r = _as_uid(u2, u2, 'cat', one)
        assert r.returncode != 0, 'user2\'s agent uid can read user1\'s tree'
        caches1 = a.cache_files('user1')
        assert caches1, _files(a.memory_dir, a.cache_dir)
        for f in caches1:
            r = _as_uid(u2, u2, 'head', '-c', '16', f)
            assert r.returncode != 0, f'user2\'s agent uid can read {f}'

        # A non-admin uid is refused WHO (acsctl exit 77, ERR denied).
        r = a.acsctl('who', uid=65534)
        assert r.returncode == 77 and b'denied' in r.stderr, r
    finally:
        _teardown(a)


@pytest.mark.parametrize('victim', ['syncd', 'fs'])
def test_kill_agent(seeded, harness_tmp, victim):
    fusecheck.require_fuse()
    a = Acsd(harness_tmp / 'acsd', dovecot=seeded)
    try:
        ok = a.open('user1', 'pass1')
        inbox = a.tree('user1') / 'INBOX'
        wait_for(lambda: maildir_files(inbox), 60, 'mail in the tree')
        old = a.agents('user1')[victim]
        assert len(old) == 1, a.agents('user1')
        os.kill(old[0], 9)
        t0 = time.monotonic()
        new = wait_for(lambda: [p for p in a.agents('user1')[victim] if p != old[0]], 60,
                       f'acsd to restart acs-{victim}')
        # The tree is back (a dead acs-fs leaves ENOTCONN until acsd mounts again).

        def readable():
            try:
                files = maildir_files(inbox)
                with open(files[0], 'rb') as f:
                    return f.read(1) and files
            except (OSError, IndexError):
                return None
        files = wait_for(readable, 60, 'the tree to come back')
        print(f'\nacs-{victim} {old[0]} killed; new pid {new[0]}, tree back after '
              f'{time.monotonic() - t0:.2f} s')
        # The session resumes, and new mail still arrives (the agents work).
        with a.client() as c:
            r = c.resume(ok['token'])
            assert r['path'] == str(a.tree('user1'))
        with seeded.client('user1') as imap:
            imap.append('INBOX', None, None, b'Subject: after kill\r\n\r\nx\r\n')
        wait_for(lambda: len(maildir_files(inbox)) == len(files) + 1, 60,
                 'new mail after the restart')
        assert a.mounted('user1')
    finally:
        _teardown(a)
