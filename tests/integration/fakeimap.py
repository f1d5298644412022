# SPDX-License-Identifier: MIT
"""A tiny scripted IMAP server on 127.0.0.1 for protocol attack tests of acs-imap-probe.

One FakeImap serves one connection in a thread, following a named scenario, and records
what the client sent (plaintext bytes, whether a TLS handshake completed, and how many
bytes arrived after it), so tests can prove that no credential left the client.

Scenarios (mode=):
  'starttls-inject'  greeting advertises STARTTLS; the STARTTLS reply is
                     "TAG OK Begin TLS\\r\\n* injected\\r\\n" in one write.
  'no-starttls'      imap:// server without STARTTLS (and with LOGIN).
  'preauth'          greets with PREAUTH on imap://.
  'tls'              imaps: TLS from the first byte with cert/key, then a greeting.
  'starttls'         honest STARTTLS with cert/key.
  'silent'           accepts the connection and never says anything.
  'literal'          plaintext, no STARTTLS; accepts LOGIN; answers CAPABILITY with
                     "* 1 FETCH (BODY[] {N}\\r\\n" then sends `literal_send` bytes of
                     literal content (default: as many as announced) and, if all were sent,
                     ")\\r\\n" and the tagged OK. `literal_size` is the announced size (str, so
                     that values beyond 32 bits can be tried).
  'literal-desync'   plaintext; answers LOGIN with "* OK {L}\\r\\n" followed by L bytes that
                     are themselves a FETCH line announcing `literal_size`, then streams
                     content: a byte lexer that skips L bytes as a literal misses the real
                     announcement (libetpan parses "* OK {L}" as text).
  'long-line'        plaintext; answers LOGIN with an untagged OK line of `line_bytes` bytes.
"""

import socket
import ssl
import threading
import time

CRLF = b'\r\n'


class _Conn:
    """Line reader over a (possibly TLS) socket that records everything received."""

    def __init__(self, sock, rec):
        self.sock = sock
        self.rec = rec
        self.buf = b''

    def recv(self):
        data = self.sock.recv(65536)
        if self.rec['tls_done']:
            self.rec['after_handshake'] += len(data)
        self.rec['received'] += data
        return data

    def line(self):
        while b'\n' not in self.buf:
            data = self.recv()
            if not data:
                raise EOFError
            self.buf += data
        line, _, self.buf = self.buf.partition(b'\n')
        return line.rstrip(b'\r')

    def send(self, data):
        self.sock.sendall(data)
        self.rec['sent_bytes'] += len(data)


