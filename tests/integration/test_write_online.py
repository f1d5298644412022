# SPDX-License-Identifier: MIT
"""Issue 5, online: each kind of write in the mounted tree reaches Dovecot (checked by an
independent IMAP client), with the latency from the system call's return to the server
state (p50/p90 printed per kind; p50 must be <= 200 ms)."""

import errno
import os
import re
import time

import pytest

from acstest import imapcheck, mutf7
from acstest.corpus import Corpus
from acstest.dovecot import Dovecot
from acstest.instance import LETTER_FLAGS, Instance, diff_states, to_crlf

USER = 'user1'
SAMPLES = 24           # >= 20 per kind (the brief)
P50_LIMIT = 0.200      # seconds: the target, syscall return -> server state
SAMPLE_TIMEOUT = 15.0  # one write not on the server after this is a failure
POLL = 0.005           # the independent client polls every 5 ms (plus its round trip)
FOLDERS = ('INBOX', 'Work', 'Work/Projects', 'Archive/2024', 'Entwürfe')
SEED = 5005
COUNT = 130

RESULTS = {}  # kind -> list of seconds, printed at the end of the module


@pytest.fixture(scope='module', autouse=True)
def latency_report(request):
    yield
    if not RESULTS:
        return
    lines = ['', 'write latency, syscall return -> visible to an independent IMAP client '
             f'(poll {POLL * 1000:.0f} ms):']
    for kind, xs in RESULTS.items():
        lines.append(f'  {kind:<22} n={len(xs):3d}  p50={pctl(xs, 50) * 1000:7.1f} ms  '
                     f'p90={pctl(xs, 90) * 1000:7.1f} ms  max={max(xs) * 1000:7.1f} ms')
    capman = request.config.pluginmanager.get_plugin('capturemanager')
    if capman is not None:
        with capman.global_and_fixture_disabled():  # shown even without -s
            print('\n'.join(lines))
    else:
        print('\n'.join(lines))


