# SPDX-License-Identifier: MIT
"""acs-fs write path (issue 5) against the cache only: each write kind changes the tree at once
and queues exactly the right op in the cache's op log (no server involved: acs-syncd replays
the op log in other tests)."""

import contextlib
import errno
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from acstest import paths

from test_fs_support import Mount, folder_files, traversable_dir, wait_for

# op kinds and flag bits (include/acs/store.h)
FLAGS, EXPUNGE, MOVE, APPEND, CREATE, DELETE, RENAME = range(1, 8)
D, F, P, R, S, T = (1 << i for i in range(6))

# the seed Maildir++ tree (what acs-import reads): folder -> [(sub, name, body)]
SEED = {
    '': [('cur', '1700000001.a.host:2,S', b'Subject: one\n\nfirst\n'),
         ('cur', '1700000002.b.host:2,Fa', b'Subject: two\n\nsecond\n'),
         ('new', '1700000003.c.host', b'Subject: three\n\nthird\n')],
    '.Archive': [('cur', '1700000004.d.host:2,S', b'Subject: four\n\nfourth\n')],
}


class Tree:
    pass


def seed(md):
    for folder, msgs in SEED.items():
        for sub in ('cur', 'new', 'tmp'):
            (md / folder / sub).mkdir(parents=True, exist_ok=True)
        for sub, name, body in msgs:
            (md / folder / sub / name).write_bytes(body)
    (md / 'dovecot-keywords').write_text('0 work\n')


def start(t, layout='fs', extra=()):
    t.mount = Mount(t.db, t.base / 'mnt', layout=layout, extra=extra)
    t.root = Path(t.mount.mountpoint)
    return t


@pytest.fixture(params=['fs'])
def tree(request):
    """A small cache made by acs-import (no server), mounted read-write."""
    t = Tree()
    t.base = traversable_dir('acs-fs-write-')
    t.mount = None
    try:
        md = t.base / 'md'
        seed(md)
        t.db = t.base / 'cache.db'
        subprocess.run([paths.binary('acs-import'), '--db', str(t.db), str(md)], check=True,
                       capture_output=True, timeout=60)
        start(t, request.param)
        yield t
    finally:
        try:
            if t.mount:
                t.mount.stop_clean()
        finally:
            shutil.rmtree(t.base, ignore_errors=True)


@contextlib.contextmanager
def db(t):
    """A read-only connection to the cache, closed again on leaving (an open connection
    changes what SQLite does after a writer was killed: see the kill tests)."""
    con = sqlite3.connect(f'file:{t.db}?mode=ro', uri=True, timeout=10)
    con.row_factory = sqlite3.Row
    try:
        yield con
    finally:
        con.close()


def ops(t):
    with db(t) as con:
        return [dict(r) for r in con.execute('SELECT * FROM op ORDER BY seq')]


def message_rows(t):
    with db(t) as con:
        return [dict(r) for r in con.execute('SELECT * FROM message ORDER BY id')]


def mailbox_id(t, name):
    with db(t) as con:
        row = con.execute('SELECT id FROM mailbox WHERE name = ?', (name,)).fetchone()
        return row[0] if row else None


def names(d):
    return sorted(os.listdir(d))


def one(d, prefix=''):
    """The single file name in directory d starting with prefix."""
    hits = [n for n in os.listdir(d) if n.startswith(prefix)]
    assert len(hits) == 1, f'{d}: {hits}'
    return hits[0]


def by_subject(t, folder_dir, subject):
    for name, (p, sub) in folder_files(folder_dir).items():
        if p.read_bytes().startswith(b'Subject: ' + subject.encode()):
            return p
    raise AssertionError(f'no message {subject!r} in {folder_dir}')


def crlf_len(b):
    return len(b) + b.count(b'\n')


def base_of(name):
    """The part of a name before the flags (what clients keep when they change flags)."""
    return name.split(':2,')[0]


# ---- messages ----

def test_flag_rename_queues_a_delta_and_shows_at_once(tree):
    inbox = tree.root / 'INBOX'
    p = by_subject(tree, inbox, 'one')
    ino = p.stat().st_ino
    assert p.name.endswith(':2,S')
    cur_mtime, folder_mtime = (inbox / 'cur').stat().st_mtime_ns, inbox.stat().st_mtime_ns
    target = inbox / 'cur' / (base_of(p.name) + ':2,FS')
    os.rename(p, target)
    # visible at once: the listing has the new name, the old one is gone, same inode
    assert target.name in names(inbox / 'cur') and p.name not in names(inbox / 'cur')
    assert target.stat().st_ino == ino
    # directory mtimes move at once (mutt and notmuch look at them)
    assert (inbox / 'cur').stat().st_mtime_ns > cur_mtime
    assert inbox.stat().st_mtime_ns > folder_mtime
    o = ops(tree)
    assert len(o) == 1
    assert (o[0]['kind'], o[0]['flags_add'], o[0]['flags_del']) == (FLAGS, F, 0)
    assert o[0]['uid'] > 0 and o[0]['name'] == 'INBOX'
    # and back: -F
    os.rename(target, p)
    o = ops(tree)
    assert (o[1]['kind'], o[1]['flags_add'], o[1]['flags_del']) == (FLAGS, 0, F)


