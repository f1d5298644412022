# SPDX-License-Identifier: MIT
"""acsctl against a scripted stand-in for acsd's socket: what it sends, how it reads the
password, its output (text and --json) and its sysexits exit statuses. The same commands
against the real acsd are in the other test_acsd_*.py files."""

import json
import os
import pty
import select
import socket
import subprocess
import threading
import time

import pytest

from acstest import paths

TOKEN = 'ab' * 32


class FakeAcsd:
    """A Unix socket server answering each received line from a script: script is a list of
    (expected command prefix, reply lines). Records every line it received."""

    def __init__(self, path, script, hang=False, close_after=None):
        self.path = str(path)
        self.script = list(script)
        self.hang = hang
        self.received = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            buf = b''
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while b'\n' in buf:
                    line, buf = buf.split(b'\n', 1)
                    self.received.append(line)
                    if self.hang:
                        continue
                    if not self.script:
                        return
                    prefix, replies = self.script.pop(0)
                    if not line.startswith(prefix):
                        conn.sendall(b'ERR unknown unexpected command in the fake\n')
                        return
                    for r in replies:
                        if r is None:  # close the connection here
                            return
                        conn.sendall(r + b'\n')
                        time.sleep(0.01)

    def close(self):
        self.sock.close()


HELLO = (b'HELLO 1 1', [b'OK HELLO version=1'])


def acsctl(sock, *args, input=b'', timeout=30):
    return subprocess.run([paths.binary('acsctl'), '-s', str(sock), *args], input=input,
                          capture_output=True, timeout=timeout)


@pytest.fixture
def sockpath(harness_tmp):
    return harness_tmp / 'acsd.sock'


def test_open_password_from_stdin(sockpath):
    fake = FakeAcsd(sockpath, [HELLO, (b'OPEN ', [
        f'OK OPEN token={TOKEN} user=user1 path=/run/acs/user1'.encode()])])
    r = acsctl(sockpath, 'open', 'user1', input=b'p\xc3\xa4ss word+%\n')
    fake.close()
    assert r.returncode == 0, r.stderr
    # Sent percent-encoded (a raw '+' would be rejected); only the first line of stdin.
    assert fake.received == [b'HELLO 1 1', b'OPEN user1 p%C3%A4ss%20word%2B%25']
    out = r.stdout.decode()
    assert f'token={TOKEN}' in out and 'path=/run/acs/user1' in out and 'user=user1' in out


def test_open_json(sockpath):
    fake = FakeAcsd(sockpath, [HELLO, (b'OPEN ', [
        f'OK OPEN token={TOKEN} user=us%22er path=/run/acs/us%22er'.encode()])])
    r = acsctl(sockpath, '--json', 'open', 'us"er', input=b'secret')
    fake.close()
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc == {'ok': True, 'command': 'OPEN', 'token': TOKEN, 'user': 'us"er',
                   'path': '/run/acs/us"er'}


def test_open_password_from_terminal_not_echoed(sockpath):
    fake = FakeAcsd(sockpath, [HELLO, (b'OPEN ', [
        f'OK OPEN token={TOKEN} user=user1 path=/run/acs/user1'.encode()])])
    pid, master = pty.fork()
    if pid == 0:
        os.execv(paths.binary('acsctl'), ['acsctl', '-s', str(sockpath), 'open', 'user1'])
    seen = b''
    try:
        deadline = time.monotonic() + 20
        while b'Password for user1:' not in seen and time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                seen += os.read(master, 4096)
        assert b'Password for user1:' in seen, seen
        os.write(master, b'tty-secret-42\n')
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(master)
        fake.close()
    assert os.waitstatus_to_exitcode(status) == 0, seen
    assert b'tty-secret-42' not in seen, 'the password was echoed to the terminal'
    assert fake.received[1] == b'OPEN user1 tty-secret-42'
    assert f'token={TOKEN}'.encode() in seen


