# SPDX-License-Identifier: MIT
"""Helpers for the acs-fs tests (no tests here): filling a cache, mounting, reading the tree."""

import os
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from acstest import fusecheck, paths

MOUNT_TIMEOUT = 30.0

# Maildir flag letters <-> IMAP system flags (CLIENTS.md, mbsync's mapping)
LETTER_FLAGS = {'D': '\\Draft', 'F': '\\Flagged', 'P': '$Forwarded', 'R': '\\Answered',
                'S': '\\Seen', 'T': '\\Deleted'}
FLAG_LETTERS = {v.lower(): k for k, v in LETTER_FLAGS.items()}


def traversable_dir(prefix):
    """A fresh directory under /tmp that the nobody user can traverse (for Dovecot and allow_other)."""
    d = tempfile.mkdtemp(prefix=prefix, dir='/tmp')
    os.chmod(d, 0o755)
    return Path(d)


def fill_cache(dovecot, user, db):
    """Fills the cache db for user: `acs-syncd --once` against dovecot (what the issue's tests use).

    ACS_FS_FILL=import uses acs-import on the server's Maildir instead; that is for
    development only and is reported in the test output, never silently.
    """
    if os.environ.get('ACS_FS_FILL') == 'import':
        print('NOTE: cache filled by acs-import (ACS_FS_FILL=import), not acs-syncd')
        cmd = [paths.binary('acs-import'), '--db', str(db), dovecot.maildir(user)]
    else:
        cmd = [paths.binary('acs-syncd'), '--db', str(db), '--url', dovecot.url(), '--user', user,
               '--password-file', dovecot.password_file(user), '--ca', dovecot.ca_file, '--once']
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f'{cmd[0]} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}'


class Mount:
    """acs-fs running in the foreground on mountpoint; stop() always unmounts."""

    def __init__(self, db, mountpoint, layout='fs', options='allow_other', extra=()):
        fusecheck.require_fuse()
        self.db = str(db)
        self.mountpoint = str(mountpoint)
        os.makedirs(self.mountpoint, exist_ok=True)
        cmd = [paths.binary('acs-fs'), '--db', self.db, '--layout', layout, '-f', *extra]
        if os.environ.get('ACS_FS_VALGRIND'):
            # ACS_FS_VALGRIND=1: run acs-fs under valgrind; stop_clean() fails on errors or leaks
            cmd = ['valgrind', '--leak-check=full', '--show-leak-kinds=definite,indirect',
                   '--errors-for-leak-kinds=definite,indirect', '--error-exitcode=9', '-q', *cmd]
        if options:
            cmd += ['-o', options]
        cmd.append(self.mountpoint)
        self.log = open(Path(self.mountpoint).parent / (Path(self.mountpoint).name + '.acs-fs.log'), 'w+')
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not os.path.ismount(self.mountpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f'acs-fs did not mount {self.mountpoint}:\n{self.log_text()}')
            time.sleep(0.02)

    @property
    def pid(self):
        return self.proc.pid

    def log_text(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        """Unmounts with fusermount3 -u and waits for acs-fs to exit; returns its exit status."""
        if self.proc.poll() is None:
            fusecheck.unmount(self.mountpoint)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        fusecheck.unmount(self.mountpoint)
        return self.proc.returncode

    def stop_clean(self):
        """stop(), then fail unless acs-fs exited 0 without sanitizer or valgrind complaints."""
        rc = self.stop()
        text = self.log_text()
        bad = [w for w in ('Sanitizer', 'runtime error:', 'LeakSanitizer', 'definitely lost') if w in text]
        assert rc == 0 and not bad, f'acs-fs exited {rc}, log:\n{text[-4000:]}'

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.stop_clean()
        else:
            self.stop()


def escape_component(comp, layout):
    """Python mirror of the documented escape of one path component (docs/names.md)."""
    out = []
    for i, ch in enumerate(comp):
        if ch in '%/' or (i == 0 and ch == '.') or (layout == 'maildir++' and ch == '.'):
            out.append('%%%02X' % ord(ch))
        else:
            out.append(ch)
    s = ''.join(out)
    if layout == 'fs' and comp in ('cur', 'new', 'tmp'):
        s = '%%%02X' % ord(comp[0]) + comp[1:]
    return s


def folder_path(root, folder, layout='fs'):
    """The directory of a folder (UTF-8, '/'-separated levels) in a mounted tree."""
    comps = folder.split('/')
    if layout == 'fs':
        return Path(root, *[escape_component(c, layout) for c in comps])
    if folder == 'INBOX':
        return Path(root)
    return Path(root, '.' + '.'.join(escape_component(c, layout) for c in comps))


def parse_name(name):
    """(uniq, S, W, letters) of a Maildir file name as acs-fs builds it."""
    base, info = name.split(':2,', 1)
    parts = base.split(',')
    fields = dict(p.split('=', 1) for p in parts[1:])
    return parts[0], int(fields['S']), int(fields['W']), info


def folder_files(fdir):
    """{file name: (path, 'cur'|'new')} of cur/ and new/ of a folder directory."""
    files = {}
    for sub in ('cur', 'new'):
        with os.scandir(fdir / sub) as it:
            for e in it:
                assert e.is_file(follow_symlinks=False), f'{e.path}: not a regular file (d_type)'
                files[e.name] = (Path(e.path), sub)
    return files


def system_letters(flags):
    """Maildir letters of an IMAP flag set (system flags and $Forwarded only)."""
    return ''.join(sorted(FLAG_LETTERS[f.lower()] for f in flags if f.lower() in FLAG_LETTERS))


def keywords_of(flags):
    return {f for f in flags if not f.startswith('\\') and f.lower() != '$forwarded'}


def crlf_to_lf(b):
    return b.replace(b'\r\n', b'\n')


def crlf_size(lf):
    """W=: the size once every LF not preceded by CR becomes CRLF."""
    return len(lf) + lf.count(b'\n') - lf.count(b'\r\n')


def wait_for(pred, timeout, interval=0.02):
    """Polls pred until true; returns the seconds it took or None on timeout."""
    start = time.monotonic()
    while True:
        if pred():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            return None
        time.sleep(interval)


def is_dir_mode(p):
    return stat.S_ISDIR(os.lstat(p).st_mode)
