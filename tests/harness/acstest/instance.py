# SPDX-License-Identifier: MIT
"""One user's running acs (acs-syncd in daemon mode + acs-fs mounted) for write-path tests."""

import imaplib
import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from . import fusecheck, imapcheck, paths, procs

# Maildir info letters <-> IMAP flags (docs/names.md; the cache's enum acs_flag bits)
LETTER_FLAGS = {'D': '\\Draft', 'F': '\\Flagged', 'P': '$Forwarded', 'R': '\\Answered',
                'S': '\\Seen', 'T': '\\Deleted'}
FLAG_LETTERS = {v.lower(): k for k, v in LETTER_FLAGS.items()}
FLAG_BITS = {'\\Draft': 1, '\\Flagged': 2, '$Forwarded': 4, '\\Answered': 8, '\\Seen': 16,
             '\\Deleted': 32}
MBOX_NOSELECT = 1
MOUNT_TIMEOUT = 30.0
SYNCED_TIMEOUT = 120.0

_BARE_LF = re.compile(rb'(?<!\r)\n')
_ESC = re.compile(r'%([0-9A-Fa-f]{2})')


def to_crlf(data):
    """The body as IMAP serves it: every LF not preceded by CR becomes CRLF."""
    return _BARE_LF.sub(b'\r\n', data)


def letters(flags):
    """Maildir letters (ASCII order) of the system flags and $Forwarded in an IMAP flag set."""
    return ''.join(sorted(FLAG_LETTERS[f.lower()] for f in flags if f.lower() in FLAG_LETTERS))


def _unescape(comp):
    return _ESC.sub(lambda m: chr(int(m.group(1), 16)), comp)


def split_name(name):
    """(uniq, info letters or None) of a Maildir file name."""
    base, sep, info = name.partition(':2,')
    uniq = re.split('[,:]', base, maxsplit=1)[0]
    return uniq, (info if sep else None)


def diff_states(a, b, limit=30, names=('server', 'tree'), uids=True):
    """Readable differences between two states shaped like imapcheck.server_state() (folder ->
    [(uid, flags, internaldate, body)]); empty when equal. Bodies are compared when both
    sides have them; uids only with uids=True (otherwise messages pair up in order of
    (internaldate, body) and are compared by flags/date/body)."""
    out = []
    for f in sorted(set(a) ^ set(b)):
        out.append(f'folder {f!r} only on {names[0] if f in a else names[1]}')
    for f in sorted(set(a) & set(b)):
        ma, mb = list(a[f]), list(b[f])
        if len(ma) != len(mb):
            out.append(f'{f!r}: {len(ma)} messages on {names[0]}, {len(mb)} on {names[1]}')
        if not uids:
            key = lambda m: (m[2], m[3] or b'', sorted(m[1]))  # noqa: E731
            ma.sort(key=key)
            mb.sort(key=key)
        for x, y in zip(ma, mb):
            what = []
            if uids and x[0] != y[0]:
                what.append(f'uid {x[0]} vs {y[0]}')
            if x[1] != y[1]:
                what.append(f'flags {sorted(x[1])} vs {sorted(y[1])}')
            if x[2] != y[2]:
                what.append(f'internaldate {x[2]} vs {y[2]}')
            if x[3] is not None and y[3] is not None and x[3] != y[3]:
                what.append(f'body differs ({len(x[3])} vs {len(y[3])} bytes)')
            if what:
                out.append(f'{f!r} uid {x[0]}/{y[0]}: ' + ', '.join(what))
            if len(out) >= limit:
                return out
    return out[:limit]


