# SPDX-License-Identifier: MIT
"""acs-fs (issue 4): the mounted tree equals the server, and real clients read it."""

import collections
import ctypes
import errno
import imaplib
import os
import pwd
import re
import grp
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from acstest import mutf7, paths
from acstest.corpus import Corpus
from acstest.dovecot import Dovecot
from acstest.imapcheck import server_state

from test_fs_support import (Mount, crlf_size, crlf_to_lf, fill_cache, folder_files, folder_path,
                             keywords_of, parse_name, system_letters, traversable_dir, wait_for)

USER = 'user1'
SEED = 4004
COUNT = 240


class Env:
    pass


@pytest.fixture(scope='module')
def env():
    """Dovecot with a seeded corpus, a cache filled by acs-syncd --once, and acs-fs mounted (fs layout)."""
    e = Env()
    e.base = traversable_dir('acs-fs-tree-')
    e.dovecot = Dovecot(e.base / 'dovecot')
    try:
        e.corpus = Corpus(SEED, COUNT)
        e.corpus.seed_maildir(e.dovecot, USER)
        e.db = e.base / 'cache.db'
        fill_cache(e.dovecot, USER, e.db)
        c = e.dovecot.client(USER)
        try:
            e.state = server_state(c)
        finally:
            c.logout()
        e.mount = Mount(e.db, e.base / 'mnt')
        e.root = Path(e.mount.mountpoint)
        yield e
    finally:
        try:
            if hasattr(e, 'mount'):
                e.mount.stop_clean()
        finally:
            e.dovecot.stop()
            shutil.rmtree(e.base, ignore_errors=True)


def total(state):
    return sum(len(v) for v in state.values())


# ---- the tree equals the server ----

def test_folders_are_exactly_the_servers(env):
    """Every server folder is a directory with cur/new/tmp; no other directory has cur/."""
    want = {str(folder_path(env.root, f)) for f in env.state}
    have = set()
    for dirpath, dirnames, _ in os.walk(env.root):
        if 'cur' in dirnames:
            have.add(dirpath)
            for sub in ('cur', 'new', 'tmp'):
                assert sub in dirnames, f'{dirpath} lacks {sub}/'
        dirnames[:] = [d for d in dirnames if d not in ('cur', 'new', 'tmp')]
    assert have == want
    assert total(env.state) >= COUNT  # the corpus is all there on the server side


def test_files_equal_server_messages(env):
    """Per folder: same count, contents == BODY[] with CRLF->LF, S=/W= exact, flags, mtime = INTERNALDATE."""
    letters_of_kw = {}  # keyword -> set of (folder, body)
    sets_of_letter = {}  # letter -> set of (folder, body)
    for folder, msgs in env.state.items():
        fdir = folder_path(env.root, folder)
        files = folder_files(fdir)
        assert len(files) == len(msgs), f'{folder}: {len(files)} files, server has {len(msgs)}'
        by_body = {}
        for uid, flags, idate, body in msgs:
            by_body.setdefault(crlf_to_lf(body), []).append((uid, flags, idate))
        for name, (path, sub) in files.items():
            data = path.read_bytes()
            assert data in by_body and by_body[data], f'{folder}/{sub}/{name}: no such message on the server'
            uid, flags, idate = by_body[data].pop()
            _, s, w, letters = parse_name(name)
            assert s == len(data), f'{name}: S= wrong'
            assert w == crlf_size(data), f'{name}: W= wrong'
            assert w == len(body_crlf(msgs, uid)), f'{name}: W= differs from the server RFC822 size'
            sys_letters = ''.join(ch for ch in letters if ch.isupper())
            assert sys_letters == system_letters(flags), f'{name}: flags {flags}'
            assert list(letters) == sorted(letters), f'{name}: flags not in ASCII order'
            st = path.stat()
            assert st.st_mtime_ns == idate * 10**9, f'{name}: mtime is not INTERNALDATE'
            assert st.st_size == len(data)
            assert st.st_nlink == 1
            if sub == 'new':
                assert '\\Seen' not in flags, f'{name}: a seen message in new/'
            for kw in keywords_of(flags):
                letters_of_kw.setdefault(kw, set()).add((folder, data))
            for ch in letters:
                if ch.islower():
                    sets_of_letter.setdefault(ch, set()).add((folder, data))
        assert all(not v for v in by_body.values()), f'{folder}: server messages missing in the tree'
    # keyword letters: one letter per keyword, on exactly the messages that carry it
    assert len(sets_of_letter) == min(len(letters_of_kw), 26)
    kw_sets = sorted(sorted(v) for v in letters_of_kw.values())
    letter_sets = sorted(sorted(v) for v in sets_of_letter.values())
    assert letter_sets == kw_sets


