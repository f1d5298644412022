# SPDX-License-Identifier: MIT
"""Issue 5: randomized, seeded convergence test. Local writes through the tree, server-side
changes by a second IMAP client, network disconnects, Dovecot stops and kill -9 of acs-syncd
and acs-fs are interleaved at random; after quiescence the server equals the tree and the contract held.

One Dovecot and one acs instance serve all seeds; each seed works in its own folders
(`L<seed>...` local-owned, `R<seed>...` server-owned), removed on the server at its end.
Seeds: ACS_CONVERGE_SEEDS=a..b (or a,b,c); default 1..DEFAULT_SEEDS. A failure names the
seed and the command that replays it. tests/tools/converge-soak runs 10,000 seeds.

The random operations are chosen so that the contract fixes the outcome whatever order
the replay and the server's changes end up in (docs/testing.md, "Convergence"):
- local-owned messages (seeded in L folders, appended through the tree) get local flag
  changes on \\Flagged \\Seen \\Draft only, local moves between L folders, unlinks;
- server-owned messages (R folders) are changed only by the second client (flags, moves
  between R folders, expunges, appends);
- crossings, each with one outcome in every order: the server sets \\Answered / $label1 on
  local-owned messages of the pinned folder (never moved) -> other flags follow the
  server, local deltas survive; while acs-syncd is dead, the server expunges the source
  copy of a message moved locally -> it must still arrive in the target exactly once
  (re-append), and the server deletes an R folder (after expunging its own messages, only
  if it is empty) into which the tree then appends -> the folder comes back with it.
- kill -9 of acs-fs between writes or 0-4 ms into one: the tree then shows that write
  wholly done or not at all (done if the call succeeded); the model follows the tree.
Checked at the end: server == tree (folders, uids, flags, dates, bodies); every message
the model keeps is on the server exactly once, in its folder, with its flags and date
(local deltas applied, moves not lost, appends once, no deletion no op asked for); no
message the model does not expect; the folder set of the seed is what the model says.
"""

import imaplib
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from acstest import fusecheck, mutf7, procs
from acstest.dovecot import Dovecot
from acstest.instance import Instance, diff_states, split_name

USER = 'conv'
DEFAULT_SEEDS = 100
CHUNK = 25
STEPS = 24
QUIESCE = 60.0
APPEAR = 15.0
LOCAL_FLAGS = {'F': '\\Flagged', 'S': '\\Seen', 'D': '\\Draft'}
SERVER_FLAGS = ('\\Answered', '$label1')
MID_RE = re.compile(rb'Message-ID: <([^>]+)>', re.I)
HANG = 10.0   # seconds a killed acs-fs and the call it was serving get to end
DYING = 1.0   # seconds a killed acs-fs gets before it counts as stuck while dying (acsd: the same)


def fs_threads(pid):
    """'tid state kernel-function' of each thread of a (dying) process."""
    out = []
    try:
        for t in sorted(os.listdir(f'/proc/{pid}/task')):
            try:
                state = open(f'/proc/{pid}/task/{t}/stat').read().rsplit(')', 1)[1].split()[0]
                wchan = open(f'/proc/{pid}/task/{t}/wchan').read().strip()
            except OSError:
                continue
            out.append(f'{t} {state} {wchan}')
    except OSError:
        pass
    return out


def abort_mount(path):
    """Aborts a FUSE connection whose daemon cannot answer any more: umount -f (FUSE's
    umount_begin aborts the connection, so blocked calls return ENOTCONN and a daemon
    thread stuck in the kernel can exit), then a lazy unmount."""
    subprocess.run(['umount', '-f', str(path)], stdin=subprocess.DEVNULL, capture_output=True)
    subprocess.run(['umount', '-l', str(path)], stdin=subprocess.DEVNULL, capture_output=True)


def reset_connections(dv):
    """Resets every TCP connection to Dovecot's ports, as a network failure would (the
    kernel aborts the client side and sends the server a RST); returns how many."""
    n = 0
    for port in (dv.imap_port, dv.imaps_port):
        r = subprocess.run(['ss', '-H', '-t', '-K', 'dst', '127.0.0.1', 'dport', '=', str(port)],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f'ss -K failed ({r.returncode}): {r.stderr.strip()}')
        n += len([ln for ln in r.stdout.splitlines() if ln.strip()])
    return n


def parse_seeds(text):
    out = []
    for part in text.split(','):
        part = part.strip()
        if '..' in part:
            a, b = part.split('..')
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


SEEDS = parse_seeds(os.environ.get('ACS_CONVERGE_SEEDS', f'1..{DEFAULT_SEEDS}'))
CHUNKS = [SEEDS[i:i + CHUNK] for i in range(0, len(SEEDS), CHUNK)]


def imap(folder):
    return '"' + mutf7.imap_name(folder, '.').replace('\\', '\\\\').replace('"', '\\"') + '"'


