# SPDX-License-Identifier: MIT
"""acsd's per-user instances (issue 6 must-shows): idle timeout (unmounted, children gone,
memory cache gone); who may read a user's tree; kill -9 of acs-syncd or acs-fs (restarted,
tree back, sessions resume)."""

import os
import resource
import subprocess
import threading
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


def _wchans(pid):
    out = []
    for t in os.listdir(f'/proc/{pid}/task'):
        try:
            with open(f'/proc/{pid}/task/{t}/wchan') as f:
                out.append(f.read().strip())
        except OSError:
            pass
    return out


def test_fs_stuck_dying(seeded, harness_tmp):
    """acs-fs SIGKILLed while a rename waits for its answer and its watcher thread waits in
    fuse_reverse_inval_entry for that same directory cannot finish dying on its own
    (docs/fs.md, "Killed mid-call"): acsd aborts its FUSE connection, the rename fails,
    acs-fs ends, is restarted, and the tree comes back. gdb (non-stop) holds the FUSE
    worker that took the rename before it answers, so the deadlock happens every time."""
    fusecheck.require_fuse()
    a = Acsd(harness_tmp / 'acsd', dovecot=seeded)
    gdb = None
    try:
        a.open('user1', 'pass1')
        cur = a.tree('user1') / 'INBOX' / 'cur'
        files = wait_for(lambda: [f for f in maildir_files(a.tree('user1') / 'INBOX') if '/cur/' in f], 60,
                         'mail in INBOX/cur')
        fs_pid = a.agents('user1')['fs'][0]
        gdb = subprocess.Popen(
            ['gdb', '-q', '-nx', '-ex', 'set pagination off', '-ex', 'set non-stop on',
             '-ex', f'attach {fs_pid}', '-ex', 'break rename_message'],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            cwd=harness_tmp, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0)))
        out = []
        threading.Thread(target=lambda: out.extend(gdb.stdout), daemon=True).start()
        wait_for(lambda: any('Breakpoint 1 at' in ln for ln in out), 60, 'gdb to set its breakpoint')
        # a non-stop attach stops the threads one by one, after the commands above ran:
        # resume them all once they are stopped, and check that none stays stopped
        time.sleep(1)
        gdb.stdin.write('continue -a &\n')
        gdb.stdin.flush()
        time.sleep(0.5)
        n = len(out)
        gdb.stdin.write('info threads\n')
        gdb.stdin.flush()
        wait_for(lambda: sum('Thread 0x' in ln for ln in out[n:]) >= 2, 30, 'gdb to list the threads')
        time.sleep(0.2)
        listing = [ln for ln in out[n:] if 'Thread 0x' in ln]
        assert all('(running)' in ln for ln in listing), f'threads not resumed: {listing}'
        # 1. a rename (flag change) in INBOX/cur: the kernel holds cur's lock until acs-fs answers
        src = files[0]
        dst = src.rsplit(':2,', 1)[0] + ':2,' + ''.join(sorted(set(src.rsplit(':2,', 1)[1]) | {'F'}))
        res = {}

        def do_rename():
            try:
                os.rename(src, dst)
                res['ok'] = True
            except OSError as e:
                res['err'] = e
        renamer = threading.Thread(target=do_rename, daemon=True)
        renamer.start()
        wait_for(lambda: any('Breakpoint 1,' in ln for ln in out), 30,
                 f'the rename to reach acs-fs (gdb: {"".join(out[-10:])})')
        # 2. a change on the server to another message of INBOX: acs-syncd writes it to the
        #    cache and acs-fs's watcher invalidates the old name, waiting for cur's lock
        with seeded.client('user1') as imap:
            imap.select('INBOX')
            imap.uid('STORE', '1:*', '+FLAGS', '(\\Answered)')
        wait_for(lambda: any('fuse_reverse_inval' in w for w in _wchans(fs_pid)), 30,
                 'the watcher to wait in fuse_reverse_inval_entry')
        # 3. SIGKILL: the worker dies, the watcher cannot; acs-fs cannot end by itself.
        #    Without the FUSE control filesystem (not mounted on many hosts) acsd mounts it
        kept = fusecheck.unmount_fusectl()
        os.kill(fs_pid, 9)
        gdb.stdin.write('quit\n')
        gdb.stdin.close()
        gdb.wait(timeout=30)
        t0 = time.monotonic()
        line = wait_for(lambda: [ln for ln in a.log_tail(200).splitlines() if 'stuck while dying' in ln], 30,
                        'acsd to notice the stuck acs-fs and abort its connection')[0]
        assert line.endswith(': done'), f'acsd could not abort the connection: {line}'
        assert fusecheck.fusectl_mounted(), 'acsd did not mount the FUSE control filesystem'
        renamer.join(30)
        assert not renamer.is_alive(), 'the rename still hangs after the abort'
        assert 'err' in res, f'the rename answered success although acs-fs died before answering: {res}'
        wait_for(lambda: not procs.alive(fs_pid), 30, 'the stuck acs-fs to end')
        new = wait_for(lambda: [p for p in a.agents('user1')['fs'] if p != fs_pid], 60,
                       'acsd to restart acs-fs')

        def readable():
            try:
                fl = maildir_files(a.tree('user1') / 'INBOX')
                with open(fl[0], 'rb') as f:
                    return f.read(1) and fl
            except (OSError, IndexError):
                return None
        wait_for(readable, 60, 'the tree to come back')
        print(f'\nacs-fs {fs_pid} stuck dying: connection aborted and tree back '
              f'{time.monotonic() - t0:.2f} s after the kill (new acs-fs {new[0]}); rename: {res["err"]!r}; '
              + (f'fusectl stayed mounted, its mounting by acsd not tested ({kept})' if kept
                 else 'fusectl was unmounted before the kill and mounted by acsd'))
    finally:
        if gdb is not None and gdb.poll() is None:
            gdb.kill()
        _teardown(a)