def test_keyword_letters_become_keywords(tree):
    inbox = tree.root / 'INBOX'
    p = by_subject(tree, inbox, 'two')
    assert p.name.endswith(':2,Fa'), p.name  # 'a' = work (dovecot-keywords)
    os.rename(p, inbox / 'cur' / (base_of(p.name) + ':2,FS'))
    o = ops(tree)[-1]
    assert (o['flags_add'], o['flags_del'], o['keywords_add'], o['keywords_del']) == (S, 0, None, 'work')
    # a letter with no keyword behind it is dropped (no name to send to the server)
    p = by_subject(tree, inbox, 'two')
    os.rename(p, inbox / 'cur' / (base_of(p.name) + ':2,FSaz'))
    o = ops(tree)[-1]
    assert o['keywords_add'] == 'work' and o['keywords_del'] is None
    assert by_subject(tree, inbox, 'two').name.endswith(':2,FSa')
    # a keyword without a letter (past the 26th) cannot show in a name: renames keep it
    msg = [m for m in message_rows(tree) if m['keywords'] == 'work'][0]
    con = sqlite3.connect(str(tree.db), timeout=10, isolation_level=None)
    try:
        con.execute("UPDATE message SET keywords = 'nolet work' WHERE id = ?", (msg['id'],))
    finally:
        con.close()
    p = by_subject(tree, inbox, 'two')
    os.rename(p, inbox / 'cur' / (base_of(p.name) + ':2,S'))
    o = ops(tree)[-1]
    assert (o['flags_del'], o['keywords_add'], o['keywords_del']) == (F, None, 'work')
    assert [m['keywords'] for m in message_rows(tree) if m['id'] == msg['id']] == ['nolet']


def test_new_to_cur_without_flag_change_queues_nothing(tree):
    """What Dovecot does on SELECT and mutt on reading: a state change, not a flag change."""
    inbox = tree.root / 'INBOX'
    name = one(inbox / 'new')
    os.rename(inbox / 'new' / name, inbox / 'cur' / (base_of(name) + ':2,'))
    assert names(inbox / 'new') == []
    assert base_of(name) + ':2,' in names(inbox / 'cur')
    assert ops(tree) == []
    # cur -> new with a flag: state and a FLAGS op
    os.rename(inbox / 'cur' / (base_of(name) + ':2,'), inbox / 'new' / (base_of(name) + ':2,S'))
    assert names(inbox / 'new') == [base_of(name) + ':2,S']
    assert [(o['kind'], o['flags_add']) for o in ops(tree)] == [(FLAGS, S)]


def test_unlink_expunges(tree):
    inbox = tree.root / 'INBOX'
    p = by_subject(tree, inbox, 'one')
    before = {m['id']: m for m in message_rows(tree)}
    mtimes = [d.stat().st_mtime_ns for d in (inbox, inbox / 'cur')]
    os.unlink(p)
    assert not p.exists() and p.name not in names(inbox / 'cur')
    assert all(a < d.stat().st_mtime_ns for a, d in zip(mtimes, (inbox, inbox / 'cur')))
    o = ops(tree)
    assert len(o) == 1 and o[0]['kind'] == EXPUNGE
    assert before[o[0]['message_id']]['uid'] == o[0]['uid'] > 0
    assert len(message_rows(tree)) == len(before) - 1
    with pytest.raises(FileNotFoundError):
        os.unlink(p)
    assert len(ops(tree)) == 1


def test_rename_into_another_folder_moves_under_the_clients_name(tree):
    inbox, archive = tree.root / 'INBOX', tree.root / 'Archive'
    p = by_subject(tree, inbox, 'one')
    ino = p.stat().st_ino
    body = p.read_bytes()
    dirs = (inbox, inbox / 'cur', archive, archive / 'cur')
    mtimes = [d.stat().st_mtime_ns for d in dirs]
    os.rename(p, archive / 'cur' / '1700000001.client-chosen:2,RS')
    assert all(a < d.stat().st_mtime_ns for a, d in zip(mtimes, dirs))
    got = one(archive / 'cur', '1700000001.client-chosen')
    assert got == f'1700000001.client-chosen,S={len(body)},W={crlf_len(body)}:2,RS'
    assert (archive / 'cur' / got).read_bytes() == body
    assert (archive / 'cur' / got).stat().st_ino == ino
    assert p.name not in names(inbox / 'cur')
    o = ops(tree)
    assert [x['kind'] for x in o] == [MOVE, FLAGS]
    assert o[0]['mailbox_id'] == mailbox_id(tree, 'INBOX')
    assert o[0]['target_mailbox_id'] == mailbox_id(tree, 'Archive')
    assert (o[0]['name'], o[0]['new_name']) == ('INBOX', 'Archive')
    assert o[0]['uid'] > 0 and o[0]['body_id']
    assert (o[1]['mailbox_id'], o[1]['uid'], o[1]['flags_add']) == (mailbox_id(tree, 'Archive'), 0, R)


