# SPDX-License-Identifier: MIT
"""acsd's per-user instances (ctl/instance.c) beyond the issue's must-shows: opens that
race a start, a password changed on the server, agent uids without a passwd entry,
persistent caches keeping their uid across acsd restarts, and what a crashed acsd leaves."""

import os
import pwd
import stat
import threading
import time

import pytest

from acstest import procs
from acstest.acsd import Acsd, AcsError, agent_uid_range, maildir_files, wait_for
from acstest.corpus import Corpus
from acstest.fusecheck import require_fuse

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def seeded(dovecot):
    Corpus(71, 12).seed_maildir(dovecot, 'user1')
    Corpus(72, 8).seed_maildir(dovecot, 'user2')
    return dovecot


def _teardown(a):
    left = a.stop()
    a.close()
    assert not left['pids'] and not left['mounts'], f'acsd left {left}\n{a.log_tail()}'


def _wait(a, pred, timeout, what):
    """wait_for with acsd's log in the failure."""
    try:
        return wait_for(pred, timeout, what)
    except AssertionError as e:
        raise AssertionError(f'{e}\n{a.log_tail(80)}') from None


def _status(a, user):
    with a.client() as c:
        _, items = c.call(f'STATUS {user}')
    return items[0]


def _open(a, user, password):
    try:
        return a.open(user, password)
    except AcsError as e:
        return e


def test_concurrent_opens_share_one_start(seeded, harness_tmp):
    """Opens that arrive while the instance starts wait for its login and are each checked
    against it: right passwords share the one instance, a wrong one gets ERR auth."""
    require_fuse()
    a = Acsd(harness_tmp / 'acsd', dovecot=seeded)
    try:
        results = {}
        pw = {0: 'pass1', 1: 'pass1', 2: 'wrong', 3: 'pass1'}
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, _open(a, 'user1', pw[i])))
                   for i in pw]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        print('\n', {i: (r.code if isinstance(r, AcsError) else 'ok') for i, r in results.items()})
        assert isinstance(results[2], AcsError) and results[2].code == 'auth', results[2]
        for i in (0, 1, 3):
            assert not isinstance(results[i], AcsError), (i, results[i], a.log_tail())
            assert results[i]['path'] == str(a.tree('user1'))
        assert len({results[i]['token'] for i in (0, 1, 3)}) == 3
        # acsd answers once the tree is mounted, which it does itself before it starts
        # acs-fs: the child may not have exec'd yet (seen once in CI under load)
        _wait(a, lambda: (lambda g: g['syncd'] and g['fs'])(a.agents('user1')), 30, 'acs-syncd and acs-fs')
        time.sleep(0.2)
        agents = a.agents('user1')
        assert len(agents['syncd']) == 1 and len(agents['fs']) == 1, agents
        st = _status(a, 'user1')
        assert st['state'] == 'online' and st['sessions'] == '3', st
        _wait(a, lambda: maildir_files(a.tree('user1') / 'INBOX'), 60, 'mail in the tree')
    finally:
        _teardown(a)


def test_password_changed_on_server(seeded, harness_tmp):
    """The server's password changes while the instance runs: the cache stays served, the
    next login of acs-syncd fails (state authfail, no retry storm), the old password is
    refused, and an open with the new one brings the instance back online."""
    require_fuse()
    a = Acsd(harness_tmp / 'acsd', dovecot=seeded)
    try:
        a.open('user1', 'pass1')
        inbox = a.tree('user1') / 'INBOX'
        files = _wait(a, lambda: maildir_files(inbox), 60, 'mail in the tree')

        seeded.users['user1'] = 'changed1'
        seeded._write_users()
        old = a.agents('user1')['syncd']
        os.kill(old[0], 9)  # its next login uses the password in acsd's vault: refused
        _wait(a, lambda: _status(a, 'user1')['state'] == 'authfail', 60, 'state authfail')
        assert a.mounted('user1') and maildir_files(inbox) == files, 'tree lost on authfail'
        time.sleep(3)
        assert not a.agents('user1')['syncd'], 'acs-syncd retries a refused password'

        with pytest.raises(AcsError) as e:
            a.open('user1', 'pass1')
        assert e.value.code == 'auth'
        # mail that came meanwhile arrives once acs-syncd logs in with the new password
        with seeded.client('user1', password='changed1') as imap:
            imap.append('INBOX', None, None, b'Subject: after the change\r\n\r\nx\r\n')
        ok = a.open('user1', 'changed1')
        assert ok['path'] == str(a.tree('user1'))
        assert _status(a, 'user1')['state'] == 'online'
        _wait(a, lambda: len(maildir_files(inbox)) == len(files) + 1, 60, 'new mail after re-login')
        # the old password is gone from the vault: it is refused now, the new one answered at once
        with pytest.raises(AcsError):
            a.open('user1', 'pass1')
        t0 = time.monotonic()
        a.open('user1', 'changed1')
        assert time.monotonic() - t0 < 1
    finally:
        _teardown(a)