def pctl(xs, p):
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0]
    k = (len(xs) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def record(kind, xs):
    RESULTS[kind] = list(xs)
    p50, p90 = pctl(xs, 50), pctl(xs, 90)
    print(f'{kind}: n={len(xs)} p50={p50 * 1000:.1f} ms p90={p90 * 1000:.1f} ms max={max(xs) * 1000:.1f} ms')
    assert len(xs) >= 20
    assert p50 <= P50_LIMIT, f'{kind}: p50 {p50 * 1000:.1f} ms > {P50_LIMIT * 1000:.0f} ms (p90 {p90 * 1000:.1f} ms)'


def quote(name):
    return '"' + name.replace('\\', '\\\\').replace('"', '\\"') + '"'


class Server:
    """An independent, logged-in imaplib client that polls the server's state."""

    def __init__(self, dovecot, user):
        self.dovecot = dovecot
        self.user = user
        self.c = dovecot.client(user)
        self.selected = None

    def close(self):
        try:
            self.c.logout()
        except Exception:  # noqa: BLE001
            pass

    def _select(self, folder):
        if self.selected != folder:
            typ, data = self.c.select(quote(mutf7.imap_name(folder)), readonly=True)
            if typ != 'OK':
                raise AssertionError(f'EXAMINE {folder!r}: {data}')
            self.selected = folder
        else:
            typ, data = self.c.noop()  # lets Dovecot report other sessions' changes
            assert typ == 'OK', data

    def flags(self, folder, uid):
        """The message's flags (without \\Recent), or None when the uid is gone."""
        self._select(folder)
        typ, data = self.c.uid('FETCH', str(uid), '(FLAGS)')
        assert typ == 'OK', data
        for it in data:
            if isinstance(it, bytes) and b'FLAGS' in it:
                m = re.search(rb'FLAGS \(([^)]*)\)', it)
                return frozenset(f.decode() for f in m.group(1).split() if f.lower() != b'\\recent')
        return None

    def uids_by_mid(self, folder, mid):
        """UIDs of messages whose Message-ID header contains mid."""
        self._select(folder)
        typ, data = self.c.uid('SEARCH', 'HEADER', 'Message-ID', f'"{mid}"')
        assert typ == 'OK', data
        return [int(x) for x in (data[0] or b'').split()]

    def fetch(self, folder, uid):
        """(flags, internaldate, body) of one message."""
        self._select(folder)
        typ, data = self.c.uid('FETCH', str(uid), '(FLAGS INTERNALDATE BODY.PEEK[])')
        assert typ == 'OK', data
        meta, body = data[0]
        meta += b' ' + (data[1] if len(data) > 1 and isinstance(data[1], bytes) else b'')
        flags = frozenset(f.decode() for f in re.search(rb'FLAGS \(([^)]*)\)', meta).group(1).split()
                          if f.lower() != b'\\recent')
        idate = imapcheck.parse_internaldate(re.search(rb'INTERNALDATE "([^"]+)"', meta).group(1))
        return flags, idate, body

    def folders(self):
        return set(imapcheck.list_folders(self.c))


class Env:
    pass


@pytest.fixture
def env(harness_tmp):
    e = Env()
    e.dovecot = Dovecot(harness_tmp / 'dovecot')
    e.inst = None
    e.server = None
    try:
        e.corpus = Corpus(SEED, COUNT, folders=FOLDERS)
        e.corpus.seed_maildir(e.dovecot, USER)
        e.inst = Instance(e.dovecot, USER, harness_tmp / 'acs')
        e.inst.wait_quiescent(60)
        e.server = Server(e.dovecot, USER)
        yield e
        # every test ends converged: tree == server (bodies included), op log empty
        e.inst.wait_quiescent(60)
        d = diff_states(e.inst.server_state(), e.inst.tree_state())
        assert not d, 'tree and server differ after quiescence:\n' + '\n'.join(d)
        e.inst.stop(check=True)
    finally:
        if e.server:
            e.server.close()
        if e.inst:
            e.inst.stop()
        e.dovecot.close()


def wait_server(e, pred, what, t0):
    """Polls pred() until true; returns seconds since t0 (the syscall's return)."""
    deadline = t0 + SAMPLE_TIMEOUT
    while True:
        if pred():
            return time.monotonic() - t0
        if time.monotonic() > deadline:
            raise AssertionError(f'{what}: not on the server after {SAMPLE_TIMEOUT} s; ops left: '
                                 f'{e.inst.ops()[:5]}\n--- acs-syncd log:\n{e.inst.syncd_log_tail()}'
                                 f'\n--- acs-fs log:\n{e.inst.fs_log_tail(2000)}'
                                 f'\n--- Dovecot log:\n{e.dovecot.log_tail(15)}')
        time.sleep(POLL)


def uid_of(inst, folder, uniq):
    rows = inst._sql('SELECT m.uid FROM message m JOIN mailbox b ON b.id = m.mailbox_id '
                     "WHERE replace(b.name, char(b.delim), '/') = ? AND m.uniq = ?", (folder, uniq))
    assert rows and rows[0][0], f'{folder}/{uniq}: no uid in the cache'
    return rows[0][0]


def flags_of_letters(info, kw):
    return frozenset({LETTER_FLAGS[c] for c in info if c in LETTER_FLAGS} | {kw[c] for c in info if c in kw})


def with_info(path, letters):
    """The file's name with its info letters replaced (ASCII order, as acs builds them)."""
    base = path.name.split(':2,')[0]
    return f'{base}:2,{"".join(sorted(set(letters)))}'


def files(inst, folder, sub):
    out = [f for f in inst.tree_files(folder) if f[1] == sub]
    out.sort(key=lambda f: f[2])
    return out


def need(xs, n, what):
    assert len(xs) >= n, f'corpus has only {len(xs)} {what}, {n} needed (change SEED/COUNT)'
    return xs[:n]


# ---- flags ----

def test_flag_change_by_rename(env):
    """rename within cur/ toggling \\Flagged (set and clear) = STORE on the server."""
    inst, srv = env.inst, env.server
    kw = inst._keywords_by_letter()
    lat = []
    for path, sub, uniq, info in need(files(inst, 'INBOX', 'cur'), SAMPLES, 'INBOX/cur messages'):
        uid = uid_of(inst, 'INBOX', uniq)
        before = srv.flags('INBOX', uid)
        assert before == flags_of_letters(info, kw), f'{path.name}: tree and server disagree before'
        new_info = info.replace('F', '') if 'F' in info else info + 'F'
        new = path.with_name(with_info(path, new_info))
        os.rename(path, new)
        t0 = time.monotonic()
        assert new.exists() and not path.exists(), 'the rename is not visible in the tree at once'
        want = before ^ {'\\Flagged'}
        lat.append(wait_server(env, lambda: srv.flags('INBOX', uid) == want,
                               f'{path.name} -> {new.name}', t0))
    record('flags (rename in cur/)', lat)


def test_new_to_cur_marks_seen(env):
    """rename new/X -> cur/X:2,S = +FLAGS \\Seen (what a client does on reading)."""
    inst, srv = env.inst, env.server
    lat = []
    for path, sub, uniq, info in need(files(inst, 'INBOX', 'new'), SAMPLES, 'INBOX/new messages'):
        uid = uid_of(inst, 'INBOX', uniq)
        before = srv.flags('INBOX', uid)
        assert '\\Seen' not in before
        new = path.parent.parent / 'cur' / with_info(path, info + 'S')
        os.rename(path, new)
        t0 = time.monotonic()
        assert new.exists() and not path.exists(), 'the rename is not visible in the tree at once'
        lat.append(wait_server(env, lambda: srv.flags('INBOX', uid) == before | {'\\Seen'},
                               f'new/{path.name} -> cur/{new.name}', t0))
    record('new/ -> cur/ (seen)', lat)


def test_keyword_change_by_rename(env):
    """rename adding/removing a keyword letter = +FLAGS/-FLAGS keyword on the server."""
    inst, srv = env.inst, env.server
    kw = inst._keywords_by_letter()
    assert 'project-x' in kw.values(), f'corpus keywords missing from the cache: {kw}'
    letter = next(c for c, n in kw.items() if n == 'project-x')
    cands = files(inst, 'INBOX', 'cur') + files(inst, 'Work', 'cur') + files(inst, 'INBOX', 'new')
    lat = []
    for path, sub, uniq, info in need(cands, SAMPLES, 'messages'):
        folder = 'INBOX' if path.parent.parent == inst.folder_dir('INBOX') else 'Work'
        uid = uid_of(inst, folder, uniq)
        before = srv.flags(folder, uid)
        new_info = info.replace(letter, '') if letter in info else info + letter
        new = path.with_name(with_info(path, new_info))
        os.rename(path, new)
        t0 = time.monotonic()
        assert new.exists()
        want = before ^ {'project-x'}
        lat.append(wait_server(env, lambda: srv.flags(folder, uid) == want,
                               f'{folder}: {path.name} -> {new.name}', t0))
    record('keywords (rename)', lat)


# ---- expunge and move ----

def test_unlink_expunges(env):
    inst, srv = env.inst, env.server
    cands = files(inst, 'INBOX', 'cur') + files(inst, 'INBOX', 'new')
    lat = []
    for path, sub, uniq, info in need(cands, SAMPLES, 'INBOX messages'):
        uid = uid_of(inst, 'INBOX', uniq)
        assert srv.flags('INBOX', uid) is not None
        os.unlink(path)
        t0 = time.monotonic()
        assert not path.exists() and uniq not in {f[2] for f in inst.tree_files('INBOX')}
        lat.append(wait_server(env, lambda: srv.flags('INBOX', uid) is None, f'unlink {path.name}', t0))
    record('unlink (expunge)', lat)
    st = inst.server_state(bodies=False)
    assert len(st['INBOX']) == len(env.corpus.by_folder()['INBOX']) - SAMPLES


def mid_of(path):
    m = re.search(rb'^Message-ID:\s*<([^>]+)>', path.read_bytes(), re.M | re.I)
    assert m, f'{path}: no Message-ID'
    return m.group(1).decode()


def test_move_to_another_folder(env):
    """rename INBOX/{cur,new}/X -> Work/.../X = MOVE: gone from INBOX, in Work with its flags."""
    inst, srv = env.inst, env.server
    kw = inst._keywords_by_letter()
    cands = files(inst, 'INBOX', 'cur') + files(inst, 'INBOX', 'new')
    work_before = len(inst.server_state(bodies=False)['Work'])
    lat = []
    for i, (path, sub, uniq, info) in enumerate(need(cands, SAMPLES, 'INBOX messages')):
        target = 'Work' if i % 2 == 0 else 'Archive/2024'
        uid = uid_of(inst, 'INBOX', uniq)
        mid = mid_of(path)
        data = path.read_bytes()
        flags = srv.flags('INBOX', uid)
        assert flags == flags_of_letters(info, kw)
        new = inst.folder_dir(target) / sub / path.name
        os.rename(path, new)
        t0 = time.monotonic()
        assert new.exists() and not path.exists()

        def moved():
            if srv.flags('INBOX', uid) is not None:
                return False
            return len(srv.uids_by_mid(target, mid)) == 1
        lat.append(wait_server(env, moved, f'move {path.name} -> {target}', t0))
        (nuid,) = srv.uids_by_mid(target, mid)
        f2, _, body = srv.fetch(target, nuid)
        assert f2 == flags, f'{mid}: flags {sorted(flags)} became {sorted(f2)} in {target}'
        assert body == to_crlf(data)
    record('move (rename to folder)', lat)
    assert len(inst.server_state(bodies=False)['Work']) == work_before + SAMPLES // 2


# ---- append ----

def test_append_from_tmp(env):
    """A file written in tmp/ (mtime set) and renamed into new/ or cur/ with flags = APPEND
    with those flags and INTERNALDATE = the mtime."""
    inst, srv = env.inst, env.server
    lat = []
    pid = os.getpid()
    for i in range(SAMPLES):
        folder = ('INBOX', 'Work/Projects', 'Entwürfe')[i % 3]
        fdir = inst.folder_dir(folder)
        mid = f'w5-append-{pid}-{i}-{time.time_ns()}@acs.test'
        data = (f'From: writer@example.org\nTo: {USER}@example.org\nSubject: append {i} ü\n'
                f'Message-ID: <{mid}>\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n'
                f'Content-Transfer-Encoding: 8bit\n\nbody {i}: grüße\n' + 'line\n' * (i * 50)).encode()
        idate = 1_600_000_000 + i * 3607
        uniq = f'{int(time.time())}.M{i}P{pid}.testhost'
        tmp = fdir / 'tmp' / uniq
        with open(tmp, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.utime(tmp, (idate, idate))
        if i % 2:
            letters, dest = '', fdir / 'new' / uniq
        else:
            letters = ('S', 'FS', 'DS', 'RS')[(i // 2) % 4]
            dest = fdir / 'cur' / f'{uniq}:2,{letters}'
        os.rename(tmp, dest)
        t0 = time.monotonic()
        listed = [f for f in inst.tree_files(folder) if f[2] == uniq]
        assert len(listed) == 1, f'appended file not in the tree at once: {listed}'
        assert listed[0][1] == dest.parent.name and listed[0][0].read_bytes() == data
        lat.append(wait_server(env, lambda: len(srv.uids_by_mid(folder, mid)) == 1,
                               f'append {dest}', t0))
        (uid,) = srv.uids_by_mid(folder, mid)
        flags, got_idate, body = srv.fetch(folder, uid)
        assert flags == frozenset(LETTER_FLAGS[c] for c in letters), f'{dest.name}: server flags {flags}'
        assert got_idate == idate, f'{dest.name}: INTERNALDATE {got_idate}, mtime was {idate}'
        assert body == to_crlf(data)
    record('append (tmp/ + rename)', lat)


# ---- folders ----

def test_folder_create_rename_delete(env):
    inst, srv = env.inst, env.server
    names = [f'Neu {i} ü&' for i in range(SAMPLES)]
    lat = {'mkdir': [], 'rename folder': [], 'rmdir': []}
    for n in names:
        d = inst.folder_dir(n)
        os.mkdir(d)
        t0 = time.monotonic()
        assert d.is_dir()
        lat['mkdir'].append(wait_server(env, lambda: n in srv.folders(), f'mkdir {n!r}', t0))
    for n in names:
        to = n.replace('Neu', 'Umbenannt')
        os.rename(inst.folder_dir(n), inst.folder_dir(to))
        t0 = time.monotonic()
        assert inst.folder_dir(to).is_dir() and not inst.folder_dir(n).exists()
        lat['rename folder'].append(wait_server(
            env, lambda: (lambda fs: to in fs and n not in fs)(srv.folders()), f'rename {n!r} -> {to!r}', t0))
    for n in names:
        to = n.replace('Neu', 'Umbenannt')
        os.rmdir(inst.folder_dir(to))
        t0 = time.monotonic()
        assert not inst.folder_dir(to).exists()
        lat['rmdir'].append(wait_server(env, lambda: to not in srv.folders(), f'rmdir {to!r}', t0))
    for k, xs in lat.items():
        record(k, xs)


def test_folder_rename_with_mail_and_children_and_rmdir_nonempty(env):
    """Renaming a folder takes its mail and its children along; rmdir of a folder that holds
    mail answers ENOTEMPTY and changes nothing."""
    inst, srv = env.inst, env.server
    before = inst.server_state(bodies=False)
    assert before['Work'] and before['Work/Projects']
    with pytest.raises(OSError) as ei:
        os.rmdir(inst.folder_dir('Work/Projects'))
    assert ei.value.errno == errno.ENOTEMPTY, ei.value
    os.rename(inst.folder_dir('Work'), inst.folder_dir('Job'))
    t0 = time.monotonic()
    assert inst.folder_dir('Job/Projects').is_dir() and not inst.folder_dir('Work').exists()
    wait_server(env, lambda: (lambda fs: {'Job', 'Job/Projects'} <= fs and not fs & {'Work', 'Work/Projects'})(
        srv.folders()), 'rename Work -> Job', t0)
    inst.wait_quiescent(60)
    after = inst.server_state(bodies=False)
    for old, new in (('Work', 'Job'), ('Work/Projects', 'Job/Projects')):
        assert sorted((f, d) for _, f, d, _ in after[new]) == sorted((f, d) for _, f, d, _ in before[old])


# ---- no mail meaning ----

def test_link_is_refused(env):
    inst = env.inst
    path, sub, uniq, info = files(inst, 'INBOX', 'cur')[0]
    for dest in (path.parent / ('copy' + path.name), inst.folder_dir('Work') / 'cur' / path.name):
        with pytest.raises(OSError) as ei:
            os.link(path, dest)
        assert ei.value.errno in (errno.EPERM, errno.ENOSYS), \
            f'link answered {errno.errorcode.get(ei.value.errno)} ({ei.value}), want EPERM or ENOSYS'
        assert not dest.exists()
    assert path.exists()
    assert inst.op_count() == 0



def write_into(path):
    """Opens a message file for writing (root passes the 0444 mode) and writes one byte."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, b'X')
        os.fsync(fd)
    finally:
        os.close(fd)


def test_writes_without_mail_meaning_fail_and_change_nothing(env):
    """symlink, mkfifo, writing into or truncating a message file: each fails with an errno
    and leaves the tree, the op log and the server as they were."""
    inst = env.inst
    path, sub, uniq, info = files(inst, 'INBOX', 'cur')[0]
    data = path.read_bytes()
    before = inst.server_state(bodies=False)
    tries = {
        'symlink': lambda: os.symlink(path.name, path.parent / ('sym' + uniq)),
        'mkfifo': lambda: os.mkfifo(path.parent / ('fifo' + uniq)),
        'write into a message': lambda: write_into(path),
        'chmod': lambda: os.chmod(path, 0o644),
        'truncate': lambda: os.truncate(path, 0),
    }
    for what, call in tries.items():
        with pytest.raises(OSError) as ei:
            call()
        print(f'{what}: {errno.errorcode.get(ei.value.errno)}')
    assert path.read_bytes() == data
    assert sorted(os.listdir(path.parent)) == sorted(p.name for p, s, _, _ in inst.tree_files('INBOX') if s == sub)
    assert not [n for n in os.listdir(path.parent) if n.startswith(('sym', 'fifo'))]
    assert inst.op_count() == 0
    assert diff_states(before, inst.server_state(bodies=False)) == []


def test_maildirpp_layout_writes(harness_tmp):
    """The same writes through a Maildir++ tree (INBOX at the root, folders as .A.B):
    a flag rename, a move, mkdir .X + append into it, a folder rename; all reach the server."""
    dv = Dovecot(harness_tmp / 'dovecot')
    inst = None
    try:
        Corpus(SEED, 40, folders=('INBOX', 'Work', 'Work/Projects')).seed_maildir(dv, USER)
        inst = Instance(dv, USER, harness_tmp / 'acs', layout='maildir++')
        inst.wait_quiescent(60)
        assert (inst.tree / 'cur').is_dir() and (inst.tree / '.Work.Projects' / 'cur').is_dir()
        kw = inst._keywords_by_letter()
        (p1, _, u1, i1), (p2, _, u2, i2) = files(inst, 'INBOX', 'cur')[:2]
        flagged = flags_of_letters(i1, kw) ^ {'\\Flagged'}
        os.rename(p1, p1.with_name(with_info(p1, i1.replace('F', '') if 'F' in i1 else i1 + 'F')))
        mid2 = mid_of(p2)
        os.rename(p2, inst.tree / '.Work.Projects' / 'cur' / p2.name)
        os.mkdir(inst.tree / '.Neu')
        assert (inst.tree / '.Neu' / 'tmp').is_dir()
        data = b'From: a@example.org\nSubject: maildir++ append\nMessage-ID: <mpp-append@acs.test>\n\nbody\n'
        (inst.tree / '.Neu' / 'tmp' / 'mpp1').write_bytes(data)
        os.rename(inst.tree / '.Neu' / 'tmp' / 'mpp1', inst.tree / '.Neu' / 'cur' / 'mpp1:2,S')
        os.rename(inst.tree / '.Work.Projects', inst.tree / '.Work.Proj2')
        inst.wait_quiescent(60)
        srv = Server(dv, USER)
        try:
            assert {'Neu', 'Work/Proj2'} <= srv.folders() and 'Work/Projects' not in srv.folders()
            assert srv.flags('INBOX', uid_of(inst, 'INBOX', u1)) == flagged
            assert len(srv.uids_by_mid('Work/Proj2', mid2)) == 1
            (uid,) = srv.uids_by_mid('Neu', 'mpp-append@acs.test')
            flags, _, body = srv.fetch('Neu', uid)
            assert flags == {'\\Seen'} and body == to_crlf(data)
        finally:
            srv.close()
        d = diff_states(inst.server_state(), inst.tree_state())
        assert not d, '\n'.join(d)
        inst.stop(check=True)
    finally:
        if inst:
            inst.stop()
        dv.close()