def test_tmp_file_renamed_into_new_is_appended(tree):
    inbox = tree.root / 'INBOX'
    text = b'From: me@example.org\nSubject: draft\n\nline one\nline two\n'
    tmp = inbox / 'tmp' / '1700000500.M1P2.myhost'
    with open(tmp, 'wb') as f:
        f.write(text[:10])
        f.write(text[10:])
        f.flush()
        os.fsync(f.fileno())
    assert names(inbox / 'tmp') == [tmp.name]
    assert tmp.read_bytes() == text
    os.utime(tmp, (1600000000, 1600000000))
    assert tmp.stat().st_mtime == 1600000000
    assert ops(tree) == []  # tmp/ is not mail yet
    dst = inbox / 'new' / tmp.name
    mtimes = [d.stat().st_mtime_ns for d in (inbox, inbox / 'new')]
    os.rename(tmp, dst)
    assert all(a < d.stat().st_mtime_ns for a, d in zip(mtimes, (inbox, inbox / 'new')))
    # the client's own name keeps working (mutt, notmuch insert open it right away)
    assert dst.read_bytes() == text
    assert dst.stat().st_mtime == 1600000000
    assert names(inbox / 'tmp') == []
    want = f'{tmp.name},S={len(text)},W={crlf_len(text)}:2,'
    assert want in names(inbox / 'new')
    st = (inbox / 'new' / want).stat()
    assert st.st_mtime == 1600000000 and st.st_size == len(text)
    o = ops(tree)
    assert len(o) == 1 and o[0]['kind'] == APPEND
    assert (o[0]['uid'], o[0]['internaldate'], o[0]['flags_add']) == (0, 1600000000, 0)
    with db(tree) as con:
        data = con.execute('SELECT data FROM body_data WHERE body_id = ?', (o[0]['body_id'],)).fetchone()[0]
    assert data == text  # LF as written; acs-syncd converts to CRLF
    assert os.listdir(Path(str(tree.db) + '.spool') / str(mailbox_id(tree, 'INBOX'))) == []


def test_tmp_file_renamed_into_cur_with_flags_and_another_folder(tree):
    inbox, archive = tree.root / 'INBOX', tree.root / 'Archive'
    tmp = inbox / 'tmp' / 'draft.1'
    tmp.write_bytes(b'Subject: d\n\nx\n')
    os.rename(tmp, archive / 'cur' / 'draft.1:2,DS')
    assert one(archive / 'cur', 'draft.1').endswith(':2,DS')
    o = ops(tree)
    assert (o[0]['kind'], o[0]['mailbox_id'], o[0]['flags_add']) == (APPEND, mailbox_id(tree, 'Archive'), D | S)
    # a name already taken in the target is refused, the tmp file stays
    tmp.write_bytes(b'Subject: e\n\ny\n')
    with pytest.raises(FileExistsError):
        os.rename(tmp, archive / 'new' / 'draft.1')
    assert tmp.exists() and len(ops(tree)) == 1


