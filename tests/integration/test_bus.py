# SPDX-License-Identifier: MIT
"""acs-syncd as acsd's agent on a real private bus (lib/bus.c, lib/agent.c, syncd --bus):
the password comes boxed over the bus at each login (also after a reconnect) and never
appears in a capture of everything on the bus (dbus-monitor as root, i.e. BecomeMonitor),
nor in the agent's command line or environment; a wrong password gives LOGIN_RESULT
"rejected" and exit 77; STOP makes the agent exit 0. tests/tools/acs-bus-driver plays
acsd's part (acsd itself is tested in test_acsd_*.py)."""

import json
import os
import pwd
import queue
import secrets
import shutil
import signal
import subprocess
import threading
import time

import pytest

from acstest.corpus import Corpus
from acstest.dovecot import Dovecot
from acstest.paths import BUILD_DIR

pytestmark = pytest.mark.timeout(180)

NOBODY = pwd.getpwnam('nobody')
CRED_HEADER = b'ACSW\x01\x02\x00\x03'   # version 1, kind boxed, purpose CRED
REQ_HEADER = b'ACSW\x01\x01\x00\x02'    # version 1, kind signed, purpose CRED_REQUEST


def _bin(name):
    for p in (BUILD_DIR / 'lib' / name, BUILD_DIR / 'syncd' / name, BUILD_DIR / 'fs' / name):
        if p.exists():
            return str(p)
    raise FileNotFoundError(f'{name} not built in {BUILD_DIR}')


