# SPDX-License-Identifier: MIT
"""Self-tests of the acstest harness against the real parts: Dovecot, openssl, dbus, FUSE."""

import imaplib
import json
import os
import socket
import ssl
import subprocess
import time

import pytest

from acstest import fusecheck, imapcheck, measure, mutf7, paths, procs
from acstest.corpus import KINDS, Corpus
from acstest.dbus import Bus
from acstest.dovecot import Dovecot

REQUIRED_CAPS = ('CONDSTORE', 'QRESYNC', 'IDLE', 'MOVE', 'UIDPLUS', 'SPECIAL-USE', 'NOTIFY',
                 'LIST-STATUS')


def _caps(client):
    typ, data = client.capability()
    assert typ == 'OK'
    return set(data[0].decode().upper().split())


def _compare(corpus, state, bodies=True):
    """Asserts that the server state equals the corpus, message by message."""
    diff = imapcheck.diff_corpus(corpus, state, bodies)
    assert diff == [], diff


# -- Dovecot, TLS and logins -----------------------------------------------------------

def test_dovecot_starts_fast(tmp_path):
    t = time.monotonic()
    dv = Dovecot(tmp_path / 'dv')
    elapsed = time.monotonic() - t
    try:
        assert dv.running
        assert paths.port_open(dv.imap_port) and paths.port_open(dv.imaps_port)
        assert elapsed < 2.0, f'Dovecot took {elapsed:.2f}s to start'
    finally:
        dv.close()


def test_tls_login_verifies_with_ca(dovecot):
    c = dovecot.client('user1')
    try:
        assert c.state == 'AUTH'
        cert = c.sock.getpeercert()
        assert ('DNS', 'localhost') in cert['subjectAltName']
    finally:
        c.logout()


def test_tls_fails_without_ca(dovecot):
    ctx = ssl.create_default_context()  # system CAs only: our test CA is unknown
    with pytest.raises(ssl.SSLCertVerificationError):
        imaplib.IMAP4_SSL(dovecot.host, dovecot.imaps_port, ssl_context=ctx, timeout=10)


def test_starttls_port(dovecot):
    c = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=10)
    try:
        assert 'STARTTLS' in c.capabilities
        c.starttls(ssl_context=dovecot.ssl_context())
        c.login('user1', 'pass1')
        assert c.state == 'AUTH'
        assert isinstance(c.sock, ssl.SSLSocket)
    finally:
        c.logout()
    assert dovecot.url('starttls') == f'imap://localhost:{dovecot.imap_port}'
    assert dovecot.url() == f'imaps://localhost:{dovecot.imaps_port}'


def test_capabilities_after_login(dovecot):
    c = dovecot.client('user1')
    try:
        caps = _caps(c)
    finally:
        c.logout()
    missing = [x for x in REQUIRED_CAPS if x not in caps]
    assert not missing, f'missing capabilities {missing} in {sorted(caps)}'


def test_each_user_logs_in_and_wrong_password_fails(dovecot):
    for user, password in dovecot.users.items():
        c = dovecot.client(user)
        c.logout()
        with open(dovecot.password_file(user)) as f:
            assert f.read() == password
        assert os.stat(dovecot.password_file(user)).st_mode & 0o777 == 0o600
    with pytest.raises(imaplib.IMAP4.error, match='AUTHENTICATIONFAILED|Authentication failed'):
        dovecot.client('user1', password='wrong')
    with pytest.raises(imaplib.IMAP4.error):
        dovecot.client('user1', password='pass2')


def test_special_use_folders(dovecot):
    c = dovecot.client('user2')
    try:
        folders = imapcheck.list_folders(c)
    finally:
        c.logout()
    for name in ('Drafts', 'Sent', 'Trash', 'Junk', 'Archive'):
        assert '\\' + name.lower() in folders[name], folders


def test_capability_override_removes_qresync(tmp_path):
    caps = 'IMAP4rev1 LITERAL+ ENABLE IDLE UIDPLUS MOVE CONDSTORE SPECIAL-USE'
    with Dovecot(tmp_path / 'dv', capabilities=caps) as dv:
        c = dv.client('user1')
        try:
            got = _caps(c)
        finally:
            c.logout()
        dv.close()
    assert 'QRESYNC' not in got
    assert {'IDLE', 'CONDSTORE', 'UIDPLUS'} <= got


