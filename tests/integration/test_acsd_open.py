# SPDX-License-Identifier: MIT
"""acsd end to end (issue 6): OPEN through acsctl mounts the user's tree with the mail of a
real Dovecot; RESUME, STATUS, WHO, CLOSE; open -> first file readable on an already synced
persistent cache (timed); a wrong password: a clear error, nothing mounted, repeated
failures slowed down while other clients are still served."""

import os
import statistics
import time

import pytest

from acstest import fusecheck, paths
from acstest.acsd import AcsError, Acsd, maildir_files, wait_for
from acstest.corpus import Corpus

pytestmark = pytest.mark.timeout(240)


def _lf(data):
    return data.replace(b'\r\n', b'\n')


@pytest.fixture
def corpus(dovecot):
    c = Corpus(61, 40)
    c.seed_maildir(dovecot, 'user1')
    return c


def _acsd(dovecot, harness_tmp, **kw):
    fusecheck.require_fuse()
    return Acsd(harness_tmp / 'acsd', dovecot=dovecot, **kw)


def _teardown(a):
    left = a.stop()
    a.close()
    assert not left['pids'] and not left['mounts'], \
        f'acsd left processes or mounts behind after SIGTERM: {left}\n{a.log_tail()}'


def test_open_resume_status_close(dovecot, harness_tmp, corpus):
    a = _acsd(dovecot, harness_tmp)
    try:
        r = a.acsctl('open', 'user1', input=b'pass1\n')
        assert r.returncode == 0, r.stderr.decode() + a.log_tail()
        out = dict(line.split('=', 1) for line in r.stdout.decode().splitlines())
        assert out['user'] == 'user1'
        assert out['path'] == str(a.tree('user1'))
        token = out['token']
        assert len(token) == 64
        assert a.mounted('user1')

        # The tree holds the server's INBOX, byte for byte (LF line ends).
        inbox = corpus.by_folder()['INBOX']
        files = wait_for(lambda: len(maildir_files(a.tree('user1') / 'INBOX')) == len(inbox)
                         and maildir_files(a.tree('user1') / 'INBOX'), 60, 'INBOX in the tree')
        bodies = sorted(open(f, 'rb').read() for f in files)
        assert bodies == sorted(_lf(m.data) for m in inbox)
        for folder in ('Archive/2024', 'Work/Projects/Big Project'):
            want = len(corpus.by_folder().get(folder, []))
            wait_for(lambda: len(maildir_files(a.tree('user1') / folder)) == want, 60, folder)

        r = a.acsctl('resume', token)
        assert r.returncode == 0, r.stderr
        assert f'path={a.tree("user1")}' in r.stdout.decode()

        r = a.acsctl('--json', 'status', 'user1')
        assert r.returncode == 0, r.stderr
        import json
        st = json.loads(r.stdout)
        assert st['items'][0]['user'] == 'user1', st

        r = a.acsctl('--json', 'who')
        assert r.returncode == 0, r.stderr
        assert any(i['user'] == 'user1' for i in json.loads(r.stdout)['items'])

        r = a.acsctl('close', '-', input=token.encode() + b'\n')
        assert r.returncode == 0, r.stderr
        r = a.acsctl('resume', token)
        assert r.returncode == 77 and b'token' in r.stderr, r.stderr
    finally:
        _teardown(a)


def test_sync_progress(dovecot, harness_tmp, corpus):
    a = _acsd(dovecot, harness_tmp)
    try:
        a.open('user1', 'pass1')
        with dovecot.client('user1') as imap:
            for i in range(3):
                imap.append('INBOX', None, None,
                            f'Subject: sync-now {i}\r\nMessage-ID: <s{i}@t>\r\n\r\nbody {i}\r\n'.encode())
        r = a.acsctl('-t', '30', 'sync', 'user1', 'INBOX')
        assert r.returncode == 0, r.stderr.decode() + a.log_tail()
        assert b'sync:' in r.stderr
        # After OK SYNC the new mail is in the cache; the tree shows it as soon as acs-fs's
        # watcher sees the commit (milliseconds).
        def new_mail():
            names = [open(f, 'rb').read() for f in maildir_files(a.tree('user1') / 'INBOX')]
            return sum(b'Subject: sync-now' in n for n in names) == 3
        t_ok = time.monotonic()
        wait_for(new_mail, 5, 'the synced mail in the tree after OK SYNC')
        print(f'\nnew mail in the tree {(time.monotonic() - t_ok) * 1000:.0f} ms after OK SYNC')
        r = a.acsctl('sync', 'nosuchuser')
        assert r.returncode == 67, r.stderr
    finally:
        _teardown(a)