class Msg:
    def __init__(self, mid, owner, folder, flags, date, body, pinned=False):
        self.mid = mid
        self.owner = owner          # 'L' local-owned, 'S' server-owned
        self.folder = folder
        self.flags = set(flags)
        self.date = date
        self.body = body
        self.pinned = pinned        # L message of the pinned folder (server may set flags)
        self.uniq = None            # unique part of its tree file name, when known
        self.moved_from = []        # folder names (as they were) it was moved out of


def make_body(seed, k, subject):
    mid = f's{seed}-m{k}@conv.test'
    body = (f'From: x{k}@example.org\r\nTo: {USER}@example.org\r\nSubject: {subject}\r\n'
            f'Message-ID: <{mid}>\r\n\r\nseed {seed} message {k}\r\n').encode()
    return mid, body


class Env:
    pass


@pytest.fixture(scope='module')
def env():
    fusecheck.require_fuse()
    e = Env()
    e.base = Path(tempfile.mkdtemp(prefix='acs-conv-', dir='/tmp'))
    os.chmod(e.base, 0o755)
    e.dv = Dovecot(e.base / 'dovecot', users={USER: 'pw'})
    e.inst = None
    e.aborts = 0
    try:
        # --poll 1: each seed creates and deletes ~8 folders, which soon rotates Dovecot's
        # mailbox list index log; after that Dovecot's NOTIFY stays silent for some
        # mailboxes for up to ~30 s (docs/sync.md, "Server behaviour"). The poll bounds that
        # for existing mailboxes (push latency is not what this test measures). It does not
        # read the mailbox list: a folder created on the server then stays unseen (seen in
        # this test: > 60 s), and the seed fails, as it should.
        e.inst = Instance(e.dv, USER, e.base / 'acs', syncd_args=('--poll', '1'))
        yield e
    finally:
        try:
            if e.inst:
                e.inst.stop()
        finally:
            e.dv.close()
            if os.environ.get('ACS_KEEP_TMP') != '1':
                shutil.rmtree(e.base, ignore_errors=True)


class Server:
    """The second IMAP client (reconnects after a Dovecot restart)."""

    def __init__(self, dv):
        self.dv = dv
        self.c = None

    def client(self):
        if self.c is None:
            self.c = self.dv.client(USER)
        return self.c

    def close(self):
        if self.c is not None:
            try:
                self.c.logout()
            except Exception:  # noqa: BLE001
                pass
            self.c = None

    def create(self, name):
        """CREATE of a name never used before. Dovecot 2.3 now and then answers such a
        CREATE with ALREADYEXISTS although it did create the folder (3 times in ~6,000
        seeds, also with no other session touching folders): when the name is then listed,
        it counts as created (returns a remark for the log); any other refusal raises."""
        c = self.client()
        typ, data = c.create(imap(name))
        if typ != 'OK' and b'ALREADYEXISTS' in b' '.join(d for d in data if isinstance(d, bytes)):
            t2, lst = c.list('""', imap(name))
            if t2 == 'OK' and lst and lst[0] is not None:
                return ' (Dovecot answered ALREADYEXISTS, but created it)'
        self.ok(typ, data, f'CREATE {name}')
        return ''

    def ok(self, typ, data, what):
        if typ != 'OK':
            raise RuntimeError(f'{what}: {typ} {data}')
        return data

    def find(self, folder, mid):
        """UIDs of messages with Message-ID mid in folder (selected read-write), or None if
        the folder does not exist."""
        c = self.client()
        typ, data = c.select(imap(folder))
        if typ != 'OK':
            return None
        typ, data = c.uid('SEARCH', 'HEADER', 'Message-ID', f'<{mid}>')
        self.ok(typ, data, f'SEARCH {mid}')
        return [int(u) for u in data[0].split()]

    def count(self, folder):
        c = self.client()
        typ, data = c.select(imap(folder), readonly=True)
        if typ != 'OK':
            return None
        n = int(data[0])
        c.unselect()
        return n


