#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""The "webmail page" benchmark: what one PHP request of a webmail does, three ways, side by
side in one run against the same Dovecot account:

- acs: connect to acsd's socket, HELLO, RESUME <token> (the session of an earlier OPEN),
  list INBOX (cur/ and new/), take the newest 50 by file name (the unique part starts with
  INTERNALDATE), read each one's header up to the blank line for From/Subject/Date, flags
  from the file name, then read the newest message whole;
- IMAP, fresh login (what PHP webmail does per request): TLS connect, LOGIN, SELECT INBOX,
  FETCH of the newest 50 (UID FLAGS BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)]),
  UID FETCH BODY.PEEK[] of the newest, LOGOUT;
- IMAP, persistent connection (an IMAP proxy kept logged in): the same without connect,
  LOGIN and LOGOUT.
The three run interleaved, page after page; medians, p90 and ratios.

Usage (root): /usr/bin/python3 bench/webmail_bench.py [--build DIR] [--messages 2000]
       [--pages 200] [--out bench/results/webmail.md]
"""

import argparse
import datetime
import email.parser
import email.policy
import imaplib
import os
import platform
import re
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

PAGE = 50
HDR = email.parser.BytesHeaderParser(policy=email.policy.compat32)


def pct(values, p):
    v = sorted(values)
    k = min(len(v) - 1, max(0, int(round(p / 100 * (len(v) - 1)))))
    return v[k]


def read_header(path):
    """The header block of a message file (up to the first empty line)."""
    out = b''
    with open(path, 'rb') as f:
        while True:
            chunk = f.read(8192)
            if not chunk:
                return out
            out += chunk
            i = out.find(b'\n\n')
            if i >= 0:
                return out[:i + 1]


def acs_page(sock_path, token):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    f = s.makefile('rwb', buffering=0)
    f.write(b'HELLO 1 1\n')
    if not f.readline().startswith(b'OK HELLO'):
        raise RuntimeError('HELLO refused')
    f.write(f'RESUME {token}\n'.encode())
    line = f.readline().decode()
    if not line.startswith('OK RESUME'):
        raise RuntimeError(line)
    pairs = dict(p.split('=', 1) for p in line.split()[2:])
    s.close()
    inbox = os.path.join(pairs['path'], 'INBOX')
    names = []
    for sub in ('cur', 'new'):
        d = os.path.join(inbox, sub)
        names += [(n, d) for n in os.listdir(d)]
    names.sort(reverse=True)
    rows = []
    for n, d in names[:PAGE]:
        h = HDR.parsebytes(read_header(os.path.join(d, n)))
        flags = n.rsplit(':2,', 1)[1] if ':2,' in n else ''
        rows.append((h.get('From'), h.get('Subject'), h.get('Date'), flags))
    with open(os.path.join(names[0][1], names[0][0]), 'rb') as m:
        body = m.read()
    return rows, body


def imap_page(c):
    typ, data = c.select('INBOX')
    n = int(data[0])
    lo = max(1, n - PAGE + 1)
    typ, data = c.fetch(f'{lo}:{n}', '(UID FLAGS BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)])')
    rows, uids = [], []
    for item in data:
        if not isinstance(item, tuple):
            continue
        meta, hdr = item
        uid = int(re.search(rb'UID (\d+)', meta).group(1))
        uids.append(uid)
        flags = re.search(rb'FLAGS \(([^)]*)\)', meta).group(1)
        h = HDR.parsebytes(hdr)
        rows.append((h.get('From'), h.get('Subject'), h.get('Date'), flags))
    typ, data = c.uid('FETCH', str(max(uids)), '(BODY.PEEK[])')
    body = data[0][1]
    return rows, body


def imap_fresh_page(dv, user, password):
    c = imaplib.IMAP4_SSL('localhost', dv.imaps_port, ssl_context=dv.ssl_context())
    c.login(user, password)
    out = imap_page(c)
    c.logout()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--build', default=str(ROOT / 'build'))
    ap.add_argument('--messages', type=int, default=2000)
    ap.add_argument('--pages', type=int, default=200)
    ap.add_argument('--out', default=str(ROOT / 'bench' / 'results' / 'webmail.md'))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit('webmail_bench: run as root (acsd mounts and starts agents as other uids)')
    os.environ['ACS_BUILD_DIR'] = os.path.abspath(args.build)

    work = Path(tempfile.mkdtemp(prefix='webmail-bench-', dir='/tmp'))
    os.chmod(work, 0o755)
    dv = Dovecot(work / 'dovecot')
    corpus = Corpus(12, args.messages)
    corpus.seed_maildir(dv, 'user1')
    want = len(corpus.by_folder()['INBOX'])
    a = Acsd(work / 'acsd', dovecot=dv, cache='memory')
    t_acs, t_fresh, t_pers = [], [], []
    try:
        token = a.open('user1', 'pass1')['token']
        inbox = a.tree('user1') / 'INBOX'
        wait_for(lambda: len(maildir_files(inbox)) >= want, 600, 'the first sync')
        pers = imaplib.IMAP4_SSL('localhost', dv.imaps_port, ssl_context=dv.ssl_context())
        pers.login('user1', 'pass1')
        # both show a full page and a whole message (which 50 are "newest" differs: the tree
        # sorts by INTERNALDATE, the IMAP page takes the highest sequence numbers)
        ra, ba = acs_page(str(a.socket), token)
        rf, bf = imap_fresh_page(dv, 'user1', 'pass1')
        if len(ra) != PAGE or len(rf) != PAGE or not ba or not bf:
            raise SystemExit(f'incomplete page: tree {len(ra)} rows, IMAP {len(rf)} rows')
        for i in range(args.pages):
            t0 = time.perf_counter()
            acs_page(str(a.socket), token)
            t1 = time.perf_counter()
            imap_fresh_page(dv, 'user1', 'pass1')
            t2 = time.perf_counter()
            imap_page(pers)
            t3 = time.perf_counter()
            t_acs.append(t1 - t0)
            t_fresh.append(t2 - t1)
            t_pers.append(t3 - t2)
        pers.logout()
    finally:
        a.close()
        dv.close()

    m = {k: (statistics.median(v), pct(v, 90)) for k, v in
         (('acs', t_acs), ('fresh', t_fresh), ('pers', t_pers))}
    when = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
    cmd = ' '.join(['/usr/bin/python3', 'bench/webmail_bench.py'] + sys.argv[1:])
    text = [f'### webmail page ({when})', '',
            f'Command (root): `{cmd}`. Dovecot 2.3 on 127.0.0.1 over TLS, user1 with '
            f'{args.messages} messages ({want} in INBOX); acsd with a memory cache; '
            f'{args.pages} pages each, interleaved; kernel {platform.release()}, '
            f'{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end.', '',
            '| page (resume/login, newest 50 with From/Subject/Date/flags, read 1) | median | p90 | ratio to acs |',
            '|---|---|---|---|',
            f'| acs: RESUME + files | {m["acs"][0] * 1000:.1f} ms | {m["acs"][1] * 1000:.1f} ms | 1 |',
            f'| IMAP, fresh login per page (PHP webmail today) | {m["fresh"][0] * 1000:.1f} ms | '
            f'{m["fresh"][1] * 1000:.1f} ms | {m["fresh"][0] / m["acs"][0]:.1f}x |',
            f'| IMAP, persistent connection | {m["pers"][0] * 1000:.1f} ms | {m["pers"][1] * 1000:.1f} ms | '
            f'{m["pers"][0] / m["acs"][0]:.1f}x |', '']
    print('\n'.join(text))
    Path(args.out).write_text('# webmail page benchmark results\n\nProduced by `bench/webmail_bench.py` '
                              '(see its docstring).\n\n' + '\n'.join(text))


if __name__ == '__main__':
    main()
