#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""acs-syncd benchmark, side by side in one run against the same Dovecot account:

- initial sync: acs-syncd --once vs mbsync (Maildir, FSync no) vs a raw FETCH drain to
  /dev/null over one TLS connection (the server's own limit);
- no-change resync (fresh connection, TLS and login included): acs-syncd --once vs mbsync;
- push: APPEND over IMAP -> row in the cache, over N tries, in rotating folders, next to the
  time Dovecot itself takes to tell an IDLE client about a new message (the server floor);
- peak RSS of acs-syncd during the initial sync.

Usage: /usr/bin/python3 bench/syncd_bench.py [--messages 10000] [--avg-size 21000]
       [--rounds 3] [--push-tries 200] [--build DIR] [--out FILE]
Durability: both peers without a sync per message (mbsync `FSync no`; acs-syncd commits its
batches with SQLite synchronous=NORMAL in WAL mode, which syncs only at checkpoints).
"""

import argparse
import json
import os
import re
import shutil
import socket
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tests' / 'harness'))

from acstest.corpus import Corpus  # noqa: E402
from acstest.dovecot import Dovecot  # noqa: E402

FOLDERS = ['INBOX', 'Sent', 'Archive', 'Archive/2023', 'Archive/2024', 'Lists', 'Work',
           'Work/Projects', 'Entwürfe', 'Ünïcödé/日本']

MBSYNC_RC = """FSync no

IMAPAccount acc
Host localhost
Port {port}
User user1
PassCmd "cat {pwfile}"
SSLType IMAPS
CertificateFile {ca}

IMAPStore remote
Account acc

MaildirStore local
Path {path}/
Inbox {path}/INBOX
SubFolders Verbatim

Channel ch
Far :remote:
Near :local:
Patterns *
Create Near
SyncState *
Sync Pull
"""


def timed(cmd, env=None):
    """Runs cmd; returns (seconds, peak RSS KB, CompletedProcess)."""
    t = time.monotonic()
    r = subprocess.run(['/usr/bin/time', '-f', 'MAXRSS %M', *cmd], capture_output=True, text=True, env=env)
    dt = time.monotonic() - t
    if r.returncode != 0:
        raise RuntimeError(f'{cmd[0]} failed ({r.returncode}): {r.stderr[-3000:]}')
    rss = int([l for l in r.stderr.splitlines() if l.startswith('MAXRSS')][-1].split()[1])
    return dt, rss, r


class Drain:
    """Raw IMAP over TLS: LOGIN, LIST, then per folder SELECT + UID FETCH 1:* of the same
    items acs-syncd asks for, everything read and thrown away."""

    def __init__(self, dv, user='user1'):
        self.dv = dv
        self.user = user

    def _cmd(self, s, tag, line, sink=False):
        s.sendall(f'{tag} {line}\r\n'.encode())
        end = f'\r\n{tag} '.encode()
        buf = b'\r\n'  # so that a tagged reply on the first line is found too
        total = 0
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                raise RuntimeError('connection closed')
            total += len(chunk)
            buf = (buf + chunk)[-65536:] if sink else buf + chunk
            i = buf.rfind(end)
            if i >= 0 and buf.endswith(b'\r\n'):
                tail = buf[i + 2:]
                if b'\r\n' == tail[-2:] and tail.count(b'\r\n') == 1:
                    if not tail.split(b' ', 2)[1].startswith(b'OK'):
                        raise RuntimeError(f'{line}: {tail!r}')
                    return buf, total

    def run(self):
        ctx = ssl.create_default_context(cafile=self.dv.ca_file)
        raw = socket.create_connection(('127.0.0.1', self.dv.imaps_port))
        s = ctx.wrap_socket(raw, server_hostname='localhost')
        s.recv(4096)  # greeting
        pw = self.dv.users[self.user]
        self._cmd(s, 'Zq1', f'LOGIN {self.user} {pw}')
        listing, _ = self._cmd(s, 'Zq2', 'LIST "" "*"')
        names = []
        for line in listing.split(b'\r\n'):
            m = re.match(rb'\* LIST \(([^)]*)\) "." (.*)$', line)
            if m and b'\\Noselect' not in m.group(1) and b'\\NonExistent' not in m.group(1):
                names.append(m.group(2).decode())
        nbytes = 0
        for i, n in enumerate(names):
            buf, _ = self._cmd(s, f'Zs{i}', f'SELECT {n}')
            if b'* 0 EXISTS' in buf:
                continue
            _, t = self._cmd(s, f'Zf{i}', 'UID FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE MODSEQ BODY.PEEK[])',
                             sink=True)
            nbytes += t
        self._cmd(s, 'Zq9', 'LOGOUT')
        s.close()
        return nbytes


def median(v):
    return statistics.median(v) if v else float('nan')


def pct(v, p):
    v = sorted(v)
    k = (len(v) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def push_bench(dv, syncd, db, tries, log):
    """APPEND -> row in the cache latency, and Dovecot's own IDLE notification latency."""
    args = [syncd, '--db', str(db), '--url', dv.url(), '--user', 'user1', '--password-file',
            dv.password_file('user1'), '--ca', dv.ca_file, '--progress=json']
    p = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    synced = threading.Event()

    def reader():
        for line in p.stderr:
            if '"synced"' in line:
                synced.set()
    threading.Thread(target=reader, daemon=True).start()
    if not synced.wait(600):
        p.kill()
        raise RuntimeError('acs-syncd did not finish its sync')
    time.sleep(0.5)

    # the server floor: an IDLE client on INBOX, timing APPEND -> "* n EXISTS"
    ctx = ssl.create_default_context(cafile=dv.ca_file)
    idle = ctx.wrap_socket(socket.create_connection(('127.0.0.1', dv.imaps_port)), server_hostname='localhost')
    idle.recv(4096)
    idle.sendall(b'a LOGIN user1 pass1\r\n')
    buf = b''
    while b'a OK' not in buf:
        buf += idle.recv(4096)
    idle.sendall(b'b SELECT INBOX\r\n')
    buf = b''
    while b'b OK' not in buf:
        buf += idle.recv(65536)
    idle.sendall(b'c IDLE\r\n')
    buf = b''
    while b'+ ' not in buf:
        buf += idle.recv(4096)
    idle.settimeout(10)

    c = dv.client('user1')
    con = sqlite3.connect(f'file:{db}?mode=ro', uri=True)
    folders = ['INBOX', 'Lists', 'Work.Projects', 'Archive.2024']
    lat, floor = [], []
    try:
        for i in range(tries):
            folder = folders[i % len(folders)]
            mid = con.execute('SELECT id FROM mailbox WHERE name = ?', (folder,)).fetchone()[0]
            msg = f'Subject: push {i}\r\nMessage-ID: <push{i}@bench>\r\n\r\npush body {i}\r\n'.encode()
            t0 = time.monotonic()
            typ, data = c.append(f'"{folder}"', None, None, msg)
            t_app = time.monotonic()
            uid = int(data[0].split(b'APPENDUID ')[1].split()[1].rstrip(b']'))
            got_floor = None
            deadline = t0 + 60  # Dovecot's own fallback re-check comes within ~30 s
            while time.monotonic() < deadline:
                if folder == 'INBOX' and got_floor is None:
                    idle.settimeout(0.001)
                    try:
                        if b'EXISTS' in idle.recv(4096):
                            got_floor = time.monotonic() - t0
                    except (socket.timeout, ssl.SSLWantReadError):
                        pass
                if con.execute('SELECT 1 FROM message WHERE mailbox_id = ? AND uid = ?', (mid, uid)).fetchone():
                    break
                if folder != 'INBOX':
                    time.sleep(0.001)
            else:
                raise RuntimeError(f'push {i} to {folder} never arrived')
            lat.append(time.monotonic() - t0)
            if folder == 'INBOX':
                while got_floor is None and time.monotonic() < deadline:
                    idle.settimeout(0.5)
                    try:
                        if b'EXISTS' in idle.recv(4096):
                            got_floor = time.monotonic() - t0
                    except (socket.timeout, ssl.SSLWantReadError):
                        pass
                if got_floor is not None:
                    floor.append(got_floor)
            del t_app
            time.sleep(0.05)
    finally:
        c.logout()
        con.close()
        idle.close()
        p.terminate()
        rc = p.wait(20)
    if rc != 0:
        raise RuntimeError(f'acs-syncd exited {rc} on SIGTERM')
    return lat, floor


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--messages', type=int, default=10000)
    ap.add_argument('--avg-size', type=int, default=21000)
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--resync-rounds', type=int, default=5)
    ap.add_argument('--push-tries', type=int, default=200)
    ap.add_argument('--build', default=str(ROOT / 'build'))
    ap.add_argument('--out', default=None, help='append a Markdown report to this file')
    a = ap.parse_args()

    syncd = str(Path(a.build) / 'syncd' / 'acs-syncd')
    if not os.access(syncd, os.X_OK):
        sys.exit(f'{syncd} not built')
    mbsync = shutil.which('mbsync')
    if not mbsync:
        sys.exit('mbsync (Debian isync) is not installed')
    work = Path(tempfile.mkdtemp(prefix='acs-bench-', dir='/tmp'))
    os.chmod(work, 0o755)
    log = print
    dv = Dovecot(work / 'dovecot')
    try:
        corpus = Corpus(seed=2024, count=a.messages, folders=FOLDERS, avg_size=a.avg_size)
        corpus.seed_maildir(dv, 'user1')
        total = corpus.total_bytes()
        largest = max(len(m.data) for m in corpus.messages)
        log(f'corpus: {len(corpus.messages)} messages, {total / 1e6:.1f} MB, {len(corpus.folders())} folders, '
            f'largest {largest} B')
        # warm Dovecot's indexes and the page cache so that every peer meets the same server
        t = time.monotonic()
        Drain(dv).run()
        log(f'warm-up drain {time.monotonic() - t:.2f} s')

        rc = work / 'mbsyncrc'
        mdir = work / 'mbsync'
        rc.write_text(MBSYNC_RC.format(port=dv.imaps_port, pwfile=dv.password_file('user1'), ca=dv.ca_file,
                                       path=mdir))
        db = work / 'cache.db'
        acs_cmd = [syncd, '--db', str(db), '--url', dv.url(), '--user', 'user1', '--password-file',
                   dv.password_file('user1'), '--ca', dv.ca_file, '--once']
        mb_cmd = [mbsync, '-q', '-c', str(rc), '-a']

        res = {'drain': [], 'mbsync': [], 'acs': [], 'acs_rss': [], 'mb_resync': [], 'acs_resync': []}
        for rnd in range(a.rounds):
            t = time.monotonic()
            n = Drain(dv).run()
            res['drain'].append(time.monotonic() - t)
            shutil.rmtree(mdir, ignore_errors=True)
            mdir.mkdir()
            dt, _, _ = timed(mb_cmd)
            res['mbsync'].append(dt)
            for f in (db, Path(str(db) + '-wal'), Path(str(db) + '-shm')):
                if f.exists():
                    f.unlink()
            dt, rss, _ = timed(acs_cmd)
            res['acs'].append(dt)
            res['acs_rss'].append(rss)
            log(f'round {rnd + 1}: drain {res["drain"][-1]:.2f} s ({n / 1e6:.0f} MB on the wire), '
                f'mbsync {res["mbsync"][-1]:.2f} s, acs-syncd {dt:.2f} s (peak RSS {rss / 1024:.1f} MB)')
        # sanity: acs-syncd really has everything
        con = sqlite3.connect(db)
        cached = con.execute('SELECT count(*) FROM message').fetchone()[0]
        con.close()
        if cached != len(corpus.messages):
            raise RuntimeError(f'acs-syncd cached {cached} of {len(corpus.messages)} messages')
        for rnd in range(a.resync_rounds):
            dt, _, _ = timed(mb_cmd)
            res['mb_resync'].append(dt)
            dt, _, _ = timed(acs_cmd)
            res['acs_resync'].append(dt)
        log(f'no-change resync: mbsync {median(res["mb_resync"]):.3f} s, acs-syncd {median(res["acs_resync"]):.3f} s')

        lat, floor = push_bench(dv, syncd, db, a.push_tries, log) if a.push_tries else ([], [])

        d, m, s = median(res['drain']), median(res['mbsync']), median(res['acs'])
        lines = [
            f'### acs-syncd benchmark ({time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})',
            '',
            f'Command: `/usr/bin/python3 bench/syncd_bench.py --messages {a.messages} --avg-size {a.avg_size} '
            f'--rounds {a.rounds} --push-tries {a.push_tries} --build {a.build}`',
            '',
            f'Corpus: {len(corpus.messages)} messages, {total / 1e6:.1f} MB, {len(corpus.folders())} folders '
            f'(largest {largest} B), Dovecot 2.3 on 127.0.0.1 over TLS, warm page cache, '
            f'{os.cpu_count()} cores. Medians of {a.rounds} rounds (resync: {a.resync_rounds}).',
            '',
            '| measure | acs-syncd | peer | ratio | target |',
            '|---|---|---|---|---|',
            f'| initial sync vs mbsync | {s:.2f} s | {m:.2f} s | {s / m:.2f} | <= 0.6 |',
            f'| initial sync vs raw FETCH drain (1 connection) | {s:.2f} s | {d:.2f} s | {s / d:.2f} | <= 1.2 |',
            f'| no-change resync (--once) vs mbsync | {median(res["acs_resync"]):.3f} s | '
            f'{median(res["mb_resync"]):.3f} s | {median(res["acs_resync"]) / median(res["mb_resync"]):.2f} | <= 0.25 |',
            f'| peak RSS, initial sync | {max(res["acs_rss"]) / 1024:.1f} MB | largest message '
            f'{largest / 2**20:.1f} MB | | <= 64 MB + largest |',
        ]
        if lat:
            lines += [
                f'| push APPEND -> cache, p50 ({len(lat)} tries, 4 folders) | {pct(lat, 50) * 1000:.0f} ms | '
                f'Dovecot IDLE EXISTS p50 {pct(floor, 50) * 1000:.0f} ms | | <= 100 ms |',
                f'| push APPEND -> cache, p99 | {pct(lat, 99) * 1000:.0f} ms | '
                f'Dovecot IDLE EXISTS p99 {pct(floor, 99) * 1000:.0f} ms | | <= 500 ms |',
            ]
        lines += ['', 'Raw: ' + json.dumps({k: [round(x, 3) for x in v] for k, v in res.items()}), '']
        report = '\n'.join(lines)
        print(report)
        if a.out:
            with open(a.out, 'a') as f:
                f.write(report + '\n')
    finally:
        dv.close()
        if os.environ.get('ACS_KEEP_TMP') != '1':
            shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