class Run:
    """One seed: the model, the random walk, the final checks."""

    def __init__(self, e, seed):
        self.e = e
        self.inst = e.inst
        self.dv = e.dv
        self.seed = seed
        self.rng = random.Random(seed)
        self.srv = Server(e.dv)
        self.msgs = {}              # mid -> Msg (the model's live messages)
        self.gone = set()           # mids deleted by an op
        self.folders = {}           # name -> 'L' | 'S' | 'P' (pinned L)
        self.deleted = set()        # R folders deleted on the server
        self.syncd_dead = False
        self.dead_deletes = set()   # R folders deleted while acs-syncd is dead (tree still shows them)
        self.server_down = False
        self.k = 0
        self.log = []

    # ---- helpers ----
    def note(self, text):
        self.log.append(text)

    def new_mid(self, subject):
        self.k += 1
        return make_body(self.seed, self.k, subject)

    def fdir(self, folder):
        return self.inst.folder_dir(folder)

    def locate(self, m):
        """Path of m's file in the tree (by unique part, else by contents)."""
        d = self.fdir(m.folder)
        if m.uniq:
            for sub in ('cur', 'new'):
                for n in os.listdir(d / sub):
                    if split_name(n)[0] == m.uniq:
                        return d / sub / n
        needle = f'<{m.mid}>'.encode()
        for sub in ('cur', 'new'):
            for n in os.listdir(d / sub):
                p = d / sub / n
                try:
                    if needle in p.read_bytes():
                        m.uniq = split_name(n)[0]
                        return p
                except FileNotFoundError:
                    pass
        raise FileNotFoundError(f'{m.mid} not found in the tree folder {m.folder}')

    def local_msgs(self, pinned=None):
        return [m for m in self.msgs.values() if m.owner == 'L' and self.folders.get(m.folder) in ('L', 'P')
                and (pinned is None or m.pinned == pinned)]

    # ---- setup ----
    def setup(self):
        s = self.seed
        L = [f'L{s}a', f'L{s}a/k', f'L{s}b']
        P = f'L{s}p'
        R = [f'R{s}a', f'R{s}b']
        c = self.srv.client()
        for f in L + [P] + R:
            how = self.srv.create(f)
            if how:
                self.note(f'setup: create {f}{how}')
            self.folders[f] = 'P' if f == P else ('S' if f in R else 'L')
        date = 1600000000 + s * 1000
        plan = [(f, 'L') for f in L for _ in range(self.rng.randint(1, 3))]
        plan += [(P, 'L')] * 2 + [(f, 'S') for f in R for _ in range(2)]
        for folder, owner in plan:
            mid, body = self.new_mid('seeded')
            date += 1
            flags = set(self.rng.sample(sorted(LOCAL_FLAGS.values()), self.rng.randint(0, 2)))
            if owner == 'S' and self.rng.random() < 0.5:
                flags.add('\\Answered')
            m = Msg(mid, owner, folder, flags, date, body, pinned=folder == P)
            self.srv.ok(*c.append(imap(folder), '(' + ' '.join(sorted(flags)) + ')',
                                  imaplib.Time2Internaldate(date), body), f'APPEND {folder}')
            self.msgs[mid] = m
        self.srv.close()
        # wait until the tree shows every seeded message
        deadline = time.monotonic() + APPEAR
        while True:
            missing = []
            for m in self.msgs.values():
                try:
                    self.locate(m)
                except (AssertionError, FileNotFoundError):
                    missing.append(m.mid)
            if not missing:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f'seeded messages not in the tree after {APPEAR} s: {missing[:5]}')
            time.sleep(0.02)

    # ---- local operations (through the tree) ----
    # Each l_* chooses an operation and returns (description, act, probe, commit) or None:
    # act() does it through the tree, probe() tells from the tree whether it is done (True),
    # not done (False), or raises when the tree shows something in between; commit()
    # records it in the model. run_local() runs one, possibly killing acs-fs during act().

    def retry(self, fn):
        """fn(), again after a FileNotFoundError: acs renamed the file meanwhile (a server
        flag change arriving), and a client looks again, as Maildir clients do."""
        for attempt in range(20):
            try:
                return fn()
            except FileNotFoundError:
                if attempt == 19:
                    raise
                time.sleep(0.01)

    def where(self, m, folder):
        """Path of m's file (by unique part) in folder, or None."""
        d = self.fdir(folder)
        for sub in ('cur', 'new'):
            for n in os.listdir(d / sub):
                if split_name(n)[0] == m.uniq:
                    return d / sub / n
        return None

    def l_flags(self):
        ms = self.local_msgs()
        if not ms:
            return None
        m = self.rng.choice(ms)
        letter = self.rng.choice(sorted(LOCAL_FLAGS))
        had = LOCAL_FLAGS[letter] in m.flags

        def act():
            p = self.locate(m)
            letters = set(split_name(p.name)[1] or '') ^ {letter}
            os.rename(p, self.fdir(m.folder) / 'cur' / (m.uniq + ':2,' + ''.join(sorted(letters))))

        def probe():
            return (letter in (split_name(self.locate(m).name)[1] or '')) != had

        def commit():
            m.flags ^= {LOCAL_FLAGS[letter]}
        return f'local flags {m.mid} ^{letter}', act, probe, commit

    def l_move(self):
        ms = self.local_msgs(pinned=False)
        targets = [f for f, o in self.folders.items() if o == 'L']
        if not ms or len(targets) < 2:
            return None
        m = self.rng.choice(ms)
        t = self.rng.choice([f for f in targets if f != m.folder])
        src = m.folder

        def act():
            p = self.locate(m)
            os.rename(p, self.fdir(t) / 'cur' / p.name)

        def probe():
            a, b = self.where(m, src), self.where(m, t)
            assert (a is None) != (b is None), f'{m.mid} in {src}: {a}, in {t}: {b}'
            return b is not None

        def commit():
            m.moved_from.append(src)
            m.folder = t
        return f'local move {m.mid} {src} -> {t}', act, probe, commit

    def l_unlink(self):
        ms = self.local_msgs()
        if not ms:
            return None
        m = self.rng.choice(ms)

        def commit():
            del self.msgs[m.mid]
            self.gone.add(m.mid)
        return (f'local unlink {m.mid}', lambda: os.unlink(self.locate(m)),
                lambda: self.where(m, m.folder) is None, commit)

    def l_append(self):
        targets = [f for f, o in self.folders.items() if o in ('L', 'P')]
        # an R folder too: one that exists, or one the server deleted while acs-syncd is dead
        rs = [f for f, o in self.folders.items() if o == 'S' and (f not in self.deleted or f in self.dead_deletes)
              and (self.fdir(f) / 'tmp').is_dir()]   # a new R folder shows once acs-syncd saw it
        if rs and self.rng.random() < 0.3:
            targets = rs
        t = self.rng.choice(targets)
        mid, body = self.new_mid('appended')
        date = 1650000000 + self.seed * 1000 + self.k
        letters = ''.join(sorted(self.rng.sample(sorted(LOCAL_FLAGS), self.rng.randint(0, 2))))
        uniq = f'{date}.A{self.k}S{self.seed}.conv'
        sync = self.rng.random() < 0.5
        into_new = not letters and self.rng.random() < 0.5
        m = Msg(mid, 'L', t, {LOCAL_FLAGS[c] for c in letters}, date, body, pinned=self.folders[t] == 'P')
        m.uniq = uniq

        def act():
            tmp = self.fdir(t) / 'tmp' / uniq
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, body.replace(b'\r\n', b'\n'))
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.utime(tmp, (date, date))
            if into_new:
                os.rename(tmp, self.fdir(t) / 'new' / uniq)
            else:
                os.rename(tmp, self.fdir(t) / 'cur' / f'{uniq}:2,{letters}')

        def commit():
            self.msgs[mid] = m

        def probe():
            if self.where(m, t) is not None:
                return True
            # not appended (acs-fs was killed before the commit): the file may still be in
            # tmp/, where it would keep the folder from being removed; the writer gives the
            # delivery up and removes it, as a Maildir writer does with a failed delivery
            try:
                os.unlink(self.fdir(t) / 'tmp' / uniq)
            except FileNotFoundError:
                pass
            return False
        return (f'local append {mid} -> {t} {letters or ("new/" if into_new else "")}', act, probe, commit)

    def l_mkdir(self):
        parents = [None] + [f for f, o in self.folders.items() if o == 'L' and '/' not in f]
        parent = self.rng.choice(parents)
        self.k += 1
        name = f'L{self.seed}m{self.k}' if parent is None else f'{parent}/m{self.k}'

        def commit():
            self.folders[name] = 'L'
        return (f'local mkdir {name}', lambda: os.mkdir(self.inst.tree / name),
                lambda: (self.inst.tree / name / 'cur').is_dir(), commit)

    def l_rmdir(self):
        cands = [f for f, o in self.folders.items() if o == 'L'
                 and not any(m.folder == f for m in self.msgs.values())
                 and not any(g.startswith(f + '/') for g in self.folders)]
        if not cands:
            return None
        f = self.rng.choice(cands)
        d = self.fdir(f)

        def commit():
            del self.folders[f]
        return f'local rmdir {f}', lambda: os.rmdir(d), lambda: not d.exists(), commit

    def l_rename(self):
        cands = [f for f, o in self.folders.items() if o == 'L' and '/' not in f]
        if not cands:
            return None
        f = self.rng.choice(cands)
        self.k += 1
        new = f'L{self.seed}r{self.k}'
        old_dir, new_dir = self.fdir(f), self.inst.tree / new

        def probe():
            a, b = (old_dir / 'cur').is_dir(), (new_dir / 'cur').is_dir()
            assert a != b, f'folder rename {f} -> {new}: old there {a}, new there {b}'
            return b

        def commit():
            for g in [g for g in self.folders if g == f or g.startswith(f + '/')]:
                h = new + g[len(f):]
                self.folders[h] = self.folders.pop(g)
                for m in self.msgs.values():
                    if m.folder == g:
                        m.folder = h
        return f'local rename {f} -> {new}', lambda: os.rename(old_dir, new_dir), probe, commit

    def run_local(self, choose, kill=False):
        """Runs one local operation; with kill=True acs-fs gets SIGKILL 0-4 ms into it, is
        mounted again, and the tree must show the operation wholly done or not at all (a
        call that answered success must be done); the model follows what the tree shows."""
        spec = choose()
        if spec is None:
            return
        desc, act, probe, commit = spec
        if not kill:
            self.retry(act)
            commit()
            self.note(desc)
            return
        fs = self.inst.fs
        timer = threading.Timer(self.rng.uniform(0, 0.004), os.kill, (fs.pid, signal.SIGKILL))
        res = {}

        def run_act():
            try:
                act()
            except OSError as e:
                res['err'] = e
        worker = threading.Thread(target=run_act, daemon=True)
        timer.start()
        worker.start()
        timer.join()
        aborted = ''
        try:
            fs.wait(timeout=DYING)
        except subprocess.TimeoutExpired:
            # A SIGKILL while the kernel holds a directory lock for a call acs-fs will never
            # answer, and acs-fs's watcher thread waits in fuse_reverse_inval_entry for that
            # lock: the process cannot finish dying until its FUSE connection is aborted,
            # which is what acsd does for a dying acs-fs (docs/fs.md, "Killed mid-call").
            threads = fs_threads(fs.pid)
            if any('fuse_reverse_inval' in t for t in threads) and fusecheck.abort_connection(self.inst.tree):
                aborted = ' (dying acs-fs stuck in fuse_reverse_inval_entry: FUSE connection aborted, as acsd does)'
        try:
            fs.wait(timeout=HANG)
            dead = True
        except subprocess.TimeoutExpired:
            dead = False
        worker.join(HANG)
        hung = worker.is_alive()
        if hung or not dead:
            threads = fs_threads(fs.pid)
            abort_mount(self.inst.tree)
            worker.join(HANG)
            raise AssertionError(
                f'{desc}: acs-fs got SIGKILL during the call and {"did not exit" if not dead else "exited"}'
                f'{", the call hung" if hung else ""} (threads left: {threads}){aborted}; the FUSE '
                f'connection had to be aborted (umount -f)')
        err = res.get('err')
        self.inst.kill_fs()     # reaps it and unmounts the dead mount
        self.inst.start_fs()
        done = probe()
        if err is None:
            assert done, f'{desc}: the call succeeded before acs-fs was killed, but the tree does not show it'
        if done:
            commit()
        self.note(f'{desc} with acs-fs killed during it: call {"ok" if err is None else err.strerror}, '
                  f'{"done" if done else "not done"}{aborted}')
        if aborted:
            self.e.aborts += 1

    # ---- server operations (second client) ----
    def s_msgs(self):
        return [m for m in self.msgs.values() if m.owner == 'S']

    def s_flags(self):
        ms = self.s_msgs()
        if not ms:
            return
        m = self.rng.choice(ms)
        flag = self.rng.choice(SERVER_FLAGS + ('\\Seen', '\\Flagged'))
        self._store(m, flag)

    def s_pinned_flags(self):
        ms = [m for m in self.local_msgs(pinned=True)]
        if not ms:
            return
        m = self.rng.choice(ms)
        self._store(m, self.rng.choice(SERVER_FLAGS))

    def _store(self, m, flag):
        uids = self.srv.find(m.folder, m.mid)
        if not uids:    # a local append not replayed yet
            self.note(f'server flags {m.mid}: not on the server yet')
            return
        assert len(uids) == 1, f'{m.mid}: {len(uids)} copies in {m.folder} on the server'
        op = '-FLAGS' if flag in m.flags else '+FLAGS'
        self.srv.ok(*self.srv.client().uid('STORE', str(uids[0]), op, f'({flag})'), 'STORE')
        m.flags ^= {flag}
        self.note(f'server {op} {flag} {m.mid}')

    def s_move(self):
        ms = self.s_msgs()
        rs = [f for f, o in self.folders.items() if o == 'S' and f not in self.deleted]
        if not ms or len(rs) < 2:
            return
        m = self.rng.choice(ms)
        t = self.rng.choice([f for f in rs if f != m.folder])
        uids = self.srv.find(m.folder, m.mid)
        assert uids and len(uids) == 1, f'server-owned {m.mid} not once in {m.folder}: {uids}'
        self.srv.ok(*self.srv.client().uid('MOVE', str(uids[0]), imap(t)), 'MOVE')
        self.note(f'server move {m.mid} {m.folder} -> {t}')
        m.folder = t

    def _expunge(self, folder, uid):
        c = self.srv.client()
        self.srv.ok(*c.uid('STORE', str(uid), '+FLAGS.SILENT', '(\\Deleted)'), 'STORE \\Deleted')
        self.srv.ok(*c.uid('EXPUNGE', str(uid)), 'UID EXPUNGE')

    def s_expunge(self):
        ms = self.s_msgs()
        if not ms:
            return
        m = self.rng.choice(ms)
        uids = self.srv.find(m.folder, m.mid)
        assert uids and len(uids) == 1, f'server-owned {m.mid} not once in {m.folder}: {uids}'
        self._expunge(m.folder, uids[0])
        del self.msgs[m.mid]
        self.gone.add(m.mid)
        self.note(f'server expunge {m.mid}')

    def s_append(self):
        rs = [f for f, o in self.folders.items() if o == 'S' and f not in self.deleted]
        if not rs:
            return
        t = self.rng.choice(rs)
        mid, body = self.new_mid('server append')
        date = 1660000000 + self.seed * 1000 + self.k
        flags = {'\\Answered'} if self.rng.random() < 0.5 else set()
        self.srv.ok(*self.srv.client().append(imap(t), '(' + ' '.join(flags) + ')',
                                              imaplib.Time2Internaldate(date), body), 'APPEND')
        self.msgs[mid] = Msg(mid, 'S', t, flags, date, body)
        self.note(f'server append {mid} -> {t}')

    def s_cross_expunge(self):
        """The server expunges the source copy of a message moved locally (if still there).
        Only while acs-syncd is dead: STORE \\Deleted + UID EXPUNGE are two commands, and a
        replayed UID MOVE between them would carry the \\Deleted flag to the target (right by
        IMAP, but not the crossing this step is about)."""
        if not self.syncd_dead:
            return
        ms = [m for m in self.local_msgs(pinned=False) if m.moved_from]
        if not ms:
            return
        m = self.rng.choice(ms)
        src = m.moved_from[-1]
        uids = self.srv.find(src, m.mid)
        if not uids:
            self.note(f'server cross-expunge {m.mid}: not in {src} (any more)')
            return
        for u in uids:
            self._expunge(src, u)
        self.note(f'server cross-expunge {m.mid} in {src} (uids {uids})')

    def s_create(self):
        """Only while no folder op of the tree (CREATE/DELETE/RENAME) waits to be replayed:
        Dovecot 2.3 handles a CREATE racing another session's RENAME badly (seen in soaks:
        answered ALREADYEXISTS for a new name, or answered OK and the folder never listed
        again; neither is acs's doing), so the test keeps that race out of its model."""
        if not self.syncd_dead and any(op['kind'] in (5, 6, 7) for op in self.inst.ops()):
            return
        self.k += 1
        name = f'R{self.seed}c{self.k}'
        how = self.srv.create(name)
        self.folders[name] = 'S'
        self.note(f'server create {name}{how}')

    def s_delete(self):
        """Only while acs-syncd is dead: expunge own messages, then DELETE if empty."""
        if not self.syncd_dead:
            return
        rs = [f for f, o in self.folders.items() if o == 'S' and f not in self.deleted]
        if not rs:
            return
        f = self.rng.choice(rs)
        for m in [m for m in self.s_msgs() if m.folder == f]:
            uids = self.srv.find(f, m.mid)
            assert uids and len(uids) == 1, f'server-owned {m.mid} not once in {f}: {uids}'
            self._expunge(f, uids[0])
            del self.msgs[m.mid]
            self.gone.add(m.mid)
        n = self.srv.count(f)
        if n:
            self.note(f'server delete {f}: skipped, {n} message(s) from the tree in it')
            return
        self.srv.ok(*self.srv.client().delete(imap(f)), f'DELETE {f}')
        self.deleted.add(f)
        self.dead_deletes.add(f)
        self.note(f'server delete {f}')

    # ---- faults ----
    def kill_syncd(self):
        if not self.syncd_dead:
            self.inst.kill_syncd()
            self.syncd_dead = True
            self.note('kill -9 acs-syncd')

    def start_syncd(self):
        if self.syncd_dead:
            self.inst.start_syncd()
            self.syncd_dead = False
            self.dead_deletes.clear()
            self.note('start acs-syncd')

    def kill_fs(self):
        self.inst.kill_fs()
        self.inst.start_fs()
        self.note('kill -9 acs-fs, mounted again')

    def server_crash(self):
        """The server goes away for acs-syncd: half the time a network disconnect (every TCP
        connection to Dovecot is reset with `ss -K`; Dovecot stays up, and acs-syncd sees the
        reset a crashed server gives), else a clean stop (Dovecot's own shutdown, ~1.1 s) that
        keeps it down until a later step starts it again. Never SIGKILL: Dovecot 2.3 does not
        keep its own state across one (seen in soaks: its mailbox list index corrupted for
        good, "duplicate transaction log sequence", so new folders stay unlisted; a folder
        deleted just before the kill still listed but "deleted under us"; a flag a client
        had been told was stored lost), and that would test Dovecot, not acs."""
        if self.server_down:
            return
        self.srv.close()
        if self.rng.random() < 0.5:
            self.dv.stop()
            self.note('Dovecot stopped')
            self.server_down = True
        else:
            n = reset_connections(self.dv)
            self.note(f'network disconnect: {n} connection(s) to Dovecot reset')

    def server_start(self):
        if self.server_down:
            try:
                self.dv.start()
            except RuntimeError as e:
                # seen once in ~1,000 kills: a child Dovecot forked while Dovecot.kill() ran
                # survives it and keeps a login socket ("Dovecot is already running?"); kill
                # the stragglers of this test's Dovecot (titles dovecot-acstest-<pid>/) and
                # start again
                left = procs.sweep()
                self.note(f'Dovecot start failed ({str(e).splitlines()[0][:120]}); '
                          f'killed stragglers {left}, starting again')
                self.dv.start()
            self.server_down = False
            self.note('Dovecot started')

    # ---- the walk ----
    def walk(self):
        local = [(self.l_flags, 20), (self.l_move, 12), (self.l_unlink, 5), (self.l_append, 10),
                 (self.l_mkdir, 3), (self.l_rmdir, 3), (self.l_rename, 3)]
        server = [(self.s_flags, 6), (self.s_pinned_flags, 5), (self.s_move, 4), (self.s_expunge, 3),
                  (self.s_append, 5), (self.s_cross_expunge, 10), (self.s_create, 2), (self.s_delete, 6)]
        faults = [(self.kill_syncd, 4), (self.start_syncd, 5), (self.kill_fs, 1), (self.kill_fs_during, 2),
                  (self.server_crash, 2), (self.server_start, 5)]
        lfns = {f for f, _ in local}
        sfns = {f for f, _ in server}
        for _ in range(STEPS):
            choices = local + faults + ([] if self.server_down else server)
            fn = self.rng.choices([f for f, _ in choices], [w for _, w in choices])[0]
            if fn in lfns:
                self.run_local(fn)
            elif fn in sfns:
                self.run_server(fn)
            else:
                fn()
            pause = self.rng.choice((0, 0, 0, 0.002, 0.01, 0.03))
            if pause:
                time.sleep(pause)

    def run_server(self, fn):
        """One server operation. The second client leaves no mailbox selected afterwards:
        Dovecot ends a session whose selected mailbox was renamed meanwhile (a replayed local
        rename) with "BYE IMAP session state is inconsistent, please relogin" at its next
        command, before running it; should that still happen (the rename raced the
        operation's own SELECT), the client logs in again and the operation is skipped."""
        try:
            fn()
            c = self.srv.c
            if c is not None and c.state == 'SELECTED':
                c.unselect()
        except imaplib.IMAP4.abort as ex:
            if 'relogin' not in str(ex):
                raise
            self.srv.close()
            self.note(f'{fn.__name__}: Dovecot ended the session before the command ({ex}); skipped')

    def kill_fs_during(self):
        fn = self.rng.choices([self.l_flags, self.l_move, self.l_unlink, self.l_append, self.l_mkdir,
                               self.l_rmdir, self.l_rename], [4, 4, 2, 4, 1, 1, 1])[0]
        self.run_local(fn, kill=True)

    def quiesce(self):
        self.server_start()
        self.start_syncd()
        self.srv.close()
        self.inst.wait_quiescent(QUIESCE, interval=0.05)

    # ---- checks ----
    def expected_folders(self):
        out = set()
        for f, o in self.folders.items():
            if f in self.deleted:
                if any(m.folder == f for m in self.msgs.values()):
                    out.add(f)   # recreated by a local append (or never deleted)
            else:
                out.add(f)
        return out

    def check(self):
        server = self.inst.server_state(bodies=True)
        tree = self.inst.tree_state(bodies=True)
        diff = diff_states(server, tree, names=('server', 'tree'))
        assert not diff, 'server and tree differ:\n' + '\n'.join(diff)
        mine = {f: v for f, v in server.items() if re.match(rf'[LR]{self.seed}[a-z]', f)}
        problems = []
        want_folders = self.expected_folders()
        for f in sorted(set(mine) ^ want_folders):
            problems.append(f'folder {f}: {"on the server but not expected" if f in mine else "expected but missing"}')
        seen = {}
        for f, rows in mine.items():
            for uid, flags, date, body in rows:
                mm = MID_RE.search(body or b'')
                mid = mm.group(1).decode() if mm else f'(no Message-ID, uid {uid})'
                seen.setdefault(mid, []).append((f, flags, date, body))
        for mid, m in self.msgs.items():
            got = seen.pop(mid, [])
            if len(got) != 1:
                problems.append(f'{mid} ({m.owner}, expected in {m.folder}): {len(got)} copies '
                                f'{[g[0] for g in got]}')
                continue
            f, flags, date, body = got[0]
            if f != m.folder:
                problems.append(f'{mid}: in {f}, expected in {m.folder}')
            if set(flags) != m.flags:
                problems.append(f'{mid} in {f}: flags {sorted(flags)}, expected {sorted(m.flags)}')
            if date != m.date:
                problems.append(f'{mid}: internaldate {date}, expected {m.date}')
            if body != m.body:
                problems.append(f'{mid}: body differs')
        for mid, got in seen.items():
            why = 'deleted by an op' if mid in self.gone else 'unknown'
            problems.append(f'{mid} ({why}) is on the server in {[g[0] for g in got]}')
        assert not problems, '\n'.join(problems[:25])

    def cleanup(self):
        c = self.srv.client()
        names = [f for f in imapcheck_folders(c) if re.match(rf'[LR]{self.seed}[a-z]', f)]
        for f in sorted(names, key=lambda n: -n.count('/')):
            c.delete(imap(f))
        self.srv.close()


