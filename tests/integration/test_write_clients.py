# SPDX-License-Identifier: MIT
"""Issue 5, real clients on the writable tree: neomutt (under tmux) marks read, flags,
deletes and postpones a draft; notmuch tag with maildir.synchronize_flags; mblaze's mflag.
Each change must reach Dovecot (an independent IMAP client)."""

import os
import re
import subprocess
import time

import pytest

from acstest.corpus import Corpus
from acstest.dovecot import Dovecot
from acstest.instance import Instance, diff_states

from test_write_online import Server

USER = 'user1'
SEED = 5205
REACH_TIMEOUT = 20.0
_MID = re.compile(rb'^Message-ID:[ \t]*<([^>\r\n]+)>', re.M | re.I)


class Env:
    pass


@pytest.fixture
def env(harness_tmp):
    e = Env()
    e.base = harness_tmp
    e.dovecot = Dovecot(harness_tmp / 'dovecot')
    e.inst = None
    e.server = None
    try:
        Corpus(SEED, 60, folders=('INBOX', 'Work')).seed_maildir(e.dovecot, USER)
        e.inst = Instance(e.dovecot, USER, harness_tmp / 'acs')
        e.inst.wait_quiescent(60)
        e.server = Server(e.dovecot, USER)
        yield e
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


def mid_of(path):
    m = _MID.search(path.read_bytes())
    assert m, f'{path}: no Message-ID'
    return m.group(1).decode()


def pick(inst, folder, pred, n=1):
    """n message files of folder (sorted by name) with pred(sub, letters): [(path, mid)]."""
    out = [(p, mid_of(p)) for p, sub, uniq, info in sorted(inst.tree_files(folder), key=lambda f: f[2])
           if pred(sub, info)]
    assert len(out) >= n, f'only {len(out)} fitting messages in {folder}'
    return out[:n]


def server_flags(srv, folder, mid):
    uids = srv.uids_by_mid(folder, mid)
    return None if not uids else srv.flags(folder, uids[0])


def find_in_tree(inst, folder, mid, tries=50):
    """The tree's file of mid in folder: (path, letters); exactly one must exist. Retries
    while a file vanishes under the listing (acs-syncd may move a seen message from new/
    to cur/ once the server confirmed \\Seen)."""
    for _ in range(tries):
        try:
            fs = [f for f in inst.tree_files(folder) if mid_of(f[0]) == mid]
        except FileNotFoundError:
            time.sleep(0.02)
            continue
        assert len(fs) == 1, f'{mid}: {len(fs)} files in the tree\'s {folder}'
        return fs[0][0], fs[0][3]
    raise AssertionError(f'{mid}: files kept vanishing while listing {folder}')


def letters_in_tree(inst, folder, mid):
    """The info letters of the tree's file of mid."""
    return find_in_tree(inst, folder, mid)[1]


def wait_reach(e, pred, what, extra=lambda: ''):
    deadline = time.monotonic() + REACH_TIMEOUT
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f'{what}: not on the server after {REACH_TIMEOUT} s; ops left '
                                 f'{e.inst.ops()[:5]}\n{extra()}\n--- acs-syncd log:\n'
                                 f'{e.inst.syncd_log_tail(3000)}\n--- acs-fs log:\n{e.inst.fs_log_tail(2000)}'
                                 f'\n--- Dovecot log:\n{e.dovecot.log_tail(15)}')
        time.sleep(0.02)
    return True


# ---- neomutt ----