def test_agent_uid_without_passwd_entry(seeded, harness_tmp):
    """Agent uids of the range need not exist in /etc/passwd: acsd gives the running
    instance's uid a transient record in /run/userdb (dbus-daemon must resolve it), and
    removes it when the instance stops."""
    require_fuse()
    lo, _ = agent_uid_range()
    lo += 3000000  # the same slot, shifted to uids no install script created
    hi = lo + 15
    with pytest.raises(KeyError):
        pwd.getpwuid(lo)
    a = Acsd(harness_tmp / 'acsd', dovecot=seeded, idle_timeout=1,
             settings={'agent': {'uid_min': lo, 'uid_max': hi}})
    try:
        ok = a.open('user1', 'pass1')
        _wait(a, lambda: maildir_files(a.tree('user1') / 'INBOX'), 60, 'mail in the tree')
        uid = a.agent_uid(a.agents('user1')['syncd'][0])
        assert lo <= uid <= hi
        assert pwd.getpwuid(uid).pw_name == f'acs-{uid}'
        assert os.path.exists(f'/run/userdb/{uid}.user')
        with a.client() as c:
            c.resume(ok['token'])
            c.call('CLOSE')
        _wait(a, lambda: not a.agents('user1')['syncd'] and not a.mounted('user1'), 30, 'the idle stop')
        _wait(a, lambda: not os.path.exists(f'/run/userdb/{uid}.user'), 10, 'the user record to go')
        with pytest.raises(KeyError):
            pwd.getpwuid(uid)
    finally:
        _teardown(a)


def test_persistent_caches_keep_their_uid(seeded, harness_tmp):
    """A persistent cache is owned (0700) by its user's agent uid, and the user gets the
    same uid after acsd restarts, whatever order users come back in."""
    require_fuse()
    a = Acsd(harness_tmp / 'acsd', dovecot=seeded, cache='persistent', idle_timeout=600)
    try:
        uids = {}
        for user, pw in (('user1', 'pass1'), ('user2', 'pass2')):
            a.open(user, pw)
            _wait(a, lambda: maildir_files(a.tree(user) / 'INBOX'), 60, f'mail of {user}')
            uids[user] = a.agent_uid(a.agents(user)['syncd'][0])
        assert uids['user1'] != uids['user2']
        # a refused login of a new name keeps neither a directory nor a uid
        with pytest.raises(AcsError) as e:
            a.open('nosuchuser', 'x')
        assert e.value.code == 'auth'
        _wait(a, lambda: not (a.cache_dir / 'nosuchuser').exists(), 10, 'the failed cache to go')
        for user, uid in uids.items():
            st = os.lstat(a.cache_dir / user)
            assert st.st_uid == uid and stat.S_IMODE(st.st_mode) == 0o700, (user, st)
        a.stop()
        a.start()
        for user, pw in (('user2', 'pass2'), ('user1', 'pass1')):
            a.open(user, pw)
            got = a.agent_uid(a.agents(user)['syncd'][0])
            assert got == uids[user], f'{user} came back as uid {got}, was {uids[user]}'
    finally:
        _teardown(a)


def test_crashed_acsd_leaves_nothing_running(seeded, harness_tmp):
    """kill -9 of acsd: its agents die with it (parent-death signal); the next acsd
    detaches the dead mount, deletes the stale memory cache, and serves the user again."""
    require_fuse()
    a = Acsd(harness_tmp / 'acsd', dovecot=seeded)
    try:
        a.open('user1', 'pass1')
        inbox = a.tree('user1') / 'INBOX'
        _wait(a, lambda: maildir_files(inbox), 60, 'mail in the tree')
        agents = a.agents('user1')
        pids = agents['syncd'] + agents['fs']
        cache = a.cache_files('user1')
        assert cache and pids
        a.kill()
        _wait(a, lambda: not any(procs.alive(p) for p in pids), 20, 'the agents to die with acsd')
        # what the crash left: a dead mount (no acs-fs behind it), the memory cache, the
        # dbus-daemon (it forks away from acsd)
        assert a.mounted('user1'), 'the mount went away on its own'
        bus = [p for p in a._ours() if 'dbus-daemon' in procs.cmdline(p)]
        assert bus, 'no dbus-daemon left by the crashed acsd?'
        a.start()  # the same config and directories
        assert not a.mounted('user1'), 'the dead mount is still there'
        assert not any(os.path.exists(f) for f in cache), 'stale memory cache kept'
        _wait(a, lambda: not any(procs.alive(p) for p in bus), 10, 'the stale dbus-daemon to go')
        a.open('user1', 'pass1')
        _wait(a, lambda: maildir_files(inbox), 60, 'mail after the restart')
    finally:
        _teardown(a)