def test_tmp_files_behave_like_files(tree):
    tmpd = tree.root / 'INBOX' / 'tmp'
    p = tmpd / 'work'
    fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        assert os.write(fd, b'hello world') == 11
        assert os.pread(fd, 5, 6) == b'world'
        os.ftruncate(fd, 5)
        os.fsync(fd)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    assert p.read_bytes() == b'hello'
    with open(p, 'ab') as f:
        f.write(b', again')
    assert p.read_bytes() == b'hello, again'
    with open(p, 'r+b') as f:
        f.seek(0)
        f.write(b'J')
    assert p.read_bytes() == b'Jello, again'
    os.truncate(p, 0)
    assert p.stat().st_size == 0
    with pytest.raises(FileExistsError):
        os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.rename(p, tmpd / 'renamed')
    assert names(tmpd) == ['renamed']
    os.rename(tmpd / 'renamed', tree.root / 'Archive' / 'tmp' / 'elsewhere')
    assert names(tmpd) == [] and names(tree.root / 'Archive' / 'tmp') == ['elsewhere']
    os.mknod(tmpd / 'node', 0o600 | 0o100000)
    assert (tmpd / 'node').stat().st_size == 0
    os.unlink(tmpd / 'node')
    os.unlink(tree.root / 'Archive' / 'tmp' / 'elsewhere')
    assert names(tmpd) == [] and names(tree.root / 'Archive' / 'tmp') == []
    # fsync of the directory is real too (no ENOSYS behind it)
    dfd = os.open(tmpd, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    assert ops(tree) == []


def test_tmp_files_after_the_kernel_stopped_sending_opens(tree):
    """A read-only open of a message makes the kernel stop sending opens (--open-calls skip);
    reopened tmp/ files must still read, write, truncate, fsync and append right."""
    inbox = tree.root / 'INBOX'
    p = inbox / 'tmp' / 'draft'
    p.write_bytes(b'Subject: x\n\n')  # create: a handle of its own
    assert by_subject(tree, inbox, 'one').read_bytes().startswith(b'Subject: one')
    assert by_subject(tree, inbox, 'two').read_bytes().startswith(b'Subject: two')
    with open(p, 'ab') as f:  # no open request any more: handle 0
        f.write(b'appended body\n')
        f.flush()
        os.fsync(f.fileno())
    assert p.read_bytes() == b'Subject: x\n\nappended body\n'
    with open(p, 'r+b') as f:
        f.truncate(13)
    assert p.read_bytes() == b'Subject: x\n\na'
    with open(p, 'wb') as f:  # O_TRUNC without an open request: a setattr(size=0)
        f.write(b'Subject: final\n\nok\n')
    assert p.read_bytes() == b'Subject: final\n\nok\n'
    os.rename(p, inbox / 'cur' / 'draft:2,DS')
    assert (inbox / 'cur' / 'draft:2,DS').read_bytes() == b'Subject: final\n\nok\n'
    assert [o['kind'] for o in ops(tree)] == [APPEND]
    # and a writable open of a message fails at the latest at write()
    with pytest.raises(PermissionError):
        _write(by_subject(tree, inbox, 'one'))


def test_fsync_reaches_the_spool_file(tree):
    """An fsync of a tmp/ file is answered by a real fsync(2) of the spool file (strace sees it)."""
    p = tree.root / 'INBOX' / 'tmp' / 'synced'
    fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        os.write(fd, b'data')
        trace = tree.base / 'strace.out'
        st = subprocess.Popen(['strace', '-f', '-qq', '-e', 'trace=fsync,fdatasync', '-o', str(trace),
                               '-p', str(tree.mount.pid)], stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)  # strace attaches to every thread
            os.fsync(fd)
            os.fdatasync(fd)
            time.sleep(0.2)
        finally:
            st.send_signal(signal.SIGINT)
            st.wait(timeout=10)
    finally:
        os.close(fd)
    text = trace.read_text()
    assert 'fsync(' in text and 'fdatasync(' in text, text


# ---- folders ----

def test_mkdir_rename_rmdir_of_folders(tree):
    delim = '.'  # acs-import keeps Dovecot's Maildir++ separator
    os.mkdir(tree.root / 'Work')
    assert names(tree.root / 'Work') == ['cur', 'new', 'tmp']
    os.makedirs(tree.root / 'Work' / 'cur', exist_ok=True)  # mkdir -p of a maildir: fine
    os.mkdir(tree.root / 'Work' / 'Sub')
    assert names(tree.root / 'Work') == ['Sub', 'cur', 'new', 'tmp']
    assert os.stat(tree.root / 'Work').st_nlink == 2 + 4
    with pytest.raises(FileExistsError):
        os.mkdir(tree.root / 'Work')
    o = ops(tree)
    assert [(x['kind'], x['name']) for x in o] == [(CREATE, 'Work'), (CREATE, f'Work{delim}Sub')]

    os.rename(tree.root / 'Work', tree.root / 'Job')
    assert 'Job' in names(tree.root) and 'Work' not in names(tree.root)
    assert names(tree.root / 'Job' / 'Sub') == ['cur', 'new', 'tmp']
    assert mailbox_id(tree, f'Job{delim}Sub') is not None
    o = ops(tree)[-1]
    assert (o['kind'], o['name'], o['new_name']) == (RENAME, 'Work', 'Job')

    # a message moved in, then rmdir: not empty
    p = by_subject(tree, tree.root / 'INBOX', 'one')
    os.rename(p, tree.root / 'Job' / 'Sub' / 'cur' / p.name)
    with pytest.raises(OSError) as ei:
        os.rmdir(tree.root / 'Job' / 'Sub')
    assert ei.value.errno == errno.ENOTEMPTY
    with pytest.raises(OSError) as ei:
        os.rmdir(tree.root / 'Job')  # has a child folder
    assert ei.value.errno == errno.ENOTEMPTY
    with pytest.raises(OSError) as ei:
        os.rmdir(tree.root / 'Job' / 'cur')
    assert ei.value.errno == errno.EPERM
    (tree.root / 'Job' / 'tmp' / 'pending').write_bytes(b'x')
    os.unlink(tree.root / 'Job' / 'Sub' / 'cur' / p.name)
    os.rmdir(tree.root / 'Job' / 'Sub')
    with pytest.raises(OSError) as ei:
        os.rmdir(tree.root / 'Job')  # tmp/ holds a file
    assert ei.value.errno == errno.ENOTEMPTY
    os.unlink(tree.root / 'Job' / 'tmp' / 'pending')
    os.rmdir(tree.root / 'Job')
    assert 'Job' not in names(tree.root)
    kinds = [(x['kind'], x['name']) for x in ops(tree)][3:]
    assert kinds == [(MOVE, 'INBOX'), (EXPUNGE, f'Job{delim}Sub'), (DELETE, f'Job{delim}Sub'), (DELETE, 'Job')]
    with pytest.raises(OSError) as ei:
        os.rmdir(tree.root / 'INBOX')
    assert ei.value.errno == errno.EPERM


def test_maildirpp_layout(tree):
    tree.mount.stop_clean()
    tree.mount = None
    start(tree, 'maildir++')
    os.mkdir(tree.root / '.Lists')
    assert names(tree.root / '.Lists') == ['cur', 'new', 'tmp']
    os.mkdir(tree.root / '.Lists.Debian')
    with pytest.raises(PermissionError):
        os.mkdir(tree.root / 'NoDot')
    with pytest.raises(PermissionError):
        os.mkdir(tree.root / '.Lists' / 'Inner')
    p = by_subject(tree, tree.root, 'one')
    os.rename(p, tree.root / '.Lists' / 'cur' / p.name)
    assert p.name in names(tree.root / '.Lists' / 'cur')
    os.rename(tree.root / '.Lists', tree.root / '.Groups')
    assert p.name in names(tree.root / '.Groups' / 'cur')
    assert '.Groups.Debian' in names(tree.root)
    (tree.root / 'tmp' / 'x.1').write_bytes(b'Subject: pp\n\n')
    os.rename(tree.root / 'tmp' / 'x.1', tree.root / 'new' / 'x.1')
    assert one(tree.root / 'new', 'x.1') == 'x.1,S=13,W=15:2,'
    os.rename(tree.root / 'new' / 'x.1', tree.root / 'cur' / 'x.1:2,S')
    assert [(o['kind'], o['name'], o['new_name']) for o in ops(tree)] == [
        (CREATE, 'Lists', None), (CREATE, 'Lists.Debian', None), (MOVE, 'INBOX', 'Lists'),
        (RENAME, 'Lists', 'Groups'), (APPEND, 'INBOX', None), (FLAGS, 'INBOX', None)]


# ---- what has no mail meaning ----

def test_refused_calls_get_clear_errnos_and_change_nothing(tree):
    inbox = tree.root / 'INBOX'
    p = by_subject(tree, inbox, 'one')
    other = by_subject(tree, inbox, 'two')
    mtime = p.stat().st_mtime
    tries = {
        'link': (lambda: os.link(p, inbox / 'cur' / 'hard'), errno.EPERM),
        'link into tmp': (lambda: os.link(p, inbox / 'tmp' / 'hard'), errno.EPERM),
        'symlink': (lambda: os.symlink('x', inbox / 'tmp' / 's'), errno.EPERM),
        'mkfifo': (lambda: os.mkfifo(inbox / 'tmp' / 'fifo'), errno.EPERM),
        'chmod': (lambda: os.chmod(p, 0o600), errno.EPERM),
        'chown': (lambda: os.chown(p, 1, 1), errno.EPERM),
        'utime to another date': (lambda: os.utime(p, (0, 0)), errno.EPERM),
        'touch': (lambda: os.utime(p), errno.EPERM),
        'truncate': (lambda: os.truncate(p, 0), errno.EPERM),
        'write': (lambda: _write(p), errno.EPERM),
        'setxattr': (lambda: os.setxattr(p, 'user.x', b'1'), errno.ENOTSUP),
        'create in cur': (lambda: open(inbox / 'cur' / 'new-file', 'wb'), errno.EPERM),
        'create in a folder': (lambda: open(inbox / 'file', 'wb'), errno.EPERM),
        'message into tmp': (lambda: os.rename(p, inbox / 'tmp' / 'x'), errno.EPERM),
        'new unique part in place': (lambda: os.rename(p, inbox / 'cur' / 'other:2,S'), errno.EINVAL),
        'onto another message': (lambda: os.rename(p, other), errno.EEXIST),
        'exchange': (lambda: _exchange(p, other), errno.EINVAL),
        'chmod a folder': (lambda: os.chmod(inbox, 0o700), errno.EPERM),
        'rename cur': (lambda: os.rename(inbox / 'cur', inbox / 'cur2'), errno.EPERM),
    }
    for what, (fn, want) in tries.items():
        with pytest.raises(OSError) as ei:
            r = fn()
            if hasattr(r, 'close'):
                r.close()
        assert ei.value.errno == want, f'{what}: {ei.value}'
    # harmless: setting the mtime to what it is, chmod to the same mode
    os.utime(p, (mtime, mtime))
    os.chmod(p, 0o444)
    assert p.exists() and p.stat().st_mtime == mtime
    assert ops(tree) == []


def _write(p):
    fd = os.open(p, os.O_WRONLY)
    try:
        os.write(fd, b'x')
    finally:
        os.close(fd)


def _exchange(a, b):
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    if libc.renameat2(AT_FDCWD, str(a).encode(), AT_FDCWD, str(b).encode(), RENAME_EXCHANGE) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def test_read_only_mount_refuses_every_write(tree):
    tree.mount.stop_clean()
    tree.mount = None
    start(tree, extra=('--read-only',))
    inbox = tree.root / 'INBOX'
    p = by_subject(tree, inbox, 'one')
    for fn in (lambda: os.rename(p, str(p) + 'F'), lambda: os.unlink(p), lambda: os.mkdir(tree.root / 'X'),
               lambda: open(inbox / 'tmp' / 'x', 'wb'), lambda: os.open(p, os.O_WRONLY)):
        with pytest.raises(OSError) as ei:
            fn()
        assert ei.value.errno == errno.EROFS
    assert ops(tree) == []


def test_owner_and_mode_options(tree):
    """--owner/--mode (acsd passes [tree] owner, group and mode): shown on every file, and
    with default_permissions they decide who may write."""
    import stat as st_
    tree.mount.stop_clean()
    tree.mount = None
    start(tree, extra=('--owner', '65534:65534', '--mode', '0750'))
    inbox = tree.root / 'INBOX'
    p = by_subject(tree, inbox, 'one')
    for d in (tree.root, inbox, inbox / 'cur', inbox / 'tmp'):
        s = d.stat()
        assert (st_.S_IMODE(s.st_mode), s.st_uid, s.st_gid) == (0o750, 65534, 65534), d
    s = p.stat()
    assert (st_.S_IMODE(s.st_mode), s.st_uid, s.st_gid) == (0o440, 65534, 65534)
    # a user who is neither owner nor in the group may not even look
    r = subprocess.run(['setpriv', '--reuid=12345', '--regid=12345', '--clear-groups', 'ls', str(inbox / 'cur')],
                       capture_output=True, text=True)
    assert r.returncode != 0 and 'Permission denied' in r.stderr, r
    # the owner may write: a flag change as uid 65534
    r = subprocess.run(['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', 'mv', str(p),
                        str(inbox / 'cur' / (base_of(p.name) + ':2,FS'))], capture_output=True, text=True)
    assert r.returncode == 0, r
    assert [(o['kind'], o['flags_add']) for o in ops(tree)] == [(FLAGS, F)]
    for bad in (('--mode', '0999'), ('--mode', '17777'), ('--owner', '1'), ('--owner', 'a:b')):
        r = subprocess.run([paths.binary('acs-fs'), '--db', str(tree.db), *bad, str(tree.base / 'x')],
                           capture_output=True, text=True)
        assert r.returncode == 2 and bad[0] in r.stderr, (bad, r)


# ---- crash safety of an append ----

def _wait_traced(pid, timeout=10):
    """Waits until every thread of pid has a tracer (strace attached to all of them)."""
    def traced():
        try:
            for task in os.listdir(f'/proc/{pid}/task'):
                with open(f'/proc/{pid}/task/{task}/status') as f:
                    if 'TracerPid:\t0\n' in f.read():
                        return False
            return True
        except FileNotFoundError:
            return True
    assert wait_for(traced, timeout) is not None, 'strace did not attach'


def _strace(t, syscall, when=None, log=None):
    """strace on acs-fs for syscall (a comma list); with when, the when-th call of any of them
    in any thread kills it (SIGKILL)."""
    cmd = ['strace', '-f', '-qq', '-o', str(log or os.devnull), '-e', f'trace={syscall}']
    if when:
        cmd += ['-e', f'inject={syscall}:signal=KILL:when={when}']
    st = subprocess.Popen(cmd + ['-p', str(t.mount.pid)], stderr=subprocess.DEVNULL)
    _wait_traced(t.mount.pid)
    return st


def _kill_at_first(t, syscall):
    """Attaches strace to acs-fs so the first `syscall` of any of its threads kills it (SIGKILL)."""
    return _strace(t, syscall, 1)


@pytest.mark.parametrize('syscall,committed', [('fsync', False), ('unlink', True)])
def test_append_killed_mid_way_ends_up_exactly_once(tree, syscall, committed):
    """SIGKILL at the marker's fsync (before the commit) or at the spool file's unlink (after
    it): after a restart the message is there exactly once and tmp/ is empty, or it is not
    there and the file is still in tmp/."""
    inbox = tree.root / 'INBOX'
    tmp = inbox / 'tmp' / 'crash.1'
    tmp.write_bytes(b'Subject: crash\n\nbody\n')
    before = len(message_rows(tree))
    st = _kill_at_first(tree, syscall)
    try:
        with pytest.raises(OSError):
            os.rename(tmp, inbox / 'new' / 'crash.1')
        assert wait_for(lambda: tree.mount.proc.poll() is not None, 10)
    finally:
        st.wait(timeout=10)
    tree.mount.stop()
    start(tree)
    rows = [m for m in message_rows(tree) if m['uniq'] == 'crash.1']
    spool = Path(str(tree.db) + '.spool')
    assert not [n for n in os.listdir(spool) if n.startswith('.commit-')]
    if committed:
        assert len(rows) == 1 and len(message_rows(tree)) == before + 1
        assert names(inbox / 'tmp') == []
        assert one(inbox / 'new', 'crash.1')
        assert [o['kind'] for o in ops(tree)] == [APPEND]
    else:
        assert rows == [] and len(message_rows(tree)) == before
        assert names(inbox / 'tmp') == ['crash.1']
        assert ops(tree) == []
        # the client tries again: appended once
        os.rename(inbox / 'tmp' / 'crash.1', inbox / 'new' / 'crash.1')
        assert [o['kind'] for o in ops(tree)] == [APPEND]


# the system calls of an append's path in acs-fs (the spool file, the marker, SQLite's WAL)
def _call_killed_at(t, syscalls, when, call):
    """Runs call() (its OSError ignored) with acs-fs to be SIGKILLed at the when-th of
    syscalls; returns True if it was, after mounting the tree again."""
    st = _strace(t, syscalls, when)
    try:
        try:
            call()
        except OSError:
            pass
        wait_for(lambda: t.mount.proc.poll() is not None, 0.3)
    finally:
        st.send_signal(signal.SIGINT)
        st.wait(timeout=10)
    killed = t.mount.proc.poll() == -signal.SIGKILL
    if killed:
        t.mount.stop()
        start(t)
    return killed


APPEND_STEPS = ('openat', 'write', 'pwrite64', 'fsync', 'fdatasync', 'unlink', 'close')


def _append_state(t, inbox, text):
    """'done' (appended once, tmp/ empty) or 'not' (not appended, file still in tmp/)."""
    rows = [m for m in message_rows(t) if m['uniq'] == 'step.1']
    appends = [o for o in ops(t) if o['kind'] == APPEND]
    spool = Path(str(t.db) + '.spool')
    assert not [n for n in os.listdir(spool) if n.startswith('.commit-')], 'a marker was left'
    if rows:
        assert len(rows) == 1 and len(appends) == 1 and names(inbox / 'tmp') == []
        assert (inbox / 'new' / one(inbox / 'new', 'step.1')).read_bytes() == text
        return 'done'
    assert appends == [] and names(inbox / 'tmp') == ['step.1']
    assert (inbox / 'tmp' / 'step.1').read_bytes() == text
    return 'not'


@pytest.mark.parametrize('reader', [False, True], ids=['alone', 'with-reader'])
def test_append_killed_at_every_step(tree, reader):
    """acs-fs SIGKILLed at each system call of an append's path in turn (strace inject: the
    N-th openat, write, pwrite64, fsync, fdatasync, unlink, close of any thread, N = 1, 2, ...
    until the append completes without reaching it; each from a fresh mount), then
    restarted: the tmp/ file is
    appended exactly once, or not at all and still in tmp/; never both, never twice. A client
    that retries after 'not' appends it once.

    with-reader: another connection stays open all along (as acs-syncd's does). A kill inside
    COMMIT after the WAL write then leaves the transaction in limbo (the shared WAL index was
    not updated); acs-fs settles it on start with a write of its own before it looks at the
    markers (acs_store_settle): committed when its connection rebuilt the index
    (alone), gone when it could not (with-reader); either way the markers agree."""
    inbox = tree.root / 'INBOX'
    text = b'Subject: step\n\n' + b'x' * 5000 + b'\n'
    held = sqlite3.connect(f'file:{tree.db}?mode=ro', uri=True) if reader else None
    if held:
        held.execute('SELECT count(*) FROM message').fetchone()
    outcomes = {'done': 0, 'not': 0}
    counts = {}
    for sc in APPEND_STEPS:
        when = 1
        while True:
            assert when < 200, f'{sc}: no end of steps'
            # every step from the same state: a fresh mount (the last close checkpointed the
            # WAL away, so the transaction also writes and syncs a new WAL header)
            tree.mount.stop_clean()
            start(tree)
            (inbox / 'tmp' / 'step.1').write_bytes(text)
            killed = _call_killed_at(tree, sc, when,
                                     lambda: os.rename(inbox / 'tmp' / 'step.1', inbox / 'new' / 'step.1'))
            state = _append_state(tree, inbox, text)
            if killed and held:
                # the reader goes, everything is reopened (SQLite rebuilds the WAL index
                # from the WAL): what was settled stays settled
                held.close()
                tree.mount.stop_clean()
                start(tree)
                assert _append_state(tree, inbox, text) == state, f'{sc} #{when}: changed on reopen'
                held = sqlite3.connect(f'file:{tree.db}?mode=ro', uri=True)
                held.execute('SELECT count(*) FROM message').fetchone()
            if killed:
                outcomes[state] += 1
            else:
                assert state == 'done'  # no N-th call: the append went through untouched
            if state == 'not':  # the client retries
                os.rename(inbox / 'tmp' / 'step.1', inbox / 'new' / 'step.1')
                assert _append_state(tree, inbox, text) == 'done'
            os.unlink(inbox / 'new' / one(inbox / 'new', 'step.1'))
            _clear_ops(tree)
            if not killed:
                break
            when += 1
        counts[sc] = when - 1
        assert counts[sc] > 0 or sc in ('write', 'close'), f'{sc}: never called by an append'
    if held:
        held.close()
    steps = sum(counts.values())
    print(f'append killed at {steps} steps {counts}: {outcomes}')
    assert counts['fsync'] >= 1 and counts['unlink'] >= 1 and counts['pwrite64'] >= 1
    assert outcomes['done'] > 0 and outcomes['not'] > 0


def _fresh_cache(t):
    """Unmounts, makes the cache again from the seed tree with acs-import, mounts it."""
    t.mount.stop_clean()
    for p in t.base.glob('cache.db*'):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    subprocess.run([paths.binary('acs-import'), '--db', str(t.db), str(t.base / 'md')], check=True,
                   capture_output=True, timeout=60)
    start(t)


def _where(t, subject):
    """Where the message with this subject shows in the tree: (folder, path) or None."""
    for folder in ('INBOX', 'Archive'):
        hits = [p for p, sub in folder_files(t.root / folder).values()
                if p.read_bytes().startswith(b'Subject: ' + subject.encode() + b'\n')]
        if hits:
            assert len(hits) == 1, hits
            return folder, hits[0].name.partition(':2,')[2]
    return None


@pytest.mark.parametrize('kind', ['flags', 'move', 'unlink'])
def test_write_killed_in_commit_keeps_its_outcome(tree, kind):
    """acs-fs SIGKILLed at each fsync/fdatasync of a flag rename, a move or an unlink in turn
    (N = 1, 2, ... until the call completes without reaching it) while another connection
    stays open all along (as acs-syncd's does), then restarted: what the tree shows then
    stays once that connection closes and everything is reopened. A kill at the WAL's sync
    inside COMMIT leaves the transaction in limbo (in the WAL, not in the shared WAL index):
    the tree showed it undone, and SQLite's index rebuild at the next open brought it back
    (soak seed 223: a move whose rename failed and the tree showed undone reached the
    server after all). acs-fs's write at start (acs_store_settle) decides it first."""
    outcomes = {'done': 0, 'not': 0}
    when = 1
    held = None
    try:
        while True:
            assert when < 50, 'no end of steps'
            _fresh_cache(tree)
            held = sqlite3.connect(f'file:{tree.db}?mode=ro', uri=True)
            held.execute('SELECT count(*) FROM message').fetchone()
            before = _where(tree, 'one')
            assert before == ('INBOX', 'S'), before
            src = by_subject(tree, tree.root / 'INBOX', 'one')
            stem = src.name.partition(':2,')[0]
            call = {'flags': lambda: os.rename(src, src.parent / f'{stem}:2,FS'),
                    'move': lambda: os.rename(src, tree.root / 'Archive' / 'cur' / src.name),
                    'unlink': lambda: os.unlink(src)}[kind]
            killed = _call_killed_at(tree, 'fsync,fdatasync', when, call)
            shown = _where(tree, 'one')
            # the connection open all along goes and acs-fs is killed too (a clean close
            # would checkpoint and remove the WAL): the next open rebuilds the WAL index
            # from the WAL, and what the tree showed must stay
            held.close()
            held = None
            tree.mount.proc.kill()
            tree.mount.stop()
            start(tree)
            again = _where(tree, 'one')
            assert again == shown, f'{kind}, kill at sync #{when}: the tree showed {shown}, after a reopen {again}'
            if not killed:
                assert shown != before, f'{kind}: the call went through untouched, the tree shows {shown}'
                break
            outcomes['not' if shown == before else 'done'] += 1
            when += 1
    finally:
        if held:
            held.close()
    print(f'{kind} killed at {when - 1} syncs: {outcomes}')
    assert outcomes['not'] > 0, outcomes


def _clear_ops(t):
    """Empties the op log (what acs-syncd does once replayed), so each step starts clean."""
    con = sqlite3.connect(str(t.db), timeout=10, isolation_level=None)
    try:
        con.execute('DELETE FROM op')
    finally:
        con.close()