def imapcheck_folders(c):
    from acstest import imapcheck
    return list(imapcheck.list_folders(c))


def log_tail(path, n=60):
    try:
        lines = path.read_text(errors='replace').splitlines()
    except FileNotFoundError:
        return '(no log)'
    keep = [ln for ln in lines if '"event":"progress"' not in ln and '"event":"mailbox_done"' not in ln]
    return '\n'.join(keep[-n:])


def run_seed(e, seed):
    r = Run(e, seed)
    t0 = time.monotonic()
    try:
        r.setup()
        r.walk()
        r.quiesce()
        r.check()
        r.cleanup()
    except BaseException as ex:
        if not isinstance(ex, Exception):
            # Ctrl-C, or pytest-timeout's failure: never swallowed by the chunk's loop
            print(f'\nconvergence seed {seed} interrupted ({type(ex).__name__}); steps:\n  ' + '\n  '.join(r.log))
            raise
        # leave a running, reachable setup for the next seed
        try:
            r.server_start()
            r.start_syncd()
            if e.inst.fs is None or e.inst.fs.poll() is not None:
                e.inst.kill_fs()
                e.inst.start_fs()
        except Exception:  # noqa: BLE001
            pass
        r.srv.close()
        stack = syncd_stack(e.inst) if 'not quiescent' in str(ex) else ''
        keep = os.environ.get('ACS_CONVERGE_KEEP')
        if keep:  # the whole logs, for a soak's failures
            d = Path(keep) / f'seed{seed}-{os.getpid()}'
            d.mkdir(parents=True, exist_ok=True)
            for src in (e.inst.syncd_log, e.inst.fs_log, Path(e.dv.log_file)):
                try:
                    shutil.copy(src, d / src.name)
                except OSError:
                    pass
            (d / 'failure.txt').write_text(f'{ex}\nsteps:\n  ' + '\n  '.join(r.log) + stack)
        steps = '\n  '.join(r.log)
        raise AssertionError(
            f'convergence seed {seed} failed: {type(ex).__name__}: {ex}\n'
            f'replay: ACS_CONVERGE_SEEDS={seed} ACS_BUILD_DIR=... /usr/bin/python3 -m pytest '
            f'tests/integration/test_converge.py\nsteps:\n  {steps}\n'
            f'--- acs-syncd log (last 60 lines without progress lines):\n{log_tail(e.inst.syncd_log)}'
            f'\n--- Dovecot log (last 30 lines):\n{dovecot_log_tail(e.dv)}'
            f'\n--- Dovecot log, lines other than Info (last 30):\n{dovecot_log_tail(e.dv, info=False)}'
            f'{stack}') from ex
    return time.monotonic() - t0