def test_restart_keeps_ports_and_data(dovecot):
    ports = (dovecot.imap_port, dovecot.imaps_port)
    c = dovecot.client('user3')
    msg = b'From: a@example.org\r\nSubject: survives restart\r\n\r\nbody\r\n'
    assert c.append('INBOX', r'(\Flagged)', None, msg)[0] == 'OK'
    c.logout()
    old = set(dovecot.pids())
    dovecot.restart()
    assert not [p for p in old if procs.alive(p)], 'old processes survived restart'
    assert (dovecot.imap_port, dovecot.imaps_port) == ports
    c = dovecot.client('user3')
    try:
        state = imapcheck.server_state(c)
    finally:
        c.logout()
    assert [(u, f, b) for u, f, _, b in state['INBOX']] == [(1, frozenset({r'\Flagged'}), msg)]


def test_kill_and_start_again(dovecot):
    c = dovecot.client('user1')
    pids = dovecot.pids()
    dovecot.kill()
    assert not [p for p in pids if procs.alive(p)]
    assert not dovecot.running
    with pytest.raises((OSError, imaplib.IMAP4.abort)):
        c.noop()
    ports = (dovecot.imap_port, dovecot.imaps_port)
    dovecot.start()
    assert (dovecot.imap_port, dovecot.imaps_port) == ports
    dovecot.client('user1').logout()


def test_taken_port_on_first_start_moves(tmp_path):
    dv = Dovecot(tmp_path / 'dv', start=False)
    with socket.socket() as s:
        s.bind(('127.0.0.1', dv.imaps_port))
        s.listen()
        taken = dv.imaps_port
        dv.start()
        try:
            assert dv.running and dv.imaps_port != taken
            dv.client('user2').logout()
        finally:
            dv.close()


# -- corpus ----------------------------------------------------------------------------

def test_corpus_is_deterministic_and_covers_kinds():
    a, b, other = Corpus(7, 60), Corpus(7, 60), Corpus(8, 60)
    assert [(m.folder, m.data, m.flags, m.internaldate, m.message_id) for m in a.messages] == \
           [(m.folder, m.data, m.flags, m.internaldate, m.message_id) for m in b.messages]
    assert [m.data for m in a.messages] != [m.data for m in other.messages]
    assert {m.kind for m in a.messages} == set(KINDS)
    for m in a.messages:
        assert b'\n' not in m.data.replace(b'\r\n', b''), f'{m}: bare LF'
    folders = a.folders()
    for f in ('INBOX', 'Entwürfe', 'Archive/2024', 'A & B', 'Ünïcödé/日本',
              'Work/Projects/Big Project'):
        assert f in folders
        assert any(m.folder == f for m in a.messages)
    assert all('.' not in f for f in folders)
    kw = {f for m in a.messages for f in m.flags if not f.startswith('\\')}
    assert kw, 'no keywords in corpus'
    empty = [m for m in a.messages if m.kind == 'empty_body']
    assert empty and all(m.data.endswith(b'\r\n\r\n') for m in empty)
    assert any(b'=?UTF-8?B?' in m.data for m in a.messages)
    assert any(max(len(x) for x in m.data.split(b'\r\n')) > 998 for m in a.messages)
    assert any(b'Content-Transfer-Encoding: base64' in m.data for m in a.messages)
    assert any(b'Content-Transfer-Encoding: 8bit' in m.data and
               any(c > 127 for c in m.data) for m in a.messages)