@pytest.mark.parametrize('code,status', [
    ('auth', 77), ('denied', 77), ('token', 77), ('limit', 75), ('unavailable', 69),
    ('notfound', 67), ('internal', 70), ('state', 76), ('syntax', 76),
])
def test_err_exit_statuses(sockpath, code, status):
    fake = FakeAcsd(sockpath, [HELLO, (b'OPEN ', [f'ERR {code} some reason'.encode()])])
    r = acsctl(sockpath, 'open', 'user1', input=b'pw\n')
    fake.close()
    assert r.returncode == status, r.stderr
    assert f'{code}: some reason'.encode() in r.stderr
    assert r.stdout == b''


def test_err_json(sockpath):
    fake = FakeAcsd(sockpath, [HELLO, (b'OPEN ', [b'ERR auth user or password wrong'])])
    r = acsctl(sockpath, '--json', 'open', 'user1', input=b'pw\n')
    fake.close()
    assert r.returncode == 77
    assert json.loads(r.stdout) == {'ok': False, 'command': 'OPEN', 'error': 'auth',
                                    'text': 'user or password wrong'}


def test_no_password(sockpath):
    fake = FakeAcsd(sockpath, [HELLO])
    r = acsctl(sockpath, 'open', 'user1', input=b'')
    fake.close()
    assert r.returncode == 65 and b'no password' in r.stderr
    assert not any(x.startswith(b'OPEN') for x in fake.received)


def test_status_and_who(sockpath):
    fake = FakeAcsd(sockpath, [HELLO, (b'STATUS', [
        b'DATA STATUS user=user1 state=online sessions=2',
        b'DATA STATUS user=user2 state=offline sessions=0', b'OK STATUS count=2'])])
    r = acsctl(sockpath, 'status')
    fake.close()
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines() == [
        'user=user1 state=online sessions=2', 'user=user2 state=offline sessions=0']

    os.unlink(sockpath)
    fake = FakeAcsd(sockpath, [HELLO, (b'WHO', [
        b'DATA WHO user=user1 uid=33 since=1700000000 sessions=1', b'OK WHO count=1'])])
    r = acsctl(sockpath, '--json', 'who')
    fake.close()
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {'ok': True, 'command': 'WHO', 'count': '1', 'items': [
        {'user': 'user1', 'uid': '33', 'since': '1700000000', 'sessions': '1'}]}
    assert fake.received == [b'HELLO 1 1', b'WHO']


def test_status_one_user_notfound(sockpath):
    fake = FakeAcsd(sockpath, [HELLO, (b'STATUS nobody%20here', [b'ERR notfound no such user'])])
    r = acsctl(sockpath, 'status', 'nobody here')
    fake.close()
    assert r.returncode == 67, r.stderr


def test_sync_progress(sockpath):
    fake = FakeAcsd(sockpath, [HELLO, (b'SYNC user1 Archive/2024', [
        b'DATA SYNC mailbox=Archive%2F2024 done=0 total=3',
        b'DATA SYNC mailbox=Archive%2F2024 done=3 total=3', b'OK SYNC'])])
    r = acsctl(sockpath, 'sync', 'user1', 'Archive/2024')
    fake.close()
    assert r.returncode == 0, r.stderr
    err = r.stderr.decode()
    assert 'sync: Archive/2024 0/3' in err and 'sync: Archive/2024 3/3' in err, err
    assert fake.received[1] == b'SYNC user1 Archive/2024'


def test_resume_close_token_from_stdin(sockpath):
    fake = FakeAcsd(sockpath, [HELLO, (f'RESUME {TOKEN}'.encode(), [
        b'OK RESUME user=user1 path=/run/acs/user1']), (b'CLOSE', [b'OK CLOSE'])])
    r = acsctl(sockpath, 'close', '-', input=TOKEN.encode() + b'\n')
    fake.close()
    assert r.returncode == 0, r.stderr
    assert fake.received == [b'HELLO 1 1', f'RESUME {TOKEN}'.encode(), b'CLOSE']


def test_resume_expired(sockpath):
    fake = FakeAcsd(sockpath, [HELLO, (b'RESUME', [b'ERR token unknown or expired'])])
    r = acsctl(sockpath, 'resume', TOKEN)
    fake.close()
    assert r.returncode == 77


