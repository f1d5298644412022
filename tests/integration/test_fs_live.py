# SPDX-License-Identifier: MIT
"""acs-fs (issue 4), live: with acs-syncd running, server changes show in the mounted tree."""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from acstest import paths
from acstest.corpus import Corpus
from acstest.dovecot import Dovecot

from test_fs_support import Mount, crlf_to_lf, fill_cache, folder_files, folder_path, traversable_dir, wait_for

USER = 'user1'
APPEAR_WITHIN = 1.0  # seconds, issue 4
EXPUNGE_WITHIN = 5.0  # seconds; the issue gives no bound, this is generous for push sync


class Env:
    pass


@pytest.fixture
def live(request):
    """Dovecot + corpus, acs-syncd --once, then acs-syncd running (push) and acs-fs mounted."""
    e = Env()
    e.base = traversable_dir('acs-fs-live-')
    e.dovecot = Dovecot(e.base / 'dovecot')
    e.syncd = None
    e.mount = None
    try:
        Corpus(7007, 40).seed_maildir(e.dovecot, USER)
        e.db = e.base / 'cache.db'
        fill_cache(e.dovecot, USER, e.db)
        e.syncd_log = open(e.base / 'syncd.log', 'w+')
        e.syncd = subprocess.Popen(
            [paths.binary('acs-syncd'), '--db', str(e.db), '--url', e.dovecot.url(), '--user', USER,
             '--password-file', e.dovecot.password_file(USER), '--ca', e.dovecot.ca_file,
             '--log-level', 'debug'],
            stdout=e.syncd_log, stderr=subprocess.STDOUT)
        e.mount = Mount(e.db, e.base / 'mnt', extra=('--log-level', 'debug'))
        e.root = Path(e.mount.mountpoint)
        time.sleep(1.0)  # let acs-syncd reach its push loop (IDLE/NOTIFY)
        assert e.syncd.poll() is None, 'acs-syncd exited:\n' + log_of(e.syncd_log)
        yield e
    finally:
        if e.mount:
            e.mount.stop()
        if e.syncd and e.syncd.poll() is None:
            e.syncd.send_signal(signal.SIGTERM)
            try:
                e.syncd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                e.syncd.kill()
                e.syncd.wait()
        e.dovecot.stop()
        shutil.rmtree(e.base, ignore_errors=True)


def log_of(f):
    f.flush()
    f.seek(0)
    return f.read()[-4000:]


def find_file(fdir, needle):
    for name, (path, sub) in folder_files(fdir).items():
        try:
            if needle in path.read_bytes():
                return path
        except FileNotFoundError:
            pass
    return None


def test_append_appears_within_1s_and_expunge_removes_it(live):
    inbox = folder_path(live.root, 'INBOX')
    before = len(folder_files(inbox))
    mtime_before = os.stat(inbox / 'new').st_mtime_ns, os.stat(inbox / 'cur').st_mtime_ns

    nenv = {**os.environ, 'NOTMUCH_CONFIG': str(live.base / 'notmuch-config')}
    (live.base / 'nm').mkdir()
    (live.base / 'notmuch-config').write_text(f'[database]\npath={live.base / "nm"}\nmail_root={live.root}\n')
    subprocess.run(['notmuch', 'new'], env=nenv, check=True, capture_output=True, timeout=300)

    mid = f'live-{os.getpid()}-{time.time_ns()}@acs.test'
    body = (f'From: live@example.org\r\nTo: {USER}@example.org\r\nSubject: live append\r\n'
            f'Message-ID: <{mid}>\r\n\r\nappended while mounted\r\n').encode()
    c = live.dovecot.client(USER)
    try:
        typ, _ = c.append('INBOX', None, None, body)
        assert typ == 'OK'
        t0 = time.monotonic()
        took = wait_for(lambda: find_file(inbox, mid.encode()) is not None, 10, 0.01)
        assert took is not None, ('appended message never appeared in the tree\nsyncd:\n'
                                  + log_of(live.syncd_log) + '\nacs-fs:\n' + live.mount.log_text())
        print(f'append visible after {took:.3f} s')
        assert took <= APPEAR_WITHIN, f'appended message took {took:.3f} s to appear (> {APPEAR_WITHIN} s)'
        path = find_file(inbox, mid.encode())
        assert path.read_bytes() == crlf_to_lf(body)
        assert len(folder_files(inbox)) == before + 1
        assert (os.stat(inbox / 'new').st_mtime_ns, os.stat(inbox / 'cur').st_mtime_ns) != mtime_before

        p = subprocess.run(['notmuch', 'new'], env=nenv, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        n = subprocess.run(['notmuch', 'count', f'id:{mid}'], env=nenv, capture_output=True, text=True,
                           check=True).stdout.strip()
        assert n == '1', p.stdout + p.stderr

        # expunge on the server removes the file
        c.select('INBOX')
        typ, data = c.search(None, 'HEADER', 'Message-ID', mid)
        assert typ == 'OK' and data[0], data
        c.store(data[0].split()[0], '+FLAGS', '\\Deleted')
        c.expunge()
        t1 = time.monotonic()
        gone = wait_for(lambda: not path.exists() and find_file(inbox, mid.encode()) is None,
                        EXPUNGE_WITHIN, 0.01)
        assert gone is not None, 'expunged message still in the tree\n' + log_of(live.syncd_log)
        print(f'expunge visible after {time.monotonic() - t1:.3f} s')
        assert len(folder_files(inbox)) == before
        del t0
    finally:
        c.logout()


def test_server_flag_change_renames_the_file(live):
    inbox = folder_path(live.root, 'INBOX')
    c = live.dovecot.client(USER)
    try:
        c.select('INBOX')
        typ, data = c.search(None, 'UNFLAGGED')
        assert typ == 'OK' and data[0], 'corpus INBOX has no unflagged message'
        seq = data[0].split()[0]
        typ, data = c.fetch(seq, '(BODY.PEEK[])')
        body = crlf_to_lf(data[0][1])
        old = next(p for p, _ in folder_files(inbox).values() if p.read_bytes() == body)
        c.store(seq, '+FLAGS', '\\Flagged')

        def renamed():
            for p, _ in folder_files(inbox).values():
                if p.read_bytes() == body:
                    return 'F' in p.name.split(':2,')[1] and p != old
            return False
        took = wait_for(renamed, 5, 0.01)
        assert took is not None, 'flag change not visible\n' + log_of(live.syncd_log)
        assert not old.exists()
        print(f'flag change visible after {took:.3f} s')
    finally:
        c.logout()
