#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""acsd benchmark, side by side in one run against the same Dovecot account:

- open -> first file readable, on an already synced persistent cache (the user's instance
  stopped by the idle timeout before each run, so every OPEN starts acs-syncd and acs-fs,
  waits for the agent's IMAP login and mounts), next to what a webmail request does without
  acs: TLS connect + LOGIN + SELECT INBOX + FETCH of the first message (imaplib);
- RESUME latency over N resumes (default 10,000) of a running session: each on a fresh
  connection as a PHP request does it (connect + HELLO + RESUME), and the RESUME round trip
  alone; next to a fresh IMAP login (connect + TLS + LOGIN), the peer a webmail pays today.

Usage (root): /usr/bin/python3 bench/acsd_bench.py [--build DIR] [--messages 2000]
       [--opens 15] [--resumes 10000] [--imap-logins 300] [--out bench/results/acsd.md]
"""

import argparse
import datetime
import imaplib
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tests' / 'harness'))

from acstest.acsd import Acsd, maildir_files, wait_for  # noqa: E402
from acstest.corpus import Corpus  # noqa: E402
from acstest.dovecot import Dovecot  # noqa: E402


def pct(values, p):
    v = sorted(values)
    if not v:
        return float('nan')
    k = min(len(v) - 1, max(0, int(round(p / 100 * (len(v) - 1)))))
    return v[k]


def ms(x):
    return f'{x * 1000:.3f} ms' if x < 0.01 else f'{x * 1000:.1f} ms'


def open_first_file(a, user, password):
    """Seconds from connect to the first byte of the first INBOX file, and the token."""
    t0 = time.perf_counter()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(a.socket))
    f = s.makefile('rwb', buffering=0)
    f.write(b'HELLO 1 1\n')
    assert f.readline().startswith(b'OK HELLO')
    f.write(f'OPEN {user} {password}\n'.encode())
    line = f.readline().decode()
    assert line.startswith('OK OPEN'), line
    pairs = dict(p.split('=', 1) for p in line.split()[2:])
    inbox = os.path.join(pairs['path'], 'INBOX', 'cur')
    first = sorted(os.listdir(inbox))[0]
    with open(os.path.join(inbox, first), 'rb') as m:
        m.read(1)
    dt = time.perf_counter() - t0
    f.write(b'CLOSE\n')
    assert f.readline().startswith(b'OK CLOSE')
    s.close()
    return dt


def imap_first_message(dv, user, password):
    t0 = time.perf_counter()
    c = imaplib.IMAP4_SSL('localhost', dv.imaps_port, ssl_context=dv.ssl_context())
    c.login(user, password)
    c.select('INBOX', readonly=True)
    typ, data = c.fetch('1', '(BODY.PEEK[])')
    assert typ == 'OK' and data[0]
    dt = time.perf_counter() - t0
    c.logout()
    return dt


def resume_runs(a, token, n):
    full, rtt = [], []
    hello = b'HELLO 1 1\n'
    resume = f'RESUME {token}\n'.encode()
    for _ in range(n):
        t0 = time.perf_counter()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(a.socket))
        s.sendall(hello)
        buf = b''
        while not buf.endswith(b'\n'):
            buf += s.recv(4096)
        assert buf.startswith(b'OK HELLO'), buf
        t1 = time.perf_counter()
        s.sendall(resume)
        buf = b''
        while not buf.endswith(b'\n'):
            buf += s.recv(4096)
        t2 = time.perf_counter()
        assert buf.startswith(b'OK RESUME'), buf
        s.close()
        full.append(t2 - t0)
        rtt.append(t2 - t1)
    return full, rtt


def imap_logins(dv, user, password, n):
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        c = imaplib.IMAP4_SSL('localhost', dv.imaps_port, ssl_context=dv.ssl_context())
        c.login(user, password)
        out.append(time.perf_counter() - t0)
        c.logout()
    return out


def buildtype(build):
    import json
    try:
        with open(Path(build) / 'meson-info' / 'intro-buildoptions.json') as f:
            opts = {o['name']: o['value'] for o in json.load(f)}
        san = opts.get('b_sanitize', 'none')
        return opts.get('buildtype', '?') + ('' if san in ('none', '') else f', sanitize={san}')
    except OSError:
        return '?'


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--build', default=str(ROOT / 'build'))
    ap.add_argument('--messages', type=int, default=2000)
    ap.add_argument('--opens', type=int, default=15)
    ap.add_argument('--resumes', type=int, default=10000)
    ap.add_argument('--imap-logins', type=int, default=300)
    ap.add_argument('--out', default=str(ROOT / 'bench' / 'results' / 'acsd.md'))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit('acsd_bench: run as root (acsd mounts and starts agents as other uids)')
    os.environ['ACS_BUILD_DIR'] = os.path.abspath(args.build)

    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix='acsd-bench-', dir='/tmp'))
    os.chmod(work, 0o755)
    dv = Dovecot(work / 'dovecot')
    corpus = Corpus(11, args.messages)
    corpus.seed_maildir(dv, 'user1')
    a = Acsd(work / 'acsd', dovecot=dv, cache='persistent', idle_timeout=1)
    try:
        print('first sync ...', file=sys.stderr)
        ok = a.open('user1', 'pass1')
        want = len(corpus.by_folder()['INBOX'])
        inbox = a.tree('user1') / 'INBOX'
        wait_for(lambda: len(maildir_files(inbox)) >= want, 600, 'the first sync')
        with a.client() as c:
            c.resume(ok['token'])
            c.call('CLOSE')

        opens, peers = [], []
        for i in range(args.opens):
            wait_for(lambda: not a.mounted('user1') and not any(a.agents('user1').values()),
                     60, 'the idle stop')
            opens.append(open_first_file(a, 'user1', 'pass1'))
            peers.append(imap_first_message(dv, 'user1', 'pass1'))
            print(f'open {i + 1}/{args.opens}: {ms(opens[-1])} (IMAP {ms(peers[-1])})',
                  file=sys.stderr)

        # A running session for the resumes (kept open by this connection's session).
        holder = a.client()
        token = holder.open('user1', 'pass1')['token']
        resume_runs(a, token, 200)  # warm-up
        print(f'{args.resumes} resumes ...', file=sys.stderr)
        full, rtt = resume_runs(a, token, args.resumes)
        print(f'{args.imap_logins} IMAP logins ...', file=sys.stderr)
        logins = imap_logins(dv, 'user1', 'pass1', args.imap_logins)
        holder.close()
    finally:
        a.close()
        dv.close()

    o50, p50 = statistics.median(opens), statistics.median(peers)
    f50, f99 = pct(full, 50), pct(full, 99)
    r50, r99 = pct(rtt, 50), pct(rtt, 99)
    l50, l99 = pct(logins, 50), pct(logins, 99)
    when = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
    cmd = ' '.join(['/usr/bin/python3', 'bench/acsd_bench.py'] + sys.argv[1:])
    rows = [
        ('open -> first file readable (persistent cache, synced), median of '
         f'{args.opens}', ms(o50), f'IMAP connect+TLS+LOGIN+SELECT+FETCH 1: {ms(p50)}',
         f'{o50 / p50:.2f}', '<= 300 ms', 'yes' if o50 <= 0.3 else 'no',
         f'p90 {ms(pct(opens, 90))}, max {ms(max(opens))}'),
        (f'resume p99, {args.resumes} x (connect + HELLO + RESUME)', ms(f99),
         f'IMAP connect+TLS+LOGIN p99: {ms(l99)}', f'{f99 / l99:.3f}', '<= 2 ms',
         'yes' if f99 <= 0.002 else 'no', f'p50 {ms(f50)}; IMAP login p50 {ms(l50)}'),
        (f'resume p99, RESUME round trip alone ({args.resumes})', ms(r99), '', '', '<= 2 ms',
         'yes' if r99 <= 0.002 else 'no', f'p50 {ms(r50)}'),
    ]
    import subprocess
    head = subprocess.run(['git', '-C', str(ROOT), 'rev-parse', '--short', 'HEAD'],
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(['git', '-C', str(ROOT), 'status', '--porcelain', '--', 'ctl', 'lib',
                            'syncd', 'fs', 'include'], capture_output=True, text=True).stdout
    src = f'commit {head}' + (' plus uncommitted changes in ' +
                              ', '.join(sorted(set(line[3:].split('/')[0] for line in
                                                   dirty.splitlines())))
                              if dirty.strip() else '')
    text = [f'### acsd benchmark ({when})', '',
            f'Command (root): `{cmd}`; source: {src}; build type of {args.build}: '
            f'{buildtype(args.build)}.', '',
            f'Dovecot 2.3 on 127.0.0.1 over TLS (harness `acstest`), user1 with {args.messages} '
            f'messages ({len(corpus.by_folder()["INBOX"])} in INBOX), acsd with '
            f'`cache.mode = persistent`, `session.idle_timeout = 1`; kernel '
            f'{platform.release()}, {os.cpu_count()} CPUs (shared with other builds and tests: load '
            f'average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after).', '',
            '| measure | acsd | peer | ratio | target | met | notes |',
            '|---|---|---|---|---|---|---|']
    text += ['| ' + ' | '.join(r) + ' |' for r in rows]
    text += ['', 'How: open = connect to the socket, `HELLO`, `OPEN` (acsd starts acs-syncd and '
             'acs-fs, waits for the IMAP login, mounts), then `listdir(INBOX/cur)` and read 1 '
             'byte of the first file; the instance is stopped by the idle timeout before each '
             'run and the cache is kept, so the tree is complete at mount time. Resume = a '
             'fresh Unix connection, `HELLO 1 1`, `RESUME <token>` up to the `OK` line '
             '(Python client, `time.perf_counter`).', '']
    print('\n'.join(text))
    out = Path(args.out)
    head = '# acsd benchmark results\n\nProduced by `bench/acsd_bench.py` (see its docstring).\n\n'
    old = out.read_text() if out.exists() else head
    if not old.startswith('# acsd'):
        old = head + old
    out.write_text(old.rstrip('\n') + '\n\n' + '\n'.join(text))


if __name__ == '__main__':
    main()