class Instance:
    """acs-syncd (daemon mode, --progress=json, log in syncd_log) and acs-fs mounted at `tree`
    for one user of a harness Dovecot; the cache is `dir/cache.db`.

    start() on a missing cache waits for acs-syncd's first "synced" event (the initial
    sync) before mounting. Everything started is stopped by stop(), __exit__ and at exit.
    """

    def __init__(self, dovecot, user, dir, layout='fs', start=True, fs_options='allow_other',
                 syncd_args=(), fs_args=(), log_level='info'):
        self.dovecot = dovecot
        self.user = user
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.layout = layout
        self.fs_options = fs_options
        self.syncd_args = tuple(syncd_args)
        self.fs_args = tuple(fs_args)
        self.log_level = log_level
        self.db = self.dir / 'cache.db'
        self.tree = self.dir / 'tree'
        self.syncd_log = self.dir / 'syncd.log'
        self.fs_log = self.dir / 'fs.log'
        self.syncd = None
        self.fs = None
        self.syncd_status = None  # exit status of the last acs-syncd stopped/killed
        self.fs_status = None
        self._syncd_log_start = 0
        self._client = None
        if start:
            self.start()

    # ---- processes ----

    def start(self):
        """Starts acs-syncd and mounts acs-fs (waiting for the initial sync on a new cache)."""
        procs.register(self)
        fresh = not self.db.exists()
        self.start_syncd(wait_synced=fresh)
        self.start_fs()
        return self

    def stop(self, check=False):
        """Unmounts acs-fs and stops acs-syncd (SIGTERM). With check=True, raises unless both
        exited 0 with no sanitizer complaint in their logs."""
        try:
            self.stop_fs()
        finally:
            self.stop_syncd()
            if self._client is not None:
                try:
                    self._client.logout()
                except Exception:  # noqa: BLE001 - the server may be gone
                    pass
                self._client = None
            procs.unregister(self)
        if check:
            self.check_clean()

    close = stop

    def check_clean(self):
        bad = []
        for name, status, log in (('acs-fs', self.fs_status, self.fs_log),
                                  ('acs-syncd', self.syncd_status, self.syncd_log)):
            text = log.read_text(errors='replace') if log.exists() else ''
            words = [w for w in ('Sanitizer', 'runtime error:', 'definitely lost') if w in text]
            if status not in (0, None) or words:
                bad.append(f'{name} exited {status} {words}; log tail:\n{text[-3000:]}')
        if bad:
            raise AssertionError('\n'.join(bad))

    def _syncd_cmd(self):
        d = self.dovecot
        return [paths.binary('acs-syncd'), '--db', str(self.db), '--url', d.url(), '--user', self.user,
                '--password-file', d.password_file(self.user), '--ca', d.ca_file,
                '--progress=json', '--log-level', self.log_level, *self.syncd_args]

    def start_syncd(self, wait_synced=None):
        """Starts acs-syncd in daemon mode (log appended to syncd_log). wait_synced (default:
        when Dovecot runs and the cache is new) waits for its first "synced" event."""
        if self.syncd is not None and self.syncd.poll() is None:
            raise RuntimeError('acs-syncd already running')
        with open(self.syncd_log, 'ab') as log:
            log.write(f'==== acs-syncd started {time.strftime("%H:%M:%S")}\n'.encode())
            log.flush()
            self._syncd_log_start = log.tell()
            self.syncd = subprocess.Popen(self._syncd_cmd(), stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT)
        procs.register(self)
        if wait_synced is None:
            wait_synced = False
        if wait_synced:
            self.wait_event('synced', SYNCED_TIMEOUT)

    def syncd_events(self, since_start=True):
        """The JSON progress events acs-syncd printed (this run only by default)."""
        if not self.syncd_log.exists():
            return []
        with open(self.syncd_log, 'rb') as f:
            if since_start:
                f.seek(self._syncd_log_start)
            out = []
            for line in f:
                line = line.strip()
                if line.startswith(b'{') and line.endswith(b'}'):
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
            return out

    def wait_event(self, event, timeout):
        """Waits until acs-syncd (this run) printed the progress event; raises otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            if any(e.get('event') == event for e in self.syncd_events()):
                return
            if self.syncd is None or self.syncd.poll() is not None:
                raise AssertionError(f'acs-syncd exited ({self.syncd and self.syncd.returncode}) '
                                     f'before "{event}":\n{self.syncd_log_tail()}')
            if time.monotonic() > deadline:
                raise AssertionError(f'acs-syncd: no "{event}" within {timeout} s:\n{self.syncd_log_tail()}')
            time.sleep(0.05)

    def syncd_log_tail(self, n=4000):
        return self.syncd_log.read_text(errors='replace')[-n:] if self.syncd_log.exists() else ''

    def fs_log_tail(self, n=4000):
        return self.fs_log.read_text(errors='replace')[-n:] if self.fs_log.exists() else ''

    def stop_syncd(self, timeout=15):
        """SIGTERM, wait (SIGKILL after timeout); returns the exit status."""
        p = self.syncd
        if p is None:
            return self.syncd_status
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.syncd_status = p.returncode
        self.syncd = None
        return self.syncd_status

    def kill_syncd(self):
        """SIGKILL acs-syncd and reap it."""
        p = self.syncd
        if p is not None:
            if p.poll() is None:
                p.kill()
            p.wait()
            self.syncd_status = p.returncode
            self.syncd = None

    def start_fs(self):
        """Mounts acs-fs at tree (foreground process, log appended to fs_log)."""
        fusecheck.require_fuse()
        if self.fs is not None and self.fs.poll() is None:
            raise RuntimeError('acs-fs already running')
        if fusecheck.is_mounted(self.tree):
            fusecheck.unmount(self.tree)
        self.tree.mkdir(exist_ok=True)
        cmd = [paths.binary('acs-fs'), '--db', str(self.db), '--layout', self.layout, '-f',
               '--log-level', self.log_level, *self.fs_args]
        if self.fs_options:
            cmd += ['-o', self.fs_options]
        cmd.append(str(self.tree))
        with open(self.fs_log, 'ab') as log:
            log.write(f'==== acs-fs started {time.strftime("%H:%M:%S")}\n'.encode())
            log.flush()
            self.fs = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        procs.register(self)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not os.path.ismount(self.tree):
            if self.fs.poll() is not None or time.monotonic() > deadline:
                self.kill_fs()
                raise AssertionError(f'acs-fs did not mount {self.tree}:\n{self.fs_log_tail()}')
            time.sleep(0.02)

    def stop_fs(self, timeout=15):
        """Unmounts (fusermount3 -u) and waits for acs-fs to exit; returns its exit status."""
        p = self.fs
        if p is None:
            fusecheck.unmount(self.tree)
            return self.fs_status
        if p.poll() is None:
            try:
                fusecheck.unmount(self.tree)
            except RuntimeError:
                pass
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        fusecheck.unmount(self.tree)
        self.fs_status = p.returncode
        self.fs = None
        return self.fs_status

    def kill_fs(self):
        """SIGKILL acs-fs, reap it, and unmount the dead mount (ENOTCONN)."""
        p = self.fs
        if p is not None:
            if p.poll() is None:
                p.kill()
            p.wait()
            self.fs_status = p.returncode
            self.fs = None
        fusecheck.unmount(self.tree)

    def sync_once(self, timeout=300):
        """Runs `acs-syncd --once` on the cache (acs-syncd daemon must not run); returns
        CompletedProcess (exit 0 with an empty op log = converged)."""
        cmd = [c for c in self._syncd_cmd() if c != '--progress=json'] + ['--once']
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop(check=exc[0] is None)

    # ---- reading the cache (read-only SQL; schema: docs/cache.md) ----

    def _sql(self, query, args=()):
        con = sqlite3.connect(f'file:{self.db}?mode=ro', uri=True, timeout=10)
        try:
            return con.execute(query, args).fetchall()
        finally:
            con.close()

    def ops(self):
        """The op log: list of dicts (seq, kind, uid, attempts, last_error, ...)."""
        con = sqlite3.connect(f'file:{self.db}?mode=ro', uri=True, timeout=10)
        con.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in con.execute('SELECT * FROM op ORDER BY seq')]
        finally:
            con.close()

    def op_count(self):
        return self._sql('SELECT count(*) FROM op')[0][0]

    def _keywords_by_letter(self):
        return {chr(ord('a') + i): n for i, n in self._sql('SELECT idx, name FROM keyword')}

    def _mailboxes(self):
        """{mailbox id: (folder '/'-separated, attrs)}."""
        out = {}
        for mid, name, delim, attrs in self._sql('SELECT id, name, delim, attrs FROM mailbox'):
            out[mid] = (name.replace(chr(delim), '/') if delim else name, attrs)
        return out

    def cache_state(self, bodies=False):
        """The cache's view, shaped like imapcheck.server_state(): selectable mailboxes ->
        [(uid or 0, flags, internaldate, body CRLF or None)] sorted by uid."""
        mbs = self._mailboxes()
        out = {f: [] for f, attrs in mbs.values() if not attrs & MBOX_NOSELECT}
        q = ('SELECT m.mailbox_id, m.uid, m.flags, m.keywords, m.internaldate, ' +
             ('d.data' if bodies else 'NULL') +
             ' FROM message m' + (' LEFT JOIN body_data d ON d.body_id = m.body_id' if bodies else ''))
        for mid, uid, fl, kw, idate, data in self._sql(q):
            folder, attrs = mbs[mid]
            if attrs & MBOX_NOSELECT:
                continue
            flags = {f for f, bit in FLAG_BITS.items() if fl & bit} | set((kw or '').split())
            out[folder].append((uid or 0, frozenset(flags), idate,
                                to_crlf(bytes(data)) if data is not None else None))
        for v in out.values():
            v.sort(key=lambda r: r[0])
        return out

    # ---- reading the tree ----

    def folder_dir(self, folder):
        """The directory of a folder (UTF-8, '/'-separated) in the mounted tree."""
        def esc(comp):
            s = ''.join('%%%02X' % ord(ch) if ch in '%/' or (i == 0 and ch == '.') or
                        (self.layout == 'maildir++' and ch == '.') else ch for i, ch in enumerate(comp))
            if self.layout == 'fs' and comp in ('cur', 'new', 'tmp'):
                s = '%%%02X' % ord(comp[0]) + comp[1:]
            return s
        comps = folder.split('/')
        if self.layout == 'fs':
            return self.tree.joinpath(*[esc(c) for c in comps])
        if folder == 'INBOX':
            return self.tree
        return self.tree / ('.' + '.'.join(esc(c) for c in comps))

    def tree_folders(self):
        """{folder (UTF-8, '/'-separated): directory} of every folder (a directory with cur/)."""
        out = {}
        if self.layout == 'fs':
            def walk(d, comps):
                if comps and (d / 'cur').is_dir():
                    out['/'.join(comps)] = d
                for e in os.scandir(d):
                    if e.is_dir(follow_symlinks=False) and not (comps and e.name in ('cur', 'new', 'tmp')):
                        walk(Path(e.path), comps + [_unescape(e.name)])
            walk(self.tree, [])
        else:
            if (self.tree / 'cur').is_dir():
                out['INBOX'] = self.tree
            for e in os.scandir(self.tree):
                if e.name.startswith('.') and e.is_dir() and (Path(e.path) / 'cur').is_dir():
                    out['/'.join(_unescape(c) for c in e.name[1:].split('.'))] = Path(e.path)
        return out

    def tree_files(self, folder):
        """[(path, 'cur'|'new', uniq, letters)] of the message files of one folder."""
        d = self.folder_dir(folder)
        out = []
        for sub in ('new', 'cur'):
            for e in os.scandir(d / sub):
                if e.name.startswith('.'):
                    continue
                uniq, info = split_name(e.name)
                out.append((Path(e.path), sub, uniq, info or ''))
        return out

    def tree_state(self, bodies=True):
        """The tree's view, same shape as imapcheck.server_state(): folder -> [(uid, flags,
        internaldate, body)] sorted by uid. Folders, flags (from the file names' letters;
        keyword letters through the cache's keyword table), INTERNALDATE (the file's
        mtime) and bodies (the file's bytes, LF -> CRLF) come from the mounted tree; the
        uid is the cache's uid of (folder, unique name), 0 while unknown."""
        kw = self._keywords_by_letter()
        uid_of = {}
        mbs = self._mailboxes()
        for mid, uniq, uid in self._sql('SELECT mailbox_id, uniq, uid FROM message'):
            if mid in mbs:
                uid_of[(mbs[mid][0], uniq)] = uid or 0
        out = {}
        for folder in self.tree_folders():
            rows = []
            for path, sub, uniq, info in self.tree_files(folder):
                try:
                    st = os.stat(path)
                    body = to_crlf(path.read_bytes()) if bodies else None
                except FileNotFoundError:  # renamed meanwhile
                    continue
                flags = {LETTER_FLAGS[c] for c in info if c in LETTER_FLAGS}
                flags |= {kw[c] for c in info if c in kw}
                rows.append((uid_of.get((folder, uniq), 0), frozenset(flags), int(st.st_mtime), body))
            rows.sort(key=lambda r: r[0])
            out[folder] = rows
        return out

    # ---- the server side ----

    def client(self):
        """A logged-in independent imaplib client of the user (kept; reconnected if dead)."""
        c = self._client
        if c is not None:
            try:
                c.noop()
                return c
            except Exception:  # noqa: BLE001 - reconnect below
                self._client = None
        self._client = self.dovecot.client(self.user)
        return self._client

    def server_state(self, bodies=True):
        return imapcheck.server_state(self.client(), bodies)

    def wait_quiescent(self, timeout=60, interval=0.2):
        """Waits until the op log is empty AND the server's state (independent client) equals
        the cache's (folders, uids, flags, internaldates). Returns the seconds it took;
        raises AssertionError with the remaining differences, ops and logs otherwise."""
        start = time.monotonic()
        diff = ['not checked yet']
        n = None
        while True:
            try:
                n = self.op_count()
                if n == 0:
                    diff = diff_states(self.server_state(bodies=False), self.cache_state(bodies=False),
                                       names=('server', 'cache'))
                    if not diff:
                        return time.monotonic() - start
            except (sqlite3.Error, OSError, EOFError, RuntimeError, imaplib.IMAP4.error) as e:
                diff = [f'error while checking: {e!r}']
                self._client = None
            if time.monotonic() - start > timeout:
                ops = self.ops() if n else []
                raise AssertionError(
                    f'not quiescent after {timeout} s: {n} ops left {ops[:5]}\n' + '\n'.join(diff) +
                    f'\n--- acs-syncd log:\n{self.syncd_log_tail()}')
            time.sleep(interval)
