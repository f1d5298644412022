# SPDX-License-Identifier: MIT
"""Shared helpers of the acs-syncd tests (no tests here): running the agent, reading its cache.

The cache is read with sqlite3 directly (schema of lib/store.c, version 1) so the check
does not go through the code under test.
"""

import json
import os
import sqlite3
import subprocess
import threading
import time

from acstest import paths
from acstest.imapcheck import server_state  # noqa: F401  (re-exported for the tests)

FLAG_NAMES = [  # bit order of enum acs_flag (D F P R S T)
    (1 << 0, '\\Draft'),
    (1 << 1, '\\Flagged'),
    (1 << 2, '$Forwarded'),
    (1 << 3, '\\Answered'),
    (1 << 4, '\\Seen'),
    (1 << 5, '\\Deleted'),
]
MSG_NEW = 1

# sysexits.h
EX_OK, EX_USAGE, EX_NOINPUT, EX_SOFTWARE, EX_IOERR, EX_TEMPFAIL, EX_PROTOCOL, EX_NOPERM = \
    0, 64, 66, 70, 74, 75, 76, 77


def syncd_bin():
    return paths.binary('syncd/acs-syncd')


def syncd_args(dv, db, user='user1', url=None, extra=()):
    return [syncd_bin(), '--db', str(db), '--url', url or dv.url(), '--user', user,
            '--password-file', dv.password_file(user), '--ca', dv.ca_file, '--progress=json',
            *extra]


def parse_events(stderr):
    out = []
    for line in stderr.splitlines():
        line = line.strip()
        if line.startswith('{'):
            out.append(json.loads(line))
    return out


def run_once(dv, db, user='user1', extra=(), timeout=600, check=True):
    """Runs `acs-syncd --once`; returns (CompletedProcess, events)."""
    r = subprocess.run(syncd_args(dv, db, user, extra=('--once', *extra)), capture_output=True,
                       text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f'acs-syncd exited {r.returncode}\n{r.stderr[-4000:]}\n'
                             f'--- dovecot log ---\n{dv.log_tail()}')
    return r, parse_events(r.stderr)