def dovecot_log_tail(dv, n=30, info=True):
    """The end of the server's own log: why it reset or refused a connection. info=False:
    only its warnings, errors, fatal errors and panics."""
    try:
        with open(dv.log_file, errors='replace') as f:
            lines = [ln for ln in f if info or ': Info: ' not in ln]
        return ''.join(lines[-n:])
    except (OSError, AttributeError) as err:
        return f'(no Dovecot log: {err})'


def syncd_stack(inst):
    """Where a live acs-syncd that stopped making progress is (gdb, all threads)."""
    p = inst.syncd
    if p is None or p.poll() is not None:
        return '\n--- acs-syncd is not running'
    try:
        bt = subprocess.run(['gdb', '-p', str(p.pid), '-batch', '-ex', 'thread apply all bt'],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        return '\n--- acs-syncd threads (gdb):\n' + bt.stdout[-6000:]
    except (OSError, subprocess.SubprocessError) as err:
        return f'\n--- gdb failed: {err}'


@pytest.mark.timeout(120 + 20 * CHUNK)
@pytest.mark.parametrize('chunk', CHUNKS, ids=[f'seeds{c[0]}-{c[-1]}' for c in CHUNKS])
def test_converge(env, chunk):
    # every seed of the chunk runs, also after a failure (run_seed leaves a working setup
    # behind); the first failure is reported in full, the others by seed and first line
    times, failed = [], []
    for seed in chunk:
        try:
            times.append(run_seed(env, seed))
        except AssertionError as ex:
            failed.append((seed, ex))
    times.sort()
    print(f'converge: {len(chunk)} seeds {chunk[0]}..{chunk[-1]}, {len(failed)} failed, per seed median '
          f'{times[len(times) // 2] if times else 0:.2f} s, max {times[-1] if times else 0:.2f} s; FUSE '
          f'connections of a dying acs-fs aborted so far: {env.aborts}')
    if failed:
        others = ''.join(f'\n  seed {s}: {str(ex).splitlines()[0][:300]}' for s, ex in failed[1:])
        raise AssertionError(f'{len(failed)} of {len(chunk)} seeds failed: {[s for s, _ in failed]}'
                             f'{others}\n--- first failure in full:\n{failed[0][1]}')
    for log in (env.inst.syncd_log, env.inst.fs_log):
        text = log.read_text(errors='replace') if log.exists() else ''
        bad = [w for w in ('Sanitizer', 'runtime error:', 'definitely lost') if w in text]
        assert not bad, f'{log.name}: {bad}:\n{text[-3000:]}'