def test_open_to_first_file_on_synced_persistent_cache(dovecot, harness_tmp, corpus):
    """Must show: open -> first file readable <= 300 ms on an already synced persistent
    cache (median of 5; the instance is stopped by the idle timeout between runs)."""
    a = _acsd(dovecot, harness_tmp, cache='persistent', idle_timeout=1)
    try:
        first = a.open('user1', 'pass1')
        inbox = a.tree('user1') / 'INBOX'
        want = len(corpus.by_folder()['INBOX'])
        wait_for(lambda: len(maildir_files(inbox)) == want, 60, 'the first sync')
        with a.client() as c:
            c.resume(first['token'])
            c.call('CLOSE')
        times = []
        for _ in range(5):
            wait_for(lambda: not a.mounted('user1') and not any(a.agents('user1').values()),
                     30, 'the idle stop')
            t0 = time.monotonic()
            with a.client() as c:
                ok = c.open('user1', 'pass1')
                files = maildir_files(os.path.join(ok['path'], 'INBOX'))
                assert files, 'INBOX empty right after OPEN on a synced persistent cache'
                with open(files[0], 'rb') as f:
                    assert f.read(1)
                times.append((time.monotonic() - t0) * 1000)
                c.call('CLOSE')
        med = statistics.median(times)
        print(f'\nopen -> first file readable (persistent, synced): median {med:.1f} ms, '
              f'runs {", ".join(f"{t:.1f}" for t in times)} ms')
        limit = 900 if paths.sanitized_build() else 300
        assert med <= limit, f'open -> first file took {med:.1f} ms (limit {limit} ms)'
    finally:
        _teardown(a)


def test_wrong_password(dovecot, harness_tmp, corpus):
    a = _acsd(dovecot, harness_tmp, login_failures=3,
              settings={'limits': {'login_delay_max': 4}})
    try:
        t0 = time.monotonic()
        r = a.acsctl('open', 'user1', input=b'wrong\n')
        base = time.monotonic() - t0
        assert r.returncode == 77, r.stderr.decode() + a.log_tail()
        assert b'auth' in r.stderr
        # Nothing mounted, no agent left, no cache of the failed open.
        assert not a.mounts(), a.mounts()
        wait_for(lambda: not any(a.agents().values()), 15, 'the agents of the failed open to stop')
        def cache_left():
            return [os.path.join(d, n) for d, _, ns in os.walk(a.memory_dir) for n in ns]
        try:
            wait_for(lambda: not cache_left(), 10, 'the memory cache of the failed open to go')
        except AssertionError:
            raise AssertionError(f'memory cache left after a failed open: {cache_left()}') from None

        # An unknown user gets the same answer.
        with pytest.raises(AcsError) as e:
            a.open('nosuchuser', 'x')
        assert e.value.code == 'auth'

        # Repeated failures are slowed down (or refused with ERR limit), and while a
        # failure is being delayed, other clients are served at once.
        times, codes = [], []
        for i in range(7):
            t0 = time.monotonic()
            try:
                a.open('user1', f'wrong{i}')
                codes.append('ok')
            except AcsError as err:
                codes.append(err.code)
            times.append(time.monotonic() - t0)
        print(f'\nfailed logins: first {base * 1000:.0f} ms, then '
              f'{[f"{t * 1000:.0f} ms {c}" for t, c in zip(times, codes)]}')
        assert 'ok' not in codes
        assert all(c in ('auth', 'limit') for c in codes), codes
        # Counting per user (user1) and per peer (root, which also failed for nosuchuser):
        # from the loop's 3rd attempt on, both keys are past login_failures = 3.
        slowed = [t for t, c in zip(times[2:], codes[2:]) if c == 'limit' or t >= base + 0.5]
        assert len(slowed) == len(times[2:]), \
            f'failures past login_failures not slowed: {times} {codes}'

        slow = a.client()
        slow.send('OPEN user1 wrong-again')
        t0 = time.monotonic()
        with a.client() as other:
            other.call('STATUS')
        assert time.monotonic() - t0 < 1.0, 'a delayed failed login blocked another client'
        assert slow.reply()[0] == 'ERR'
        slow.close()
        assert not a.mounts()

        # Failures of another user from the same peer uid are slowed too (per peer).
        t0 = time.monotonic()
        with pytest.raises(AcsError) as e:
            a.open('user2', 'wrong')
        took = time.monotonic() - t0
        print(f'other user, same peer: {took * 1000:.0f} ms {e.value.code}')
        assert e.value.code == 'limit' or took >= base + 0.5, (took, e.value.code)
    finally:
        _teardown(a)