def body_crlf(msgs, uid):
    for u, _, _, body in msgs:
        if u == uid:
            return body
    raise KeyError(uid)


class Dirent(ctypes.Structure):
    _fields_ = [('d_ino', ctypes.c_uint64), ('d_off', ctypes.c_int64), ('d_reclen', ctypes.c_ushort),
                ('d_type', ctypes.c_ubyte), ('d_name', ctypes.c_char * 256)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.opendir.restype = ctypes.c_void_p
_libc.opendir.argtypes = [ctypes.c_char_p]
_libc.readdir.restype = ctypes.POINTER(Dirent)
_libc.readdir.argtypes = [ctypes.c_void_p]
_libc.closedir.argtypes = [ctypes.c_void_p]
DT_DIR, DT_REG = 4, 8


def raw_readdir(path):
    """[(name, d_ino, d_type)] straight from readdir(3), no stat fallback."""
    d = _libc.opendir(os.fsencode(path))
    assert d, f'opendir {path}: {os.strerror(ctypes.get_errno())}'
    out = []
    try:
        while True:
            ent = _libc.readdir(d)
            if not ent:
                break
            out.append((ent.contents.d_name.decode('utf-8', 'surrogateescape'), ent.contents.d_ino,
                        ent.contents.d_type))
    finally:
        _libc.closedir(d)
    return out


def test_shape_nlink_dtype_inodes_dotfiles(env):
    """st_nlink = 2 + subdirectories, real d_type, d_ino == st_ino, tmp/ empty, no dot-files."""
    for dirpath, dirnames, filenames in os.walk(env.root):
        st = os.stat(dirpath)
        assert st.st_nlink == 2 + len(dirnames), f'{dirpath}: nlink {st.st_nlink}, {len(dirnames)} subdirs'
        entries = raw_readdir(dirpath)
        names = [n for n, _, _ in entries]
        assert '.' in names and '..' in names
        for name, ino, dtype in entries:
            if name in ('.', '..'):
                continue
            assert not name.startswith('.'), f'{dirpath}/{name}: dot-file in the fs layout'
            lst = os.lstat(os.path.join(dirpath, name))
            assert lst.st_ino == ino, f'{dirpath}/{name}: d_ino {ino} != st_ino {lst.st_ino}'
            assert dtype == (DT_DIR if name in dirnames else DT_REG), f'{dirpath}/{name}: d_type {dtype}'
        if os.path.basename(dirpath) == 'tmp':
            assert not dirnames and not filenames, f'{dirpath}: tmp/ is not empty'
    # inode numbers are unique
    inos = {}
    for dirpath, dirnames, filenames in os.walk(env.root):
        for n in dirnames + filenames:
            ino = os.lstat(os.path.join(dirpath, n)).st_ino
            assert ino not in inos, f'inode {ino} twice: {inos.get(ino)} and {dirpath}/{n}'
            inos[ino] = os.path.join(dirpath, n)


def test_inodes_and_mtimes_stable_across_remount(env, tmp_path):
    """A second mount of the same cache shows the same inode numbers and mtimes."""
    def snapshot(root):
        snap = {}
        for dirpath, dirnames, filenames in os.walk(root):
            for n in dirnames + filenames:
                p = os.path.join(dirpath, n)
                st = os.lstat(p)
                snap[os.path.relpath(p, root)] = (st.st_ino, st.st_mtime_ns, st.st_size, st.st_nlink)
        return snap
    first = snapshot(env.root)
    with Mount(env.db, env.base / 'mnt-again') as m:
        second = snapshot(m.mountpoint)
    assert first == second
    assert len(first) > COUNT


def test_read_only_mount_answers_erofs_on_every_write(env, tmp_path):
    """--read-only keeps issue 4's behaviour: every write-ish call fails with EROFS
    (the writable default is tested in test_fs_write.py)."""
    with Mount(env.db, tmp_path / 'ro', extra=('--read-only',)) as m:
        root = Path(m.mountpoint)
        inbox = folder_path(root, 'INBOX')
        some = next(iter(folder_files(inbox).values()))[0]
        tries = {
            'open for write': lambda: os.open(some, os.O_WRONLY),
            'open rdwr': lambda: os.open(some, os.O_RDWR),
            'create in tmp': lambda: os.open(inbox / 'tmp' / 'x', os.O_CREAT | os.O_WRONLY, 0o644),
            'mkdir': lambda: os.mkdir(root / 'NewFolder'),
            'rmdir': lambda: os.rmdir(inbox / 'tmp'),
            'unlink': lambda: os.unlink(some),
            'rename (flag change)': lambda: os.rename(some, str(some) + 'S'),
            'rename to cur': lambda: os.rename(some, inbox / 'new' / some.name),
            'link': lambda: os.link(some, inbox / 'tmp' / 'l'),
            'symlink': lambda: os.symlink('x', inbox / 'tmp' / 's'),
            'mknod': lambda: os.mknod(inbox / 'tmp' / 'n'),
            'chmod': lambda: os.chmod(some, 0o600),
            'truncate': lambda: os.truncate(some, 0),
            'utime': lambda: os.utime(some, (0, 0)),
            'setxattr': lambda: os.setxattr(some, 'user.x', b'1'),
        }
        for what, fn in tries.items():
            with pytest.raises(OSError) as ei:
                fd = fn()
                if isinstance(fd, int):
                    os.close(fd)
            assert ei.value.errno == errno.EROFS, f'{what}: {ei.value}'
        # nothing changed
        assert some.exists()
    assert op_count(env.db) == 0


def test_warm_reads_send_acs_fs_no_open_flush_or_release(env, tmp_path):
    """Reading every message again costs acs-fs no open, flush or release request (the kernel
    answers from its page cache; bench/fs_bench.py's warm grep depends on it: a flush per
    close made it 2.5x slower). Counted in the FUSE debug output (-d) of a writable mount."""
    def read_all(root):
        n = 0
        for dirpath, _, filenames in os.walk(root):
            for name in filenames:
                with open(os.path.join(dirpath, name), 'rb') as f:
                    f.read()
                n += 1
        return n

    with Mount(env.db, tmp_path / 'dbg', extra=('-d',)) as m:
        assert read_all(m.mountpoint) == COUNT  # first reads: pages cached, opens stop
        read_all(m.mountpoint)
        before = len(m.log_text())
        files = read_all(m.mountpoint)
        window = m.log_text()[before:]
    counts = collections.Counter(re.findall(r'opcode: (\S+) \(', window))
    print(f'{files} files read warm: {dict(counts)}')
    assert counts['OPENDIR'] > 0, f'no requests seen in the debug output:\n{window[:2000]}'
    assert counts['OPEN'] == 0 and counts['FLUSH'] == 0 and counts['RELEASE'] == 0, \
        f'{files} files read warm: {dict(counts)}'


def op_count(db):
    import sqlite3
    with sqlite3.connect(f'file:{db}?mode=ro', uri=True, timeout=10) as con:
        return con.execute('SELECT count(*) FROM op').fetchone()[0]


# ---- real clients ----

def test_grep_finds_known_strings_in_the_right_folders(env):
    picked = {}
    for m in env.corpus.messages:
        if m.folder not in picked and m.message_id:
            picked[m.folder] = m
    assert len(picked) >= 3
    for folder, m in picked.items():
        mid = m.message_id.strip('<>')
        p = subprocess.run(['grep', '-rlF', mid, str(env.root)], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        hits = [Path(x) for x in p.stdout.splitlines()]
        fdir = folder_path(env.root, folder)
        assert hits and all(h.parent.parent == fdir for h in hits), f'{mid}: {hits} not in {fdir}'
        assert all(mid.encode() in h.read_bytes() for h in hits)


def notmuch_config(base, root):
    cfg = base / 'notmuch-config'
    db = base / 'notmuch-db'
    db.mkdir(exist_ok=True)
    cfg.write_text(f'[database]\npath={db}\nmail_root={root}\n[new]\ntags=new\n'
                   f'[maildir]\nsynchronize_flags=false\n')
    return {**os.environ, 'NOTMUCH_CONFIG': str(cfg)}


def test_notmuch_indexes_every_message_once(env):
    nenv = notmuch_config(env.base, env.root)
    p = subprocess.run(['notmuch', 'new'], env=nenv, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    n = subprocess.run(['notmuch', 'count', '--output=files', '*'], env=nenv, capture_output=True,
                       text=True, check=True).stdout.strip()
    assert int(n) == total(env.state), p.stdout + p.stderr
    again = subprocess.run(['notmuch', 'new'], env=nenv, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0
    assert 'No new mail.' in again.stdout, again.stdout + again.stderr


def test_mlist_lists_every_message(env):
    for folder, msgs in env.state.items():
        fdir = folder_path(env.root, folder)
        p = subprocess.run(['mlist', str(fdir)], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        assert len(p.stdout.splitlines()) == len(msgs), folder


def test_neomutt_opens_inbox_with_the_right_count(env):
    inbox = folder_path(env.root, 'INBOX')
    n = len(env.state['INBOX'])
    rc = env.base / 'muttrc'
    rc.write_text(f'set mbox_type=Maildir\nset folder="{env.root}"\nset spoolfile="{inbox}"\n'
                  f'set header_cache=""\nset read_only=yes\nset sort=date\n')
    sock = f'acsfs-{os.getpid()}'
    session = 'neomutt'
    subprocess.run(['tmux', '-L', sock, 'new-session', '-d', '-s', session, '-x', '200', '-y', '50',
                    f'neomutt -n -F {rc} -f {inbox}'], check=True, timeout=10)
    try:
        screen = ''

        def shows_count():
            nonlocal screen
            screen = subprocess.run(['tmux', '-L', sock, 'capture-pane', '-t', session, '-p'],
                                    capture_output=True, text=True).stdout
            return f'Msgs:{n}' in screen
        assert wait_for(shows_count, 20, 0.2) is not None, f'expected Msgs:{n}:\n{screen}'
    finally:
        subprocess.run(['tmux', '-L', sock, 'kill-server'], capture_output=True)


DOVECOT2_CONF = """\
protocols = imap
listen = 127.0.0.1
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
instance_name = acsfs-over-tree-{port}
first_valid_uid = 1
first_valid_gid = 1
default_internal_user = nobody
default_internal_group = nogroup
default_login_user = nobody
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
mail_location = maildir:{root}:LAYOUT=fs:UTF-8:INBOX={inbox}:INDEX={dir}/index/%u:CONTROL={dir}/control/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {dir}/users
}}
userdb {{
  driver = passwd-file
  args = {dir}/users
}}
namespace inbox {{
  inbox = yes
  separator = /
  prefix =
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""


def test_dovecot_over_the_tree_serves_the_same_mail(env):
    """A second Dovecot reading the mounted tree (indexes elsewhere) serves same counts, byte-identical bodies."""
    d = traversable_dir('acs-dv2-')
    try:
        port = paths.free_port()
        uid = pwd.getpwnam('nobody').pw_uid
        gid = grp.getgrnam('nogroup').gr_gid
        for sub in ('index', 'control', 'home', 'state', 'run'):
            (d / sub).mkdir()
        for sub in ('index', 'control', 'home'):
            os.chown(d / sub, uid, gid)
        (d / 'users').write_text(f'{USER}:{{PLAIN}}secret:{uid}:{gid}::{d}/home\n')
        conf = d / 'dovecot.conf'
        # a second mount of the same cache whose files Dovecot's user owns, so Dovecot sees a
        # writable tree (with the mount owner's 0755 it would treat every mailbox as read-only)
        mount = Mount(env.db, d / 'tree', extra=('--owner', f'{uid}:{gid}'))
        root = Path(mount.mountpoint)
        conf.write_text(DOVECOT2_CONF.format(dir=d, port=port, root=root,
                                             inbox=folder_path(root, 'INBOX')))
        in_new_before = sum(len(os.listdir(folder_path(root, f) / 'new')) for f in env.state)
        subprocess.run(['/usr/sbin/dovecot', '-c', str(conf)], check=True, timeout=20)
        try:
            assert wait_for(lambda: paths.port_open(port), 10), 'second Dovecot did not listen'
            c = imaplib.IMAP4('127.0.0.1', port)
            c.login(USER, 'secret')
            log_file = d / 'dovecot.log'
            # EXAMINE first (a reader), then SELECT (Dovecot then tries to move new/ mail to cur/)
            for readonly in (True, False):
                for folder, msgs in env.state.items():
                    typ, data = c.select('"' + mutf7.encode(folder) + '"', readonly=readonly)
                    assert typ == 'OK', f'{folder}: {data}'
                    assert int(data[0]) == len(msgs), f'{folder}: Dovecot over the tree counts {data[0]}'
                    want = sorted(body for _, _, _, body in msgs)
                    got = []
                    if msgs:
                        typ, data = c.fetch('1:*', '(BODY.PEEK[])')
                        assert typ == 'OK'
                        got = sorted(part[1] for part in data if isinstance(part, tuple))
                    assert got == want, f'{folder}: bodies differ'
                errors = [line for line in log_file.read_text(errors='replace').splitlines() if 'Error' in line]
                # the tree is writable now: no errors at all. On SELECT Dovecot moves new/ mail
                # to cur/ (renames without a flag change): state changes, nothing for the server
                assert not errors, '\n'.join(errors[:20])
                assert op_count(env.db) == 0
            c.logout()
            in_new = sum(len(os.listdir(folder_path(root, f) / 'new')) for f in env.state)
            print(f'Dovecot over the writable tree: {in_new_before} messages in new/ before SELECT, '
                  f'{in_new} after')
            assert in_new_before > 0 and in_new < in_new_before  # its renames went through
        finally:
            pidf = d / 'run' / 'master.pid'
            if pidf.exists():
                pid = int(pidf.read_text())
                os.kill(pid, signal.SIGTERM)
                wait_for(lambda: not os.path.exists(f'/proc/{pid}'), 10)
            mount.stop_clean()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_maildirpp_layout_works_for_mblaze(env):
    """--layout maildir++: INBOX at the root, .Folder.Sub directories; mdirs finds them all, mlist counts."""
    with Mount(env.db, env.base / 'mnt-pp', layout='maildir++') as m:
        root = Path(m.mountpoint)
        p = subprocess.run(['mdirs', str(root)], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        found = {os.path.normpath(x) for x in p.stdout.splitlines()}
        want = {os.path.normpath(folder_path(root, f, 'maildir++')) for f in env.state}
        assert found == want
        for folder, msgs in env.state.items():
            fdir = folder_path(root, folder, 'maildir++')
            out = subprocess.run(['mlist', str(fdir)], capture_output=True, text=True, check=True).stdout
            assert len(out.splitlines()) == len(msgs), folder
            assert os.stat(fdir).st_nlink == 2 + sum(1 for e in os.scandir(fdir) if e.is_dir())


def test_sigterm_unmounts_cleanly(env):
    m = Mount(env.db, env.base / 'mnt-term')
    try:
        assert os.path.ismount(m.mountpoint)
        os.kill(m.pid, signal.SIGTERM)
        m.proc.wait(timeout=10)
        assert m.proc.returncode == 0, m.log_text()
        assert not os.path.ismount(m.mountpoint)
    finally:
        m.stop()


def test_fusermount_unmounts_cleanly(env):
    m = Mount(env.db, env.base / 'mnt-fu')
    try:
        subprocess.run(['fusermount3', '-u', m.mountpoint], check=True, timeout=10)
        m.proc.wait(timeout=10)
        assert m.proc.returncode == 0, m.log_text()
    finally:
        m.stop()