class FakeImap:
    def __init__(self, mode, cert=None, key=None, literal_size='2000000000', literal_send=None,
                 line_bytes=80 << 20, split=False, timeout=20.0):
        self.mode = mode
        self.cert, self.key = cert, key
        self.literal_size = str(literal_size)
        self.literal_send = literal_send
        self.line_bytes = line_bytes
        self.split = split
        self.timeout = timeout
        self.record = {'received': b'', 'tls_done': False, 'after_handshake': 0,
                       'sent_bytes': 0, 'literal_sent': 0, 'closed_by_client': False,
                       'error': None, 'events': [], 'sni': None}
        self._lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._lsock.bind(('127.0.0.1', 0))
        self._lsock.listen(1)
        self.port = self._lsock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    # -- public ------------------------------------------------------------------------
    def url(self, tls=False):
        return f"{'imaps' if tls else 'imap'}://127.0.0.1:{self.port}"

    def wait(self, timeout=30):
        """Waits until the connection is over; returns the record."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f'fakeimap {self.mode}: connection still open after {timeout}s')
        return self.record

    def close(self):
        try:
            self._lsock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def login_attempted(self):
        """True if any LOGIN or AUTHENTICATE command reached us in plaintext."""
        r = self.record['received'].upper()
        return b' LOGIN ' in r or b' AUTHENTICATE ' in r

    # -- server ------------------------------------------------------------------------
    def _tls_context(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)

        def sni(sslobj, name, ctx_):
            self.record['sni'] = name
        ctx.sni_callback = sni
        return ctx

    def _start_tls(self, conn, sock):
        tls = self._tls_context().wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        tls.settimeout(self.timeout)
        try:
            tls.do_handshake()
        except (ssl.SSLError, OSError) as e:
            self.record['events'].append(f'handshake failed: {e}')
            raise EOFError
        self.record['tls_done'] = True
        conn.sock = tls
        conn.buf = b''
        return tls

    def _serve(self):
        self._lsock.settimeout(self.timeout)
        try:
            sock, _ = self._lsock.accept()
        except OSError as e:
            self.record['error'] = f'accept: {e}'
            return
        finally:
            self._lsock.close()
        sock.settimeout(self.timeout)
        conn = _Conn(sock, self.record)
        try:
            getattr(self, '_mode_' + self.mode.replace('-', '_'))(conn, sock)
            # Drain until the client closes, recording what it still sends.
            while conn.recv():
                pass
            self.record['closed_by_client'] = True
        except EOFError:
            self.record['closed_by_client'] = True
        except (ConnectionResetError, BrokenPipeError):
            self.record['closed_by_client'] = True
        except socket.timeout:
            self.record['error'] = 'timeout waiting for the client'
        except ssl.SSLError as e:
            self.record['events'].append(f'ssl: {e}')
            self.record['closed_by_client'] = True
        except Exception as e:  # noqa: BLE001 - recorded for the test to show
            self.record['error'] = repr(e)
        finally:
            try:
                conn.sock.close()
            except OSError:
                pass

    def _commands(self, conn, caps, on):
        """Reads commands; `on(tag, verb, line)` returns True when it handled one."""
        while True:
            line = conn.line()
            parts = line.split(b' ', 2)
            tag = parts[0]
            verb = parts[1].upper() if len(parts) > 1 else b''
            if on(tag, verb, line):
                continue
            if verb == b'CAPABILITY':
                conn.send(b'* CAPABILITY ' + caps + CRLF + tag + b' OK done' + CRLF)
            elif verb == b'LOGOUT':
                conn.send(b'* BYE bye' + CRLF + tag + b' OK bye' + CRLF)
                return
            else:
                conn.send(tag + b' BAD unexpected' + CRLF)

    # -- scenarios -----------------------------------------------------------------------
    def _mode_starttls_inject(self, conn, sock):
        caps = b'IMAP4rev1 STARTTLS LOGINDISABLED'
        conn.send(b'* OK fake ready' + CRLF)

        def on(tag, verb, line):
            if verb == b'STARTTLS':
                conn.send(tag + b' OK Begin TLS' + CRLF + b'* injected' + CRLF)
                # An honest client now starts TLS or hangs up; try the handshake so that a
                # client that ignores the injection is caught completing it.
                try:
                    self._start_tls(conn, sock)
                except EOFError:
                    pass
                raise EOFError
            return False
        self._commands(conn, caps, on)

    def _mode_no_starttls(self, conn, sock):
        conn.send(b'* OK fake ready' + CRLF)
        self._commands(conn, b'IMAP4rev1 AUTH=PLAIN',
                       lambda tag, verb, line: self._auth(conn, tag, verb, line))

    def _mode_preauth(self, conn, sock):
        conn.send(b'* PREAUTH [CAPABILITY IMAP4rev1 STARTTLS] logged in already' + CRLF)
        self._commands(conn, b'IMAP4rev1 STARTTLS', lambda *a: False)

    def _auth(self, conn, tag, verb, line):
        """Accepts LOGIN and AUTHENTICATE PLAIN (with a continuation) from anyone."""
        if verb == b'LOGIN':
            conn.send(tag + b' OK logged in' + CRLF)
            return True
        if verb == b'AUTHENTICATE':
            if len(line.split(b' ')) == 3:  # no initial response: ask for it
                conn.send(b'+ ' + CRLF)
                conn.line()
            conn.send(tag + b' OK logged in' + CRLF)
            return True
        return False

    def _mode_tls(self, conn, sock):
        self._start_tls(conn, sock)
        conn.send(b'* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] fake ready' + CRLF)
        self._commands(conn, b'IMAP4rev1 AUTH=PLAIN',
                       lambda tag, verb, line: self._auth(conn, tag, verb, line))

    def _mode_starttls(self, conn, sock):
        conn.send(b'* OK fake ready' + CRLF)

        def on(tag, verb, line):
            if verb == b'STARTTLS' and not self.record['tls_done']:
                conn.send(tag + b' OK Begin TLS' + CRLF)
                self._start_tls(conn, sock)
                return True
            return self._auth(conn, tag, verb, line)
        self._commands(conn, b'IMAP4rev1 STARTTLS AUTH=PLAIN', on)

    def _mode_silent(self, conn, sock):
        while conn.recv():
            pass
        raise EOFError

    def _login_ok(self, conn, tag, verb):
        if verb in (b'LOGIN', b'AUTHENTICATE'):
            conn.send(tag + b' OK logged in' + CRLF)
            return True
        return False

    def _stream_literal(self, conn, total):
        chunk = (b'x' * 1023 + b'\n') * 64  # 64 KiB, no braces
        sent = 0
        while sent < total:
            n = min(len(chunk), total - sent)
            conn.send(chunk[:n])
            sent += n
            self.record['literal_sent'] = sent
        return sent

    def _mode_literal(self, conn, sock):
        conn.send(b'* OK fake ready' + CRLF)

        def on(tag, verb, line):
            if self._login_ok(conn, tag, verb):
                return True
            if verb == b'CAPABILITY':
                size = int(self.literal_size)
                send = size if self.literal_send is None else min(size, self.literal_send)
                conn.send(b'* CAPABILITY IMAP4rev1' + CRLF)
                announce = b'* 1 FETCH (BODY[] {' + self.literal_size.encode() + b'}' + CRLF
                if self.split:  # one byte per TCP segment: the lexer must keep state
                    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    for i in range(len(announce)):
                        conn.send(announce[i:i + 1])
                        time.sleep(0.01)
                else:
                    conn.send(announce)
                self._stream_literal(conn, send)
                if send == size:
                    conn.send(b')' + CRLF + tag + b' OK done' + CRLF)
                    return True
                raise EOFError  # announced more than we send: hang up after it
            return False
        self._commands(conn, b'IMAP4rev1', on)

    def _mode_bye(self, conn, sock):
        conn.send(b'* BYE too busy' + CRLF)
        raise EOFError

    def _mode_benign(self, conn, sock):
        """Huge-looking sizes where they are not literal announcements: in a quoted
        string, inside literal content, and split across lines. All must pass."""
        conn.send(b'* OK fake ready' + CRLF)
        body = (b'Subject: {99999999999}\r\n\r\nsee {4000000000}\r\nand {' +
                b'9' * 30 + b'}\r\n"unbalanced {5000000000}\r\n')

        def on(tag, verb, line):
            if self._login_ok(conn, tag, verb):
                return True
            if verb == b'CAPABILITY':
                conn.send(b'* OK [ALERT] "quoted {99999999999}" is text' + CRLF +
                          b'* 1 FETCH (BODY[] {' + str(len(body)).encode() + b'}' + CRLF +
                          body + b')' + CRLF +
                          b'* CAPABILITY IMAP4rev1 X-BENIGN' + CRLF + tag + b' OK done' + CRLF)
                self.record['literal_sent'] = len(body)
                return True
            return False
        self._commands(conn, b'IMAP4rev1', on)

    def _mode_literal_desync(self, conn, sock):
        conn.send(b'* OK fake ready' + CRLF)

        def on(tag, verb, line):
            if verb == b'LOGIN':
                hidden = b'* 1 FETCH (BODY[] {' + self.literal_size.encode() + b'}' + CRLF
                conn.send(b'* OK {' + str(len(hidden)).encode() + b'}' + CRLF + hidden)
                self._stream_literal(conn, self.literal_send or (64 << 20))
                raise EOFError
            return False
        self._commands(conn, b'IMAP4rev1', on)

    def _mode_long_line(self, conn, sock):
        conn.send(b'* OK fake ready' + CRLF)

        def on(tag, verb, line):
            if verb == b'LOGIN':
                conn.send(b'* OK ')
                chunk = b'y' * 65536
                sent = 0
                while sent < self.line_bytes:
                    conn.send(chunk)
                    sent += len(chunk)
                    self.record['literal_sent'] = sent
                conn.send(CRLF + tag + b' OK logged in' + CRLF)
                return True
            return False
        self._commands(conn, b'IMAP4rev1', on)


if __name__ == '__main__':
    import argparse
    import json
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('mode')
    ap.add_argument('--cert')
    ap.add_argument('--key')
    ap.add_argument('--literal-size', default='2000000000')
    a = ap.parse_args()
    f = FakeImap(a.mode, a.cert, a.key, literal_size=a.literal_size, timeout=300)
    print(f'listening on 127.0.0.1:{f.port}', flush=True)
    rec = f.wait(600)
    rec['received'] = rec['received'][:4096].decode('latin-1')
    print(json.dumps(rec, indent=1))