def _isolated(code, timeout=300):
    """Runs code in a fresh Debian python with the harness importable; returns the JSON it
    prints last. Big corpora run there so the pytest process keeps a small RSS: children
    forked from it inherit its RSS as their ru_maxrss, which other tests measure."""
    env = dict(os.environ, PYTHONPATH=str(paths.REPO / 'tests' / 'harness'))
    r = subprocess.run(['/usr/bin/python3', '-c', code], env=env, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_corpus_big_scale():
    res = _isolated(
        'import json, time\n'
        'from acstest.corpus import Corpus, BIG_SIZE\n'
        't = time.monotonic()\n'
        'c = Corpus(1, 10000, avg_size=20000)\n'
        'gen = time.monotonic() - t\n'
        'big = Corpus(1, 3, big=True)\n'
        'print(json.dumps({"n": len(c.messages), "bytes": c.total_bytes(), "gen": gen,\n'
        '    "folders": len({m.folder for m in c.messages}), "big_n": len(big.messages),\n'
        '    "big_last": len(big.messages[-1].data), "BIG": BIG_SIZE}))\n')
    assert res['n'] == 10000
    assert res['bytes'] >= 200_000_000, res
    assert res['folders'] >= 10, res
    assert res['gen'] < 20, f'generating 10,000 messages took {res["gen"]:.1f}s'
    assert res['big_n'] == 4 and res['big_last'] >= res['BIG'], res


def test_diff_corpus_detects_differences():
    corpus = Corpus(5, 30)
    good = {f: [(m.uid, frozenset(m.flags), m.internaldate, m.data) for m in ms]
            for f, ms in corpus.by_folder().items()}
    assert imapcheck.diff_corpus(corpus, good) == []
    m = corpus.messages[0]
    for change, word in (
            (lambda st: st[m.folder].__setitem__(0, (m.uid, frozenset({r'\Deleted'}), m.internaldate, m.data)), 'flags'),
            (lambda st: st[m.folder].__setitem__(0, (m.uid, frozenset(m.flags), m.internaldate + 1, m.data)), 'internaldate'),
            (lambda st: st[m.folder].__setitem__(0, (m.uid, frozenset(m.flags), m.internaldate, m.data[:-1])), 'body'),
            (lambda st: st[m.folder].__setitem__(0, (m.uid + 7, frozenset(m.flags), m.internaldate, m.data)), 'uid'),
            (lambda st: st[m.folder].pop(), 'messages'),
            (lambda st: st.pop('Lists'), 'only in corpus')):
        st = {f: list(v) for f, v in good.items()}
        change(st)
        diff = imapcheck.diff_corpus(corpus, st)
        assert diff and word in diff[0], (word, diff)


def test_mutf7_and_maildir_names():
    assert mutf7.encode('Entwürfe') == 'Entw&APw-rfe'
    assert mutf7.encode('A & B') == 'A &- B'
    assert mutf7.encode('~peter/mail/台北/日本語') == '~peter/mail/&U,BTFw-/&ZeVnLIqe-'
    for s in ('Ünïcödé', '日本', '&&', 'x😀y', 'plain'):
        assert mutf7.decode(mutf7.encode(s)) == s
    assert mutf7.maildirpp_dir('Archive/2024') == '.Archive.2024'
    assert mutf7.maildirpp_dir('INBOX') == ''
    with pytest.raises(ValueError):
        mutf7.maildirpp_dir('a.b')


def test_seeded_corpus_equals_imap(harness_tmp):
    # In a child process: the 30 MB message would leave the pytest process big.
    res = _isolated(
        'import json, os\n'
        'from acstest.corpus import Corpus, BIG_SIZE\n'
        'from acstest.dovecot import Dovecot\n'
        'from acstest import imapcheck, mutf7\n'
        f'dv = Dovecot({str(harness_tmp / "dv")!r})\n'
        'corpus = Corpus(11, 300, big=True)\n'
        'root = corpus.seed_maildir(dv, "user1")\n'
        'c = dv.client("user1")\n'
        'state = imapcheck.server_state(c)\n'
        'typ, raw = c.list(\'""\', "*")\n'
        'c.logout()\n'
        'dv.close()\n'
        'raw = b"\\n".join(x if isinstance(x, bytes) else x[0] for x in raw)\n'
        'print(json.dumps({\n'
        '  "diff": imapcheck.diff_corpus(corpus, state),\n'
        '  "names_missing": sorted(f for f in corpus.folders()\n'
        '                          if mutf7.imap_name(f).encode() not in raw),\n'
        '  "entw_dir": os.path.isdir(os.path.join(root, ".Entw&APw-rfe", "cur")),\n'
        '  "s_eq": [f for _, _, fs in os.walk(root) for f in fs if ",S=" in f],\n'
        '  "big_served": max(len(b) for ms in state.values() for _, _, _, b in ms),\n'
        '  "BIG": BIG_SIZE, "kinds": sorted({m.kind for m in corpus.messages})}))\n')
    assert res['diff'] == [], res['diff']
    assert res['names_missing'] == []
    assert res['entw_dir'] and res['s_eq'] == []
    assert res['big_served'] >= res['BIG']
    assert 'big' in res['kinds'] and len(res['kinds']) == len(KINDS) + 1


def test_seed_10k_corpus(harness_tmp):
    res = _isolated(
        'import json, time\n'
        'from acstest.corpus import Corpus\n'
        'from acstest.dovecot import Dovecot\n'
        'from acstest import imapcheck\n'
        f'dv = Dovecot({str(harness_tmp / "dv")!r})\n'
        'corpus = Corpus(3, 10000, avg_size=20000)\n'
        't = time.monotonic()\n'
        'corpus.seed_maildir(dv, "user2")\n'
        'seed = time.monotonic() - t\n'
        'c = dv.client("user2")\n'
        'state = imapcheck.server_state(c, bodies=False)\n'
        'c.logout()\n'
        'dv.close()\n'
        'exp = {f: [[m.uid, sorted(m.flags), m.internaldate] for m in ms]\n'
        '       for f, ms in corpus.by_folder().items()}\n'
        'got = {f: [[u, sorted(fl), d] for u, fl, d, _ in ms] for f, ms in state.items()}\n'
        'bad = [f for f in set(exp) | set(got) if exp.get(f) != got.get(f)]\n'
        'print(json.dumps({"seed": seed, "bad": sorted(bad), "n": sum(map(len, got.values())),\n'
        '                  "bytes": corpus.total_bytes()}))\n')
    assert res['bad'] == [], f'folders differing from the corpus: {res["bad"]}'
    assert res['n'] == 10000 and res['bytes'] >= 200_000_000, res
    assert res['seed'] < 60, f'seeding took {res["seed"]:.1f}s'


def test_append_equals_corpus(dovecot):
    corpus = Corpus(12, 40)
    c = dovecot.client('user2')
    try:
        assert corpus.append(c) == 40
        state = imapcheck.server_state(c)
    finally:
        c.logout()
    _compare(corpus, state)


# -- PKI -------------------------------------------------------------------------------

def _openssl_verify(ca, cert, host=None):
    args = ['openssl', 'verify', '-CAfile', ca]
    if host:
        args += ['-verify_hostname', host]
    r = subprocess.run(args + [cert], capture_output=True, text=True)
    return r.returncode, r.stdout + r.stderr


def test_pki_certificates_are_what_they_claim(pki):
    good, _ = pki.server_cert('good')
    expired, _ = pki.server_cert('old', expired=True)
    selfs, _ = pki.self_signed('selfie', hosts=('localhost',))
    wrong, _ = pki.server_cert('wrong', hosts=('wrong.example',))
    rc, out = _openssl_verify(pki.ca_cert, good, 'localhost')
    assert rc == 0, out
    rc, out = _openssl_verify(pki.ca_cert, expired)
    assert rc != 0 and 'certificate has expired' in out, out
    rc, out = _openssl_verify(pki.ca_cert, selfs)
    assert rc != 0 and 'self-signed certificate' in out, out
    rc, out = _openssl_verify(pki.ca_cert, wrong, 'localhost')
    assert rc != 0 and 'hostname mismatch' in out, out
    rc, out = _openssl_verify(pki.ca_cert, wrong, 'wrong.example')
    assert rc == 0, out


@pytest.mark.parametrize('kind,reason', [('expired', 'certificate has expired'),
                                         ('self_signed', 'self-signed certificate'),
                                         ('wrong_host', "Hostname mismatch")])
def test_dovecot_serves_bad_certificates(tmp_path, pki, kind, reason):
    if kind == 'expired':
        cert = pki.server_cert('old', expired=True)
    elif kind == 'self_signed':
        cert = pki.self_signed('selfie')
    else:
        cert = pki.server_cert('wrong', hosts=('wrong.example',))
    with Dovecot(tmp_path / 'dv', cert=cert) as dv:
        ctx = ssl.create_default_context(cafile=pki.ca_cert)
        with pytest.raises(ssl.SSLCertVerificationError, match=reason):
            imaplib.IMAP4_SSL('localhost', dv.imaps_port, ssl_context=ctx, timeout=10)
        dv.close()


# -- D-Bus, FUSE, cleanup --------------------------------------------------------------

def test_private_dbus_answers_listnames(bus):
    r = subprocess.run(['dbus-send', f'--bus={bus.address}', '--print-reply',
                        '--dest=org.freedesktop.DBus', '/org/freedesktop/DBus',
                        'org.freedesktop.DBus.ListNames'], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 0, r.stderr
    assert 'string "org.freedesktop.DBus"' in r.stdout
    pid = bus.pid
    bus.stop()
    assert not procs.alive(pid)
    assert not os.path.exists(bus.socket)


def test_fuse_is_usable(harness_tmp):
    fusecheck.require_fuse()
    assert fusecheck.selftest(str(harness_tmp)) == fusecheck.HELLO_TEXT
    assert not fusecheck.is_mounted(str(harness_tmp / 'mnt'))
    fusecheck.unmount(str(harness_tmp / 'mnt'))  # not mounted: no error


def test_nothing_left_after_stop(tmp_path, harness_tmp):
    dv = Dovecot(tmp_path / 'dv')
    bus = Bus(harness_tmp / 'bus')
    c = dv.client('user1')  # makes imap and auth processes exist
    pids = set(dv.pids()) | {bus.pid}
    assert len(pids) >= 5, pids
    c.logout()
    dv.stop()
    bus.stop()
    assert not [p for p in pids if procs.alive(p)]
    for port in (dv.imap_port, dv.imaps_port):
        with pytest.raises(OSError):
            socket.create_connection(('127.0.0.1', port), timeout=1).close()
    dv.close()


def test_binary_lookup_fails_clearly():
    with pytest.raises(FileNotFoundError, match='not found in build directory'):
        paths.binary('no-such-program-xyz')


# -- the conftest's own guards: time limit and sanitizer reports -------------------------

def _inner_pytest(tmp_path, test_source, env_extra=None):
    """Runs pytest on one test file next to a copy of our conftest; returns the result."""
    here = os.path.dirname(os.path.abspath(__file__))
    d = tmp_path / 'inner'
    d.mkdir()
    (d / 'conftest.py').write_bytes(open(os.path.join(here, 'conftest.py'), 'rb').read())
    (d / 'test_inner.py').write_text(test_source)
    env = dict(os.environ, PYTHONPATH=str(paths.REPO / 'tests' / 'harness'))
    env.pop('ACS_SANITIZER_LOG_DIR', None)
    env.update(env_extra or {})
    return subprocess.run(['/usr/bin/python3', '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
                           str(d)], cwd=d, env=env, capture_output=True, text=True, timeout=120)


def test_time_limit_fails_a_hanging_test(tmp_path):
    t = time.monotonic()
    r = _inner_pytest(tmp_path, 'import time, pytest\n\n'
                                '@pytest.mark.timeout(1)\n'
                                'def test_hangs():\n    time.sleep(30)\n')
    elapsed = time.monotonic() - t
    assert r.returncode == 1, r.stdout + r.stderr
    assert 'exceeded its time limit of 1s' in r.stdout, r.stdout
    assert elapsed < 20


def _leaky_program(tmp_path):
    src = tmp_path / 'leak.c'
    src.write_text('#include <stdlib.h>\n#include <string.h>\n'
                   'char *leaky(void) { char *p = malloc(64); memset(p, 1, 64); return p; }\n'
                   'int main(void) { char *p = leaky(); p[1] = 2; p = 0; return 0; }\n')
    exe = tmp_path / 'leak'
    cc = subprocess.run(['cc', '-g', '-O0', '-fsanitize=address', '-o', str(exe), str(src)],
                        capture_output=True, text=True)
    assert cc.returncode == 0, cc.stderr
    return exe


def test_sanitizer_report_fails_the_test(tmp_path):
    exe = _leaky_program(tmp_path)
    san = tmp_path / 'san'
    r = _inner_pytest(tmp_path, 'import subprocess\n\n'
                                'def test_runs_leaky_program():\n'
                                f'    subprocess.run([{str(exe)!r}])\n',
                      {'ACS_SANITIZER_LOG_DIR': str(san), 'ASAN_OPTIONS': 'detect_leaks=1'})
    assert r.returncode == 1, r.stdout + r.stderr
    assert 'sanitizer report(s)' in r.stdout and 'LeakSanitizer' in r.stdout, r.stdout


def test_suppressed_leak_is_no_report(tmp_path):
    exe = _leaky_program(tmp_path)
    supp = tmp_path / 'lsan.supp'
    supp.write_text('leak:leaky\n')
    san = tmp_path / 'san'
    r = _inner_pytest(tmp_path, 'import subprocess\n\n'
                                'def test_runs_leaky_program():\n'
                                f'    assert subprocess.run([{str(exe)!r}]).returncode == 0\n',
                      {'ACS_SANITIZER_LOG_DIR': str(san), 'ASAN_OPTIONS': 'detect_leaks=1',
                       'LSAN_OPTIONS': f'suppressions={supp}:print_suppressions=1'})
    assert r.returncode == 0, r.stdout + r.stderr
    logs = [p.read_text() for p in san.iterdir()]
    assert logs and all('Suppressions used' in t for t in logs), logs


def test_measure_reports_the_programs_own_peak_rss():
    ballast = b'x' * 200_000_000  # makes the pytest process big for this test
    try:
        p = subprocess.Popen(['/bin/true'])
        _, _, ru = os.wait4(p.pid, 0)
        assert ru.ru_maxrss > 150_000, 'the pitfall measure.run avoids did not show up'
        small = measure.run(['/bin/true'])
        assert small.returncode == 0 and small.maxrss_kb < 20_000, small
    finally:
        del ballast
    big = measure.run(['/usr/bin/python3', '-c', 'x = b"y" * 100_000_000'])
    assert big.returncode == 0 and 100_000 < big.maxrss_kb < 200_000, big
    assert measure.run(['/bin/sh', '-c', 'exit 3']).returncode == 3
    assert measure.run(['/bin/sh', '-c', 'kill -9 $$']).returncode == -9