class Tmux:
    """A private tmux server (own socket) running one program in a 200x50 window."""

    def __init__(self, base, cmd):
        self.sock = str(base / 'tmux.sock')
        self._run('new-session', '-d', '-s', 'acs', '-x', '200', '-y', '50', cmd)

    def _run(self, *args):
        return subprocess.run(['tmux', '-S', self.sock, *args], capture_output=True, text=True, timeout=10)

    def keys(self, *keys):
        r = self._run('send-keys', '-t', 'acs', *keys)
        assert r.returncode == 0, r.stderr

    def literal(self, text):
        r = self._run('send-keys', '-t', 'acs', '-l', text)
        assert r.returncode == 0, r.stderr

    def screen(self):
        return self._run('capture-pane', '-t', 'acs', '-p').stdout

    def wait(self, pattern, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            s = self.screen()
            if re.search(pattern, s, re.M):
                return s
            if time.monotonic() > deadline:
                raise AssertionError(f'screen never showed {pattern!r}:\n{s}')
            time.sleep(0.05)

    def kill(self):
        self._run('kill-server')


def test_neomutt_read_flag_delete_draft(env):
    inst, srv, base = env.inst, env.server, env.base
    tree = inst.tree
    (unread_path, unread), = pick(inst, 'INBOX', lambda sub, info: sub == 'new' and 'S' not in info)
    (flag_path, to_flag), = pick(inst, 'INBOX', lambda sub, info: sub == 'cur' and 'F' not in info)
    (del_path, to_delete), = pick(inst, 'INBOX', lambda sub, info: sub == 'cur' and 'F' in info)
    assert '\\Seen' not in server_flags(srv, 'INBOX', unread)
    assert '\\Flagged' not in server_flags(srv, 'INBOX', to_flag)
    assert server_flags(srv, 'INBOX', to_delete) is not None
    drafts_before = len(inst.server_state(bodies=False)['Drafts'])

    editor = base / 'editor.sh'
    editor.write_text('#!/bin/sh\necho "draft body written by the editor" >> "$1"\n')
    editor.chmod(0o755)
    rc = base / 'neomuttrc'
    rc.write_text('\n'.join([
        'set mbox_type=Maildir', f'set folder="{tree}"', f'set spoolfile="{tree}/INBOX"',
        f'set postponed="{tree}/Drafts"', 'set record=""', 'set header_cache=""',
        'set message_cachedir=""', f'set editor="{editor}"', 'set edit_headers=no',
        'set from=user1@example.org', 'set realname="User One"', 'set hostname=acs.test',
        'set use_from=yes', 'set sendmail=/bin/true', 'set delete=yes', 'set confirmappend=no',
        'set mark_old=no', 'set wait_key=no', 'set sort=mailbox-order', 'set askcc=no',
        'set askbcc=no', 'set move=no', 'set help=no', 'set sleep_time=0', 'set recall=no',
        'set abort_noattach=no', 'set timeout=1', '']))
    t = Tmux(base, f'TERM=xterm neomutt -n -F {rc} -f {tree}/INBOX')
    try:
        t.wait(r'Msgs:\d+')

        def limit(mid):
            t.keys('l')
            t.wait('Limit to messages matching:')
            t.literal(f'~i {re.escape(mid)}')
            t.keys('Enter')
            t.wait(r'Msgs:1/\d+')

        limit(unread)
        t.keys('N')        # toggle-new: an unread message becomes read
        limit(to_flag)
        t.keys('F')        # flag-message
        limit(to_delete)
        t.keys('d')        # delete-message
        t.keys('$')        # sync-mailbox: renames and unlinks in the tree
        t.wait(r'Msgs:0/')

        what = lambda: 'neomutt screen:\n' + t.screen()  # noqa: E731
        wait_reach(env, lambda: '\\Seen' in (server_flags(srv, 'INBOX', unread) or ()), 'neomutt mark read', what)
        wait_reach(env, lambda: '\\Flagged' in (server_flags(srv, 'INBOX', to_flag) or ()), 'neomutt flag', what)
        wait_reach(env, lambda: server_flags(srv, 'INBOX', to_delete) is None, 'neomutt delete + sync', what)

        # a draft: compose, then postpone into the tree's Drafts (tmp/ + link()/rename())
        subject = f'acs draft {os.getpid()} {time.time_ns()}'
        t.keys('m')
        t.wait(r'^To:')
        t.literal('user2@example.org')
        t.keys('Enter')
        t.wait('Subject:')
        t.literal(subject)
        t.keys('Enter')
        t.wait('Attachments')
        t.keys('P')        # postpone-message
        t.wait('Message postponed')

        def draft_on_server():
            srv._select('Drafts')
            typ, data = srv.c.uid('SEARCH', 'HEADER', 'Subject', f'"{subject}"')
            return typ == 'OK' and len((data[0] or b'').split()) == 1
        wait_reach(env, draft_on_server, 'neomutt postponed draft', what)
        srv._select('Drafts')
        typ, data = srv.c.uid('SEARCH', 'HEADER', 'Subject', f'"{subject}"')
        uid = int(data[0].split()[0])
        flags, idate, body = srv.fetch('Drafts', uid)
        assert b'draft body written by the editor' in body
        assert len(inst.server_state(bodies=False)['Drafts']) == drafts_before + 1
        t.keys('q')
    finally:
        t.kill()
    assert unread_path != flag_path != del_path


# ---- notmuch ----

def test_notmuch_tag_synchronizes_flags(env):
    inst, srv, base = env.inst, env.server, env.base
    (_, unread), = pick(inst, 'INBOX', lambda sub, info: sub == 'new' and 'S' not in info)
    (_, to_flag), = pick(inst, 'Work', lambda sub, info: 'F' not in info)
    assert '\\Seen' not in server_flags(srv, 'INBOX', unread)
    cfg = base / 'notmuch-config'
    (base / 'nm').mkdir()
    cfg.write_text(f'[database]\npath={base / "nm"}\nmail_root={inst.tree}\n'
                   '[new]\ntags=unread;inbox\n[maildir]\nsynchronize_flags=true\n')
    nenv = {**os.environ, 'NOTMUCH_CONFIG': str(cfg)}

    def nm(*args):
        p = subprocess.run(['notmuch', *args], env=nenv, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, f'notmuch {args}: {p.returncode}\n{p.stdout}\n{p.stderr}'
        return p.stdout

    nm('new')
    assert nm('count', f'id:{unread}').strip() == '1'
    nm('tag', '-unread', '--', f'id:{unread}')
    assert 'S' in letters_in_tree(inst, 'INBOX', unread), 'notmuch tag -unread: the tree did not change'
    wait_reach(env, lambda: '\\Seen' in (server_flags(srv, 'INBOX', unread) or ()), 'notmuch tag -unread')
    nm('tag', '+flagged', '--', f'id:{to_flag}')
    wait_reach(env, lambda: '\\Flagged' in (server_flags(srv, 'Work', to_flag) or ()), 'notmuch tag +flagged')
    nm('tag', '+unread', '--', f'id:{unread}')
    assert 'S' not in letters_in_tree(inst, 'INBOX', unread), 'notmuch tag +unread: the tree did not change'
    wait_reach(env, lambda: (lambda f: f is not None and '\\Seen' not in f)(server_flags(srv, 'INBOX', unread)),
               'notmuch tag +unread', lambda: f'tree letters now: {letters_in_tree(inst, "INBOX", unread)!r}')
    # notmuch still finds every message, each once, after the renames
    inst.wait_quiescent(60)
    nm('new')
    assert nm('count', f'id:{unread}').strip() == '1'
    assert nm('search', '--output=files', f'id:{to_flag}').count('\n') == 1


# ---- mblaze ----

def test_mflag(env):
    inst, srv = env.inst, env.server
    # mflag -S on an unread message in new/ (mflag renames within the directory)
    (path, mid), = pick(inst, 'INBOX', lambda sub, info: sub == 'new' and 'S' not in info)
    before = server_flags(srv, 'INBOX', mid)
    p = subprocess.run(['mflag', '-S', str(path)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and not p.stderr, p.stderr
    assert 'S' in letters_in_tree(inst, 'INBOX', mid), 'mflag -S: the tree did not change'
    wait_reach(env, lambda: server_flags(srv, 'INBOX', mid) == before | {'\\Seen'}, 'mflag -S')

    # mflag -F, then -f -s, on a read message in cur/
    (path, mid), = pick(inst, 'Work', lambda sub, info: sub == 'cur' and 'F' not in info)
    before = server_flags(srv, 'Work', mid)
    assert '\\Seen' in before
    p = subprocess.run(['mflag', '-F', str(path)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and not p.stderr, p.stderr
    assert 'F' in letters_in_tree(inst, 'Work', mid), 'mflag -F: the tree did not change'
    wait_reach(env, lambda: server_flags(srv, 'Work', mid) == before | {'\\Flagged'}, 'mflag -F')
    inst.wait_quiescent(30)
    new, _ = find_in_tree(inst, 'Work', mid)
    p = subprocess.run(['mflag', '-f', '-s', str(new)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and not p.stderr, p.stderr
    wait_reach(env, lambda: server_flags(srv, 'Work', mid) == before - {'\\Seen'}, 'mflag -f -s')