class Daemon:
    """acs-syncd without --once; collects its JSON events from stderr in a thread."""

    def __init__(self, dv, db, user='user1', extra=()):
        self.dv = dv
        self.proc = subprocess.Popen(syncd_args(dv, db, user, extra=extra), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.events = []
        self.lines = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stderr:
            with self.cond:
                self.lines.append(line)
                if line.startswith('{'):
                    try:
                        self.events.append(json.loads(line))
                    except ValueError:
                        pass
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_event(self, pred, timeout=60, start=0):
        """Waits for an event (index >= start) matching pred; returns its index."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i in range(start, len(self.events)):
                    if pred(self.events[i]):
                        return i
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and not self.thread.is_alive():
                    raise AssertionError(f'no matching event in {timeout}s; rc={self.proc.poll()}\n'
                                         + ''.join(self.lines[-40:]) + self.diagnostics())
                self.cond.wait(min(left, 0.5))

    def diagnostics(self):
        """What a stall needs to be understood: the agent's threads (gdb) and Dovecot's log tail."""
        out = ''
        if self.proc.poll() is None:
            try:
                bt = subprocess.run(['gdb', '-p', str(self.proc.pid), '-batch', '-ex', 'thread apply all bt'],
                                    capture_output=True, text=True, timeout=60)
                out += '\n--- acs-syncd threads (gdb) ---\n' + bt.stdout[-8000:]
            except (OSError, subprocess.TimeoutExpired) as e:
                out += f'\n--- gdb failed: {e} ---\n'
        log = getattr(self.dv, 'log_file', None)
        if log and os.path.exists(log):
            with open(log, errors='replace') as f:
                out += '\n--- dovecot log (tail) ---\n' + ''.join(f.readlines()[-40:])
        return out

    def n_events(self):
        with self.cond:
            return len(self.events)

    def stop(self, sig=15, timeout=20):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError('acs-syncd did not stop within %ss of signal %d' % (timeout, sig))
        self.thread.join(5)
        return rc

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def db_connect(db):
    con = sqlite3.connect(f'file:{db}?mode=ro', uri=True, timeout=30)
    return con


def flags_to_names(bits, keywords):
    out = {name for bit, name in FLAG_NAMES if bits & bit}
    out |= set(k for k in (keywords or '').split(' ') if k)
    return frozenset(out)


def folder_of(name, delim):
    """Cache mailbox name (server delimiter) -> the harness' '/'-separated folder."""
    if delim and delim != '/':
        return name.replace(chr(delim), '/')
    return name


def cache_state(db, bodies=True):
    """dict folder -> list of (uid, flags, internaldate, body CRLF bytes or None, row dict) by uid."""
    con = db_connect(db)
    try:
        out = {}
        boxes = con.execute('SELECT id, name, delim, attrs FROM mailbox').fetchall()
        for mid, name, delim, attrs in boxes:
            if attrs & 1:  # \Noselect
                continue
            rows = con.execute(
                'SELECT m.id, m.uid, m.flags, m.keywords, m.internaldate, m.size, m.vsize, m.state, '
                'm.uniq, m.body_id FROM message m WHERE m.mailbox_id = ? ORDER BY m.uid', (mid,)
            ).fetchall()
            lst = []
            for (id_, uid, fl, kw, idate, size, vsize, state, uniq, body_id) in rows:
                body = None
                if bodies and body_id:
                    b = con.execute('SELECT data FROM body_data WHERE body_id = ?', (body_id,)).fetchone()
                    body = bytes(b[0]) if b else None
                lst.append((uid, flags_to_names(fl, kw), idate, body,
                            dict(id=id_, size=size, vsize=vsize, state=state, uniq=uniq, body_id=body_id,
                                 flags=fl, keywords=kw)))
            out[folder_of(name, delim)] = lst
        return out
    finally:
        con.close()


def lf(b):
    return b.replace(b'\r\n', b'\n')


def vsize_of(lfbody):
    """Size once every LF not preceded by CR becomes CRLF."""
    return len(lfbody) + lfbody.count(b'\n') - lfbody.count(b'\r\n')


def assert_cache_equals_server(db, client, bodies=True, fresh=False):
    """Every folder, message, body (CRLF->LF), flag, keyword and INTERNALDATE equal.

    \\Seen messages must be in cur/ (state not NEW); with fresh (a cache filled from scratch)
    every unseen message must also be in new/. (Clearing \\Seen later does not move a
    message back to new/, as in any Maildir.)
    """
    srv = server_state(client, bodies=bodies)
    cache = cache_state(db, bodies=bodies)
    assert set(cache) == set(srv), f'folders differ: cache-only {set(cache) - set(srv)}, ' \
                                   f'server-only {set(srv) - set(cache)}'
    problems = []
    for folder, smsgs in srv.items():
        cmsgs = cache[folder]
        suids = [m[0] for m in smsgs]
        cuids = [m[0] for m in cmsgs]
        if suids != cuids:
            problems.append(f'{folder}: uids differ: server-only {sorted(set(suids) - set(cuids))[:10]}, '
                            f'cache-only {sorted(set(cuids) - set(suids))[:10]}, '
                            f'{len(suids)} vs {len(cuids)}')
            continue
        for s, c in zip(smsgs, cmsgs):
            uid = s[0]
            if s[1] != c[1]:
                problems.append(f'{folder} uid {uid}: flags {sorted(s[1])} != cache {sorted(c[1])}')
            if s[2] != c[2]:
                problems.append(f'{folder} uid {uid}: internaldate {s[2]} != cache {c[2]}')
            row = c[4]
            want_new = '\\Seen' not in s[1]
            if (row['state'] & MSG_NEW and not want_new) or (fresh and want_new and not row['state'] & MSG_NEW):
                problems.append(f'{folder} uid {uid}: state {row["state"]} but \\Seen is {not want_new}')
            if bodies:
                want = lf(s[3])
                if c[3] != want:
                    problems.append(f'{folder} uid {uid}: body differs ({len(c[3] or b"")} vs {len(want)} bytes)')
                if row['size'] != len(want):
                    problems.append(f'{folder} uid {uid}: size {row["size"]} != {len(want)}')
                if row['vsize'] != vsize_of(want):
                    problems.append(f'{folder} uid {uid}: vsize {row["vsize"]} != {vsize_of(want)}')
    assert not problems, f'{len(problems)} differences:\n' + '\n'.join(problems[:30])
    return srv


def mailbox_rows(db):
    con = db_connect(db)
    try:
        return {folder_of(n, d): dict(id=i, attrs=a, uidvalidity=uv, uidnext=un, highestmodseq=hm)
                for i, n, d, a, uv, un, hm in con.execute(
                    'SELECT id, name, delim, attrs, uidvalidity, uidnext, highestmodseq FROM mailbox')}
    finally:
        con.close()


def change_seq(db):
    con = db_connect(db)
    try:
        return con.execute('SELECT coalesce(max(seq), 0) FROM change').fetchone()[0]
    finally:
        con.close()


def sync_paths(events):
    """dict mailbox -> sync path chosen ('qresync', 'condstore', 'scan', 'full')."""
    return {e['mailbox']: e['path'] for e in events if e.get('event') == 'sync'}


def quote(name):
    return '"' + name.replace('\\', '\\\\').replace('"', '\\"') + '"'
