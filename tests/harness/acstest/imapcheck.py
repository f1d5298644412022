# SPDX-License-Identifier: MIT
"""An independent view of a mailbox through plain imaplib, to compare caches and trees with."""

import calendar
import re

from . import mutf7

_LIST_RE = re.compile(rb'^\((?P<attrs>[^)]*)\) (?P<delim>NIL|"(?:[^"\\]|\\.)") (?P<name>.*)$')
_FETCH_RE = re.compile(rb'^(?P<seq>\d+) \((?P<items>.*)$', re.S)
_UID_RE = re.compile(rb'UID (\d+)')
_FLAGS_RE = re.compile(rb'FLAGS \(([^)]*)\)')
_DATE_RE = re.compile(rb'INTERNALDATE "([^"]+)"')
_MONTHS = {m: i for i, m in enumerate(
    'Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec'.split(), 1)}


def _unquote(b):
    if b.startswith(b'"') and b.endswith(b'"'):
        return re.sub(rb'\\(.)', rb'\1', b[1:-1])
    return b


def parse_internaldate(s):
    """'17-Jul-1996 02:44:25 -0700' (bytes or str) → epoch seconds (int)."""
    if isinstance(s, bytes):
        s = s.decode()
    m = re.fullmatch(r'\s*(\d{1,2})-(\w{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)', s)
    if not m:
        raise ValueError(f'bad INTERNALDATE {s!r}')
    d, mon, y, hh, mm, ss, sign, zh, zm = m.groups()
    t = calendar.timegm((int(y), _MONTHS[mon], int(d), int(hh), int(mm), int(ss), 0, 0, 0))
    off = (int(zh) * 3600 + int(zm) * 60) * (1 if sign == '+' else -1)
    return t - off


def list_folders(client):
    """dict folder (UTF-8, '/'-separated) → frozenset of LIST attributes (lower-case str).

    Mailboxes marked \\Noselect or \\NonExistent are left out.
    """
    typ, data = client.list('""', '*')
    if typ != 'OK':
        raise RuntimeError(f'LIST failed: {data}')
    out = {}
    items = list(data)
    i = 0
    while i < len(items):
        it = items[i]
        i += 1
        if it is None:
            continue
        if isinstance(it, tuple):  # name sent as a literal
            head, name = it[0], it[1]
            line = head[:head.rindex(b'{')] + b'"' + name.replace(b'\\', b'\\\\').replace(b'"', b'\\"') + b'"'
        else:
            line = it
        m = _LIST_RE.match(line)
        if not m:
            raise RuntimeError(f'cannot parse LIST line {line!r}')
        attrs = frozenset(a.decode().lower() for a in m.group('attrs').split())
        if '\\noselect' in attrs or '\\nonexistent' in attrs:
            continue
        delim = _unquote(m.group('delim')).decode() if m.group('delim') != b'NIL' else '/'
        name = _unquote(m.group('name').strip()).decode()
        out[mutf7.folder_from_imap(name, delim)] = attrs
    return out


def _q(name):
    return '"' + name.replace('\\', '\\\\').replace('"', '\\"') + '"'


def fetch_folder(client, folder, bodies=True, delimiter='.'):
    """List of (uid, flags frozenset, internaldate, body bytes or None) of one folder, by UID."""
    typ, data = client.select(_q(mutf7.imap_name(folder, delimiter)), readonly=True)
    if typ != 'OK':
        raise RuntimeError(f'EXAMINE {folder!r} failed: {data}')
    if int(data[0]) == 0:
        return []
    what = '(UID FLAGS INTERNALDATE BODY.PEEK[])' if bodies else '(UID FLAGS INTERNALDATE)'
    typ, data = client.uid('FETCH', '1:*', what)
    if typ != 'OK':
        raise RuntimeError(f'UID FETCH in {folder!r} failed: {data}')
    out = []
    i = 0
    while i < len(data):
        it = data[i]
        i += 1
        if it is None or it == b')':
            continue
        if isinstance(it, tuple):
            meta, body = it[0], it[1]
            # Items after the literal arrive in the next element (e.g. b' UID 5)').
            if i < len(data) and isinstance(data[i], bytes):
                meta += b' ' + data[i]
                i += 1
        else:
            meta, body = it, None
        if not _FETCH_RE.match(meta):
            continue
        uid = int(_UID_RE.search(meta).group(1))
        flags = frozenset(f.decode() for f in _FLAGS_RE.search(meta).group(1).split()
                          if f.lower() != b'\\recent')
        idate = parse_internaldate(_DATE_RE.search(meta).group(1))
        out.append((uid, flags, idate, body if bodies else None))
    client.unselect()
    out.sort(key=lambda r: r[0])
    return out


def server_state(client, bodies=True):
    """dict folder (UTF-8, '/'-separated) → list of (uid, flags frozenset, internaldate,
    body bytes) for every selectable folder, from the given logged-in imaplib client.

    Never changes the mailbox (EXAMINE, BODY.PEEK, UNSELECT — never CLOSE). With
    bodies=False the body is None (cheap for big corpora).
    """
    return {f: fetch_folder(client, f, bodies) for f in list_folders(client)}


def diff_corpus(corpus, state, bodies=True, limit=20):
    """Differences between a Corpus (as seeded or appended into empty folders) and a
    server_state(): a list of human-readable strings, empty when they are equal (folders,
    per-folder counts, UIDs, flags and keywords, INTERNALDATE, and bodies if asked)."""
    out = []
    expect = corpus.by_folder()
    for f in sorted(set(expect) ^ set(state)):
        out.append(f'folder {f!r} only {"in corpus" if f in expect else "on server"}')
    for folder, msgs in expect.items():
        got = state.get(folder)
        if got is None:
            continue
        if len(got) != len(msgs):
            out.append(f'{folder!r}: {len(got)} messages on server, {len(msgs)} in corpus')
            continue
        for m, (uid, flags, idate, body) in zip(msgs, got):
            if uid != m.uid:
                out.append(f'{m}: server uid {uid}')
            if flags != frozenset(m.flags):
                out.append(f'{m}: server flags {sorted(flags)}')
            if idate != m.internaldate:
                out.append(f'{m}: server internaldate {idate}')
            if bodies and body != m.data:
                out.append(f'{m}: server body differs ({len(body or b"")} bytes)')
    return out[:limit]