def test_open_while_stopping(seeded, harness_tmp):
    """An OPEN that arrives while the idle stop runs (state stopping) waits for the old
    instance to be gone and gets a fresh one."""
    require_fuse()
    a = Acsd(harness_tmp / 'acsd', dovecot=seeded, idle_timeout=1)
    try:
        caught = 0
        for _ in range(5):
            ok = a.open('user1', 'pass1')
            inbox = a.tree('user1') / 'INBOX'
            _wait(a, lambda: maildir_files(inbox), 60, 'mail in the tree')
            old = a.agents('user1')['syncd']
            with a.client() as c:
                c.resume(ok['token'])
                c.call('CLOSE')
                deadline = time.monotonic() + 10
                state = None
                while time.monotonic() < deadline:
                    try:
                        _, items = c.call('STATUS user1')
                        state = items[0]['state']
                    except AcsError as e:
                        state = e.code
                    if state in ('stopping', 'notfound'):
                        break
                if state != 'stopping':
                    continue  # missed the window; try again
                # two opens during the stop: the first starts the new instance, the other joins it
                other = {}
                t = threading.Thread(target=lambda: other.setdefault('r', _open(a, 'user1', 'pass1')))
                t.start()
                r = c.open('user1', 'pass1')
                t.join(60)
            caught += 1
            assert r['path'] == str(inbox.parent)
            assert not isinstance(other.get('r'), AcsError) and other['r']['path'] == r['path'], other
            _wait(a, lambda: maildir_files(inbox), 60, 'mail after the open during the stop')
            new = a.agents('user1')['syncd']
            assert len(new) == 1 and not set(new) & set(old), (old, new)
            assert _status(a, 'user1')['state'] == 'online'
            for tok in (r['token'], other['r']['token']):
                with a.client() as c:
                    c.resume(tok)
                    c.call('CLOSE')
            _wait(a, lambda: not a.mounted('user1'), 30, 'the idle stop')
            if caught >= 2:
                break
        assert caught, 'never saw the instance in state stopping (5 tries): the test did not test'
    finally:
        _teardown(a)


def test_bus_daemon_killed(seeded, harness_tmp):
    """kill -9 of acsd's dbus-daemon (and of acs-fs with it, so that agents restart while
    there is no bus): acsd starts a new dbus-daemon, restarted agents join it and
    acs-syncd gets its password again; the tree comes back."""
    require_fuse()
    a = Acsd(harness_tmp / 'acsd', dovecot=seeded)
    try:
        a.open('user1', 'pass1')
        inbox = a.tree('user1') / 'INBOX'
        files = _wait(a, lambda: maildir_files(inbox), 60, 'mail in the tree')
        for rnd in range(3):
            bus = [p for p in a._ours() if 'dbus-daemon' in procs.cmdline(p)]
            old = a.agents('user1')
            assert len(bus) == 1 and old['syncd'] and old['fs'], (bus, old)
            os.kill(bus[0], 9)
            try:
                os.kill(old['fs'][0], 9)
            except ProcessLookupError:
                pass  # acs-fs in agent mode may stop on its own once its bus is gone
            _wait(a, lambda: [p for p in a._ours() if 'dbus-daemon' in procs.cmdline(p) and p != bus[0]],
                  30, 'a new dbus-daemon')
            new = _wait(a, lambda: [p for p in a.agents('user1')['syncd'] if p not in old['syncd']], 90,
                        'acs-syncd restarted on the new bus')
            # it got the password over the new bus and logged in to IMAP with it
            _wait(a, lambda: f'acs-syncd (pid {new[0]}) logged in' in a.log_text(), 60,
                  'the new acs-syncd to log in')
            _wait(a, lambda: maildir_files(inbox) == files, 90, 'the tree back')
            assert a.running, 'acsd died\n' + a.log_tail()
            assert _status(a, 'user1')['state'] == 'online'
    finally:
        _teardown(a)