class Driver:
    """acs-bus-driver running one acs-syncd as nobody; events() as parsed JSON lines."""

    def __init__(self, dir, password, agent_args, daemon_user=None, hold_cred=False, as_nobody=True):
        self.dir = dir
        rfd, wfd = os.pipe()
        os.write(wfd, password.encode() + b'\n')
        os.close(wfd)
        self.proc = subprocess.Popen(
            [_bin('acs-bus-driver'), '--dir', str(dir / 'bus'), '--password-fd', str(rfd),
             *(['--agent-uid', str(NOBODY.pw_uid), '--agent-gid', str(NOBODY.pw_gid)] if as_nobody else []),
             *(['--daemon-user', daemon_user] if daemon_user else []),
             *(['--hold-cred'] if hold_cred else []), '--', *agent_args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(dir / 'driver.log', 'wb'),
            pass_fds=(rfd,), start_new_session=True)
        os.close(rfd)
        self.q = queue.Queue()
        self.events = []
        threading.Thread(target=self._read, daemon=True).start()
        bus = self.wait('bus', 15)
        self.address = bus['address']
        self.daemon_pid = bus['daemon_pid']

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.q.put(json.loads(line))
            except ValueError:
                self.q.put({'event': 'garbage', 'line': line.decode(errors='replace')})
        self.q.put(None)

    def wait(self, event, timeout=60, pred=lambda e: True):
        for e in self.events:
            if e['event'] == event and pred(e) and not e.get('_taken'):
                e['_taken'] = True
                return e
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                e = self.q.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                break
            if e is None:
                break
            self.events.append(e)
            if e['event'] == event and pred(e):
                e['_taken'] = True
                return e
        raise AssertionError(f'no {event!r} event within {timeout} s; events: {self.events}; driver log: '
                             f'{(self.dir / "driver.log").read_text(errors="replace")[-3000:]}')

    def say(self, line):
        self.proc.stdin.write(line.encode() + b'\n')
        self.proc.stdin.flush()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self.daemon_pid:
            try:
                os.kill(self.daemon_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


class Monitor:
    """dbus-monitor --pcap on the whole bus (root: BecomeMonitor)."""

    def __init__(self, address, path):
        self.path = path
        self.f = open(path, 'wb')
        self.proc = subprocess.Popen(['dbus-monitor', '--address', address, '--pcap'],
                                     stdout=self.f, stderr=subprocess.PIPE)
        # attached once it has written the pcap header and its own NameAcquired/monitor setup
        end = time.monotonic() + 10
        while time.monotonic() < end and os.path.getsize(path) < 24:
            time.sleep(0.02)
        time.sleep(0.3)
        assert self.proc.poll() is None, self.proc.stderr.read().decode(errors='replace')

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.f.close()
        return open(self.path, 'rb').read()


def _setup(harness_tmp, password, nmsg=30):
    dv = Dovecot(harness_tmp / 'dovecot', users={'buser': password})
    Corpus(seed=11, count=nmsg).seed_maildir(dv, 'buser')
    work = harness_tmp / 'agent'
    work.mkdir()
    os.chown(work, NOBODY.pw_uid, NOBODY.pw_gid)
    os.chmod(work, 0o700)
    ca = harness_tmp / 'ca.pem'
    shutil.copy(dv.ca_file, ca)
    os.chmod(ca, 0o644)
    (harness_tmp / 'bus').mkdir(mode=0o755)
    args = [_bin('acs-syncd'), '--db', str(work / 'cache.db'), '--url', dv.url(), '--user', 'buser',
            '--ca', str(ca), '--log-level', 'info', '--timeout', '10']
    return dv, args


def _agent_pid(d):
    return d.wait('hello', 30)['pid']


def test_login_over_bus_password_never_on_the_bus(harness_tmp):
    password = 'Bus-' + secrets.token_hex(12) + '-s3cret'
    dv, args = _setup(harness_tmp, password)
    d = None
    mon = None
    try:
        # the daemon runs as messagebus (not root); root can still monitor it
        d = Driver(harness_tmp, password, args, daemon_user='messagebus')
        assert os.stat(f'/proc/{d.daemon_pid}').st_uid == pwd.getpwnam('messagebus').pw_uid
        mon = Monitor(d.address, harness_tmp / 'bus.pcap')
        d.say('start')
        pid = _agent_pid(d)
        # the agent's command line and environment hold no password
        for f in ('cmdline', 'environ'):
            data = open(f'/proc/{pid}/{f}', 'rb').read()
            assert password.encode() not in data, f
            assert b'--bus' in data or f == 'environ'
        # it is not dumpable (the password passes through its memory)
        status = open(f'/proc/{pid}/status').read()
        assert os.stat(f'/proc/{pid}/mem').st_uid == 0, 'agent is dumpable (its /proc files are not root-owned)'
        assert f'Uid:\t{NOBODY.pw_uid}' in status
        d.wait('cred_request', 30)
        d.wait('cred_sent', 10)
        r = d.wait('login_result', 30)
        assert (r['result'], r['status']) == (0, 0), r
        d.wait('status', 60, lambda e: e['state'] == 3)  # ONLINE: synced
        # reconnect: Dovecot restarts, the agent asks again (the password was wiped)
        dv.restart()
        d.wait('cred_request', 60)
        r = d.wait('login_result', 60, lambda e: e['result'] == 0)
        d.wait('status', 60, lambda e: e['state'] == 3)
        # SYNC_NOW is accepted (logged by the agent), STOP ends it cleanly
        d.say('sync INBOX')
        d.say('stop')
        e = d.wait('exit', 30)
        assert e['status'] == 0, e
        creds = [e for e in d.events if e['event'] == 'cred_sent']
        assert len(creds) == 2, d.events
        assert not [e for e in d.events if e['event'] == 'rejected'], d.events
        cap = mon.stop()
        mon = None
        # control: the capture saw the exchange (both CRED_REQUESTs and both boxed CREDs) ...
        assert cap.count(REQ_HEADER) == 2, 'the capture missed the password requests'
        assert cap.count(CRED_HEADER) == 2, 'the capture missed the CRED messages'
        # ... and no password, in any common encoding
        for form in (password.encode(), password.encode().hex().encode(), password.encode('utf-16-le'),
                     password[4:20].encode()):
            assert form not in cap, f'password ({form[:8]!r}...) on the bus'
        log = (harness_tmp / 'driver.log').read_bytes()
        assert password.encode() not in log
        # the cache got the mail (the login really worked)
        import sqlite3
        db = sqlite3.connect(f'file:{harness_tmp / "agent" / "cache.db"}?mode=ro', uri=True)
        n = db.execute('select count(*) from message').fetchone()[0]
        db.close()
        assert n == 30
    finally:
        if mon:
            mon.stop()
        if d:
            d.close()
        dv.close()


def test_wrong_password_rejected_exit_77(harness_tmp):
    dv, args = _setup(harness_tmp, 'Right-' + secrets.token_hex(8), nmsg=1)
    d = None
    try:
        d = Driver(harness_tmp, 'wrong-password', args)
        d.say('start')
        _agent_pid(d)
        d.wait('cred_request', 30)
        r = d.wait('login_result', 30)
        assert (r['result'], r['status']) == (1, 77), r  # REJECTED, EX_NOPERM
        e = d.wait('exit', 30)
        assert e['status'] == 77, e
    finally:
        if d:
            d.close()
        dv.close()


def test_stop_while_waiting_and_bad_handover(harness_tmp):
    """An agent whose key handover is garbage exits 64 without touching the bus; an agent
    stopped before its login exits 0."""
    dv, args = _setup(harness_tmp, 'pw-' + secrets.token_hex(8), nmsg=1)
    try:
        r = subprocess.run([*args, '--bus', 'unix:path=/nonexistent', '--key-fd', '0'],
                           input=b'x' * 172, capture_output=True, timeout=30)
        assert r.returncode == 64, r.stderr  # --key-fd must be >= 3: usage
        rfd, wfd = os.pipe()
        os.write(wfd, b'ACSK' + b'\0' * 168)
        os.close(wfd)
        r = subprocess.run([*args, '--bus', 'unix:path=/nonexistent', '--key-fd', str(rfd)],
                           capture_output=True, timeout=30, pass_fds=(rfd,))
        os.close(rfd)
        assert r.returncode == 64, r.stderr
        assert b'bad key handover' in r.stderr
    finally:
        dv.close()


def test_stop_while_waiting_for_the_password(harness_tmp):
    """acsd has not answered the CRED_REQUEST yet (e.g. the session was closed meanwhile):
    STOP still ends the agent at once, cleanly, without a login."""
    dv, args = _setup(harness_tmp, 'pw-' + secrets.token_hex(8), nmsg=1)
    d = None
    try:
        d = Driver(harness_tmp, 'unused', args, hold_cred=True)
        d.say('start')
        _agent_pid(d)
        d.wait('cred_request', 30)
        time.sleep(0.3)
        t = time.monotonic()
        d.say('stop')
        e = d.wait('exit', 20)
        assert e['status'] == 0, e
        assert time.monotonic() - t < 5
        assert not [e for e in d.events if e['event'] in ('cred_sent', 'login_result')], d.events
    finally:
        if d:
            d.close()
        dv.close()


def test_fs_agent_hello_status_and_stop(harness_tmp):
    """acs-fs --bus: AGENT_HELLO (kind fs) and STATUS online once mounted; STOP unmounts it
    and it exits 0."""
    dv, args = _setup(harness_tmp, 'pw-' + secrets.token_hex(8), nmsg=2)
    d = None
    mnt = harness_tmp / 'mnt'
    mnt.mkdir()
    try:
        db = harness_tmp / 'agent' / 'cache.db'
        # a cache to serve: one acs-syncd --once over the bus first
        d = Driver(harness_tmp, dv.users['buser'], [*args, '--once'])
        d.say('start')
        assert d.wait('exit', 60)['status'] == 0
        d.close()
        d = Driver(harness_tmp, 'unused', [_bin('acs-fs'), '--db', str(db), '-f', str(mnt)],
                   as_nobody=False)  # root: the test reads the tree (no allow_other)
        d.say('start')
        h = d.wait('hello', 30)
        assert h['kind'] == 2
        d.wait('status', 30, lambda e: e['state'] == 3)
        assert any(line.split()[1] == str(mnt) for line in open('/proc/mounts'))
        assert os.listdir(mnt / 'INBOX' / 'cur') or os.listdir(mnt / 'INBOX' / 'new')
        d.say('stop')
        assert d.wait('exit', 30)['status'] == 0
        assert not any(line.split()[1] == str(mnt) for line in open('/proc/mounts'))
    finally:
        if d:
            d.close()
        subprocess.run(['umount', '-l', str(mnt)], capture_output=True)
        dv.close()


def test_sync_now_runs_a_round(harness_tmp):
    """SYNC_NOW: the agent reports a round starting (PROGRESS syncing) and ending
    (PROGRESS synced), and mail delivered meanwhile is in the cache by then."""
    dv, args = _setup(harness_tmp, 'pw-' + secrets.token_hex(8), nmsg=3)
    d = None
    try:
        d = Driver(harness_tmp, dv.users['buser'], args)
        d.say('start')
        d.wait('login_result', 30)
        d.wait('progress', 60, lambda e: e['what'] == 2)
        t = time.monotonic()
        d.say('sync')
        d.wait('progress', 10, lambda e: e['what'] == 1)
        d.wait('progress', 10, lambda e: e['what'] == 2)
        assert time.monotonic() - t < 5
        d.say('stop')
        assert d.wait('exit', 20)['status'] == 0
    finally:
        if d:
            d.close()
        dv.close()