@pytest.mark.parametrize('reply', [b'OK OPEN token=zz', b'garbage', b'OK CLOSE', None])
def test_bad_replies_are_protocol_errors(sockpath, reply):
    fake = FakeAcsd(sockpath, [HELLO, (b'OPEN', [reply])])
    r = acsctl(sockpath, 'open', 'user1', input=b'pw\n')
    fake.close()
    assert r.returncode == 76, (r.returncode, r.stderr)


def test_timeout(sockpath):
    fake = FakeAcsd(sockpath, [], hang=True)
    t = time.monotonic()
    r = acsctl(sockpath, '-t', '1', 'status')
    fake.close()
    assert r.returncode == 75, r.stderr
    assert time.monotonic() - t < 10


def test_usage_and_unavailable(harness_tmp):
    missing = harness_tmp / 'none.sock'
    assert acsctl(missing, 'status').returncode == 69
    assert acsctl(missing).returncode == 64
    assert acsctl(missing, 'frobnicate').returncode == 64
    assert acsctl(missing, 'open').returncode == 64
    assert acsctl(missing, 'open', 'a', 'b').returncode == 64
    fake = FakeAcsd(harness_tmp / 's', [HELLO])
    r = acsctl(harness_tmp / 's', 'resume', 'not-a-token')
    fake.close()
    assert r.returncode == 64


def test_watch_events_until_closed(sockpath):
    fake = FakeAcsd(sockpath, [HELLO, (f'RESUME {TOKEN}'.encode(), [
        b'OK RESUME user=user1 path=/run/acs/user1']), (b'WATCH', [
            b'OK WATCH', b'EVENT change mailbox=INBOX',
            b'EVENT sync mailbox=Archive%2F2024 done=1 total=2', b'EVENT closed'])])
    r = acsctl(sockpath, 'watch', TOKEN)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines() == [
        'change mailbox=INBOX', 'sync mailbox=Archive/2024 done=1 total=2', 'closed']
    fake.close()
    os.unlink(sockpath)
    fake = FakeAcsd(sockpath, [HELLO, (b'RESUME', [b'OK RESUME user=u path=/p']), (b'WATCH', [
        b'OK WATCH', b'EVENT state state=offline', b'EVENT closed'])])
    r = acsctl(sockpath, '--json', 'watch', input=TOKEN.encode() + b'\n')
    fake.close()
    assert r.returncode == 0, r.stderr
    assert [json.loads(x) for x in r.stdout.splitlines()] == [
        {'event': 'state', 'state': 'offline'}, {'event': 'closed'}]


def test_no_leaks_or_memory_errors(sockpath):
    """open, status and an error path under valgrind (plain build; in the ASan build the
    same runs are checked by ASan/LSan itself)."""
    wrap = [] if paths.sanitized_build() else [
        'valgrind', '--leak-check=full', '--errors-for-leak-kinds=definite,indirect',
        '--error-exitcode=99', '-q']
    runs = [
        ([HELLO, (b'OPEN ', [f'OK OPEN token={TOKEN} user=u path=/p'.encode()])],
         ['--json', 'open', 'u'], b'pw\n', 0),
        ([HELLO, (b'STATUS', [b'DATA STATUS user=a state=online', b'OK STATUS count=1'])],
         ['status'], b'', 0),
        ([HELLO, (b'SYNC', [b'DATA SYNC mailbox= done=1 total=2', b'ERR unavailable down'])],
         ['sync', 'u'], b'', 69),
    ]
    for script, args, stdin, want in runs:
        if os.path.exists(sockpath):
            os.unlink(sockpath)
        fake = FakeAcsd(sockpath, script)
        r = subprocess.run(wrap + [paths.binary('acsctl'), '-s', str(sockpath), *args],
                           input=stdin, capture_output=True, timeout=120)
        fake.close()
        assert r.returncode == want, (args, r.returncode, r.stderr.decode(errors='replace'))
