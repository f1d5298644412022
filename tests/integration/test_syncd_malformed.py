# SPDX-License-Identifier: MIT
"""acs-syncd against a scripted IMAP server that misbehaves: truncated literals, garbage,
wrong tags, BYE mid-FETCH, absurd sizes, deep nesting, bad mailbox names, duplicate and
unsolicited responses. The agent must log, reset the connection and exit with a sysexits
status (or finish the sync when the oddity is harmless), and never crash."""

import socket
import sqlite3
import subprocess
import threading

import pytest

from test_syncd_common import syncd_bin

BODIES = {
    1: b'Subject: one\r\n\r\nfirst body\r\n',
    2: b'Subject: two\r\n\r\nsecond body\r\n',
}


class ScriptedServer:
    """Plaintext IMAP server on 127.0.0.1 serving INBOX with BODIES, with one fault."""

    def __init__(self, fault):
        self.fault = fault
        self.sock = socket.socket()
        self.sock.bind(('127.0.0.1', 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def close(self):
        self.stop = True
        try:
            socket.create_connection(('127.0.0.1', self.port), timeout=1).close()
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)

    def _run(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.stop:
                conn.close()
                return
            self.connections += 1
            try:
                self._serve(conn)
            except (OSError, EOFError):
                pass
            finally:
                conn.close()

    def _serve(self, conn):
        f = conn.makefile('rb')
        send = conn.sendall
        send(b'* OK [CAPABILITY IMAP4rev1 IDLE] scripted\r\n')
        while True:
            line = f.readline()
            if not line:
                raise EOFError
            parts = line.rstrip(b'\r\n').split(b' ', 2)
            tag, verb = parts[0], parts[1].upper() if len(parts) > 1 else b''
            rest = parts[2] if len(parts) > 2 else b''
            if verb == b'UID':
                sub, _, rest = rest.partition(b' ')
                verb = b'UID ' + sub.upper()
            if not self._answer(send, tag, verb, rest):
                return

    def _answer(self, send, tag, verb, rest):
        fault = self.fault
        ok = tag + b' OK done\r\n'
        if verb == b'CAPABILITY':
            send(b'* CAPABILITY IMAP4rev1 IDLE\r\n' + ok)
        elif verb == b'LOGIN':
            send(tag + b' OK logged in\r\n')
        elif verb == b'LIST':
            extra = b''
            if fault == 'bad-mutf7-list':
                extra = b'* LIST () "/" "&Jjo!"\r\n* LIST () "/" "A&-B"\r\n'
            elif fault == 'list-garbage':
                extra = b'* LIST (\\Noselect (nested)) "/" \x00\xff\r\n'
            send(b'* LIST () "/" INBOX\r\n' + extra + ok)
        elif verb == b'LSUB':
            send(ok)
        elif verb == b'STATUS':
            send(b'* STATUS INBOX (MESSAGES 2 UIDNEXT 3 UIDVALIDITY 7)\r\n' + ok)
        elif verb in (b'SELECT', b'EXAMINE'):
            if fault == 'wrong-tag':
                send(b'* 2 EXISTS\r\nZZZ9 OK [READ-WRITE] done\r\n')
                return True
            send(b'* 2 EXISTS\r\n* OK [UIDVALIDITY 7] v\r\n* OK [UIDNEXT 3] n\r\n'
                 + tag + b' OK [READ-WRITE] done\r\n')
        elif verb == b'UID FETCH' and b'BODY.PEEK[]' in rest:
            return self._bodies(send, tag, rest)
        elif verb == b'UID FETCH':
            out = b''
            for uid, body in BODIES.items():
                size = len(body)
                if fault == 'size-lie':
                    size = 4000000000
                out += b'* %d FETCH (UID %d FLAGS (\\Seen) RFC822.SIZE %d)\r\n' % (uid, uid, size)
            if fault == 'uid-zero':
                out += b'* 3 FETCH (UID 0 FLAGS () RFC822.SIZE 5)\r\n'
            if fault == 'deep-nesting':
                out += b'* 1 FETCH (FLAGS ' + b'(' * 100000 + b')\r\n'
            send(out + ok)
        elif verb == b'LOGOUT':
            send(b'* BYE bye\r\n' + ok)
            return False
        elif verb == b'NOOP':
            send(ok)
        else:
            send(tag + b' BAD unknown\r\n')
        return True

    def _bodies(self, send, tag, rest):
        fault = self.fault
        out = b''
        if fault == 'bye-mid-fetch':
            send(b'* 1 FETCH (UID 1 FLAGS (\\Seen) BODY[] {5}\r\nSubje')
            send(b'* BYE shutting down\r\n')
            return False
        if fault == 'truncated-literal':
            send(b'* 2 FETCH (UID 2 FLAGS (\\Seen) BODY[] {1000}\r\nonly a few bytes')
            return False
        if fault == 'huge-literal':
            send(b'* 2 FETCH (UID 2 FLAGS (\\Seen) BODY[] {4294967295}\r\n' + b'x' * 65536)
            return False
        if fault == 'garbage':
            send(b'* 2 FETCH (UID 2 FLAGS (\\Se\x00en \xff) BODY[] {abc}\r\n' + tag + b' OK done\r\n')
            return True
        if fault == 'unsolicited':
            out += b'* 7 EXPUNGE\r\n* 9 EXISTS\r\n* 1 FETCH (FLAGS (\\Seen \\Flagged))\r\n'
        for uid in sorted(BODIES, reverse=True):
            body = BODIES[uid]
            item = (b'* %d FETCH (UID %d FLAGS (\\Seen) INTERNALDATE "01-Jan-2024 00:00:00 +0000" '
                    b'RFC822.SIZE %d BODY[] {%d}\r\n' % (uid, uid, len(body), len(body)) + body + b')\r\n')
            out += item
            if fault == 'dup-fetch':
                out += item
        send(out + tag + b' OK done\r\n')
        return True


FAULTS = {
    # fault: exit statuses allowed (0 = the oddity is harmless and the sync completes)
    'none': {0},
    'bad-mutf7-list': {0},
    'size-lie': {0},
    'uid-zero': {0},
    'unsolicited': {0},
    'dup-fetch': {0},
    'list-garbage': {75, 76},
    'wrong-tag': {75, 76},
    'deep-nesting': {75, 76},
    'bye-mid-fetch': {75, 76},
    'truncated-literal': {75, 76},
    'huge-literal': {75, 76},
    'garbage': {75, 76},
}


@pytest.mark.parametrize('fault', sorted(FAULTS))
def test_malformed_server(fault, tmp_path):
    srv = ScriptedServer(fault)
    pw = tmp_path / 'pw'
    pw.write_text('secret\n')
    db = tmp_path / 'cache.db'
    try:
        r = subprocess.run([syncd_bin(), '--db', str(db), '--url', f'imap://127.0.0.1:{srv.port}',
                            '--insecure-plaintext', '--user', 'u', '--password-file', str(pw),
                            '--once', '--retries', '1', '--timeout', '5'],
                           capture_output=True, text=True, timeout=120)
    finally:
        srv.close()
    assert r.returncode >= 0, f'acs-syncd died of signal {-r.returncode}\n{r.stderr[-3000:]}'
    assert 'AddressSanitizer' not in r.stderr and 'runtime error' not in r.stderr, r.stderr[-3000:]
    assert r.returncode in FAULTS[fault], f'exit {r.returncode}\n{r.stderr[-3000:]}'
    if r.returncode == 0:
        con = sqlite3.connect(db)
        if fault == 'bad-mutf7-list':
            names = {n for n, in con.execute('SELECT name FROM mailbox')}
            assert names == {'INBOX', 'A&B'}, names
        rows = con.execute('SELECT m.uid, d.data FROM message m JOIN body_data d ON d.body_id = m.body_id '
                           "JOIN mailbox b ON b.id = m.mailbox_id WHERE b.name = 'INBOX' "
                           'ORDER BY m.uid').fetchall()
        con.close()
        assert [(u, bytes(b)) for u, b in rows] == [(u, b.replace(b'\r\n', b'\n')) for u, b in
                                                     sorted(BODIES.items())]
    else:
        # the failure was noticed and retried on a fresh connection, and said so
        assert srv.connections >= 2, r.stderr[-2000:]
        assert 'reset' in r.stderr or 'giving up' in r.stderr
