# SPDX-License-Identifier: MIT
"""acs-syncd's write direction against a real Dovecot: ops written into the cache through
lib/local.c (tests/tools/acs-localop, what a write in the tree does) are replayed to the
server, and each merge rule of docs/sync-semantics.md holds when the server changed too
(server changes made by an independent imaplib client). Every test ends with the op log
empty and the cache equal to the server."""

import sqlite3
import statistics
import subprocess
import time

from acstest import paths
from acstest.corpus import Corpus
from test_syncd_common import (Daemon, EX_TEMPFAIL, assert_cache_equals_server, cache_state,
                               db_connect, lf, quote, run_once, syncd_args)

FOLDERS = ['INBOX', 'Lists', 'Archive']


def localop(db, *args, check=True):
    r = subprocess.run([paths.binary('tests/tools/acs-localop'), str(db), *map(str, args)],
                       capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise AssertionError(f'acs-localop {args}: rc {r.returncode}: {r.stderr}')
    return r


def op_count(db):
    con = db_connect(db)
    try:
        return con.execute('SELECT count(*) FROM op').fetchone()[0]
    finally:
        con.close()


def prepare(dv, tmp_path, count=30, folders=FOLDERS, seed=5):
    corpus = Corpus(seed=seed, count=count, folders=folders)
    corpus.seed_maildir(dv, 'user1')
    db = tmp_path / 'cache.db'
    run_once(dv, db)
    return corpus, db


def converge(dv, db):
    """--once replays everything (exit 0 only with an empty op log); then cache == server."""
    r, ev = run_once(dv, db)
    assert op_count(db) == 0, r.stderr[-3000:]
    c = dv.client('user1')
    try:
        srv = assert_cache_equals_server(db, c)
    finally:
        c.logout()
    return srv, ev, r


def uids(state, folder):
    return [m[0] for m in state[folder]]


def by_body(state, folder):
    return {lf(m[3]): m for m in state[folder]}


def select(c, folder):
    typ, data = c.select(quote(folder))
    assert typ == 'OK', data


def test_each_kind_reaches_the_server(dovecot, tmp_path):
    dv = dovecot
    corpus, db = prepare(dv, tmp_path)
    before = cache_state(db)
    inbox = before['INBOX']
    a, b, c_, d = inbox[0], inbox[1], inbox[2], inbox[3]
    lists_before = len(before['Lists'])
    archive_before = len(before['Archive'])

    localop(db, 'flags', 'INBOX', a[0], 'FS', 'project-y Zz')          # set \Flagged \Seen + keywords
    localop(db, 'flags', 'INBOX', b[0], '-')                           # clear everything
    localop(db, 'expunge', 'INBOX', c_[0])
    localop(db, 'move', 'INBOX', d[0], 'Archive')
    body = b'Subject: appended\nMessage-ID: <app1@acs>\n\nline one\nline two\n'
    f = tmp_path / 'msg.eml'
    f.write_bytes(body)
    idate = 1700000000
    localop(db, 'append', 'Lists', f, 'RS', idate, 'Urgent')
    localop(db, 'create', 'Projects')
    localop(db, 'create', 'Old')
    localop(db, 'rename', 'Old', 'New')
    localop(db, 'create', 'Gone')
    localop(db, 'delete', 'Gone')
    assert op_count(db) == 10

    srv, ev, r = converge(dv, db)
    sa = {m[0]: m for m in srv['INBOX']}
    assert sa[a[0]][1] >= {'\\Flagged', '\\Seen', 'project-y', 'Zz'}
    assert sa[b[0]][1] == frozenset()
    assert c_[0] not in sa and d[0] not in sa
    # the moved message is in Archive once, with its body and flags
    arch = by_body(srv, 'Archive')
    assert len(srv['Archive']) == archive_before + 1
    assert lf(d[3]) in arch and arch[lf(d[3])][1] == d[1]
    # the appended one: CRLF on the server, flags, keyword, INTERNALDATE
    assert len(srv['Lists']) == lists_before + 1
    app = [m for m in srv['Lists'] if m[3] == body.replace(b'\n', b'\r\n')]
    assert len(app) == 1, [m[3][:60] for m in srv['Lists']]
    assert app[0][1] == frozenset({'\\Answered', '\\Seen', 'Urgent'})
    assert app[0][2] == idate
    assert 'Projects' in srv and 'New' in srv and 'Old' not in srv and 'Gone' not in srv
    kinds = [e.get('kind') for e in ev if e.get('event') == 'op_done']
    assert sorted(kinds) == sorted(['flags', 'flags', 'expunge', 'move', 'append', 'create', 'create',
                                    'rename', 'create', 'delete']), kinds


def test_flag_delta_other_flags_follow_server(dovecot, tmp_path):
    """Local +\\Flagged while the server cleared \\Seen and added a keyword: both survive."""
    dv = dovecot
    corpus, db = prepare(dv, tmp_path)
    inbox = cache_state(db)['INBOX']
    m = next(x for x in inbox if '\\Seen' in x[1] and '\\Flagged' not in x[1])
    letters = ''.join(sorted({{'\\Seen': 'S', '\\Answered': 'R', '\\Draft': 'D', '$Forwarded': 'P'}[f]
                              for f in m[1] if f in ('\\Seen', '\\Answered', '\\Draft', '$Forwarded')} | {'F'}))
    localop(db, 'flags', 'INBOX', m[0], letters)
    c = dv.client('user1')
    select(c, 'INBOX')
    typ, data = c.uid('STORE', str(m[0]), '-FLAGS', r'(\Seen)')
    assert typ == 'OK', data
    typ, data = c.uid('STORE', str(m[0]), '+FLAGS', r'(ServerKw)')
    assert typ == 'OK', data
    c.logout()
    srv, _, _ = converge(dv, db)
    got = {x[0]: x for x in srv['INBOX']}[m[0]][1]
    assert '\\Flagged' in got and 'ServerKw' in got and '\\Seen' not in got, got


def test_move_of_message_expunged_on_server_reappends(dovecot, tmp_path):
    dv = dovecot
    corpus, db = prepare(dv, tmp_path)
    st = cache_state(db)
    m = st['INBOX'][5]
    localop(db, 'move', 'INBOX', m[0], 'Archive')
    c = dv.client('user1')
    select(c, 'INBOX')
    c.uid('STORE', str(m[0]), '+FLAGS', r'(\Deleted)')
    typ, data = c.uid('EXPUNGE', str(m[0]))
    assert typ == 'OK', data
    c.logout()
    srv, ev, _ = converge(dv, db)
    arch = [x for x in srv['Archive'] if lf(x[3]) == lf(m[3])]
    assert len(arch) == 1, 'the moved message must be re-appended into the target exactly once'
    assert arch[0][1] == m[1] and arch[0][2] == m[2]
    assert m[0] not in uids(srv, 'INBOX')
    assert any(e.get('event') == 'op_reappend' for e in ev)


def test_append_into_folder_deleted_on_server_recreates_it(dovecot, tmp_path):
    dv = dovecot
    c = dv.client('user1')
    typ, data = c.create('Side')
    assert typ == 'OK', data
    c.append('Side', None, None, b'Subject: server side\r\n\r\nserver mail\r\n')
    c.logout()
    corpus, db = prepare(dv, tmp_path)
    assert len(cache_state(db)['Side']) == 1
    f = tmp_path / 'local.eml'
    f.write_bytes(b'Subject: local\nMessage-ID: <loc@acs>\n\nlocal mail\n')
    localop(db, 'append', 'Side', f, 'S', 1700000100)
    c = dv.client('user1')
    typ, data = c.delete('Side')
    assert typ == 'OK', data
    c.logout()
    srv, _, _ = converge(dv, db)
    assert 'Side' in srv
    bodies = [x[3] for x in srv['Side']]
    assert bodies == [b'Subject: local\r\nMessage-ID: <loc@acs>\r\n\r\nlocal mail\r\n'], bodies


def test_local_folder_delete_keeps_mail_that_arrived_on_server(dovecot, tmp_path):
    dv = dovecot
    c = dv.client('user1')
    assert c.create('Empty')[0] == 'OK'
    c.logout()
    corpus, db = prepare(dv, tmp_path)
    assert cache_state(db)['Empty'] == []
    localop(db, 'delete', 'Empty')
    assert 'Empty' not in cache_state(db)
    c = dv.client('user1')
    c.append('Empty', None, None, b'Subject: late\r\n\r\narrived after the folder was seen empty\r\n')
    c.logout()
    srv, ev, _ = converge(dv, db)
    assert 'Empty' in srv and len(srv['Empty']) == 1
    assert any(e.get('event') == 'op_delete_refused' for e in ev)


def test_uidvalidity_change_never_deletes(dovecot, tmp_path):
    """A pending expunge whose mailbox got a new UIDVALIDITY must not delete anything."""
    dv = dovecot
    corpus, db = prepare(dv, tmp_path)
    st = cache_state(db)
    victim = st['Lists'][0]
    localop(db, 'expunge', 'Lists', victim[0])
    n_before = len(st['Lists'])
    # the server recreates the folder with the same content (new UIDVALIDITY, uids from 1)
    c = dv.client('user1')
    assert c.rename('Lists', 'ListsOld')[0] == 'OK'
    assert c.create('Lists')[0] == 'OK'
    select(c, 'ListsOld')
    typ, data = c.uid('COPY', '1:*', 'Lists')
    assert typ == 'OK', data
    c.close()
    assert c.delete('ListsOld')[0] == 'OK'
    c.logout()
    srv, _, r = converge(dv, db)
    assert len(srv['Lists']) == n_before, 'a stale expunge removed a message'
    assert lf(victim[3]) in by_body(srv, 'Lists')


def queue_append(db, tmp_path, folder, body, date):
    """A local append (flag S) of body into folder; returns its op's seq."""
    f = tmp_path / 'append.eml'
    f.write_bytes(body)
    localop(db, 'append', folder, f, 'S', date)
    con = db_connect(db)
    try:
        return con.execute('SELECT seq FROM op WHERE kind = 4').fetchone()[0]
    finally:
        con.close()


def mark_in_flight(db, seq):
    """What an attempt killed after sending op seq leaves: the in-flight marker on it."""
    con = sqlite3.connect(str(db), timeout=30)
    try:
        with con:
            con.execute("INSERT INTO meta (key, value) VALUES ('replay.inflight', ?) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(seq),))
    finally:
        con.close()


def test_append_that_reached_server_before_crash_is_not_duplicated(dovecot, tmp_path):
    """An APPEND sent before acs-syncd died (in-flight marker set) is found by its content."""
    dv = dovecot
    corpus, db = prepare(dv, tmp_path)
    body = b'Subject: once\nMessage-ID: <once@acs>\n\nonly once please\n'
    seq = queue_append(db, tmp_path, 'Archive', body, 1700000200)
    # what the killed attempt did: the server has it, the marker says it may have
    c = dv.client('user1')
    c.append('Archive', r'(\Seen)', time.gmtime(1700000200), body.replace(b'\n', b'\r\n'))
    c.logout()
    mark_in_flight(db, seq)
    srv, _, _ = converge(dv, db)
    same = [x for x in srv['Archive'] if x[3] == body.replace(b'\n', b'\r\n')]
    assert len(same) == 1, f'{len(same)} copies on the server'


def test_append_into_recreated_folder_before_crash_is_not_duplicated(dovecot, tmp_path):
    """A local append into a folder the server deleted: the killed attempt made the folder
    again (new UIDVALIDITY, uids from 1) and stored the message as uid 1, which the cache
    still knows as the old folder's uid 1. The retry must find it, not append a second copy
    (soak seed 5490: the cached old uid 1 made the search skip the message)."""
    dv = dovecot
    c = dv.client('user1')
    assert c.create('Side')[0] == 'OK'
    c.append('Side', None, None, b'Subject: server side\r\n\r\nserver mail\r\n')
    c.logout()
    corpus, db = prepare(dv, tmp_path)
    assert [m[0] for m in cache_state(db)['Side']] == [1]
    body = b'Subject: local\nMessage-ID: <again@acs>\n\nlocal mail into a folder made again\n'
    seq = queue_append(db, tmp_path, 'Side', body, 1700000300)
    # the server deletes the folder; the killed attempt made it again and appended
    c = dv.client('user1')
    assert c.delete('Side')[0] == 'OK'
    assert c.create('Side')[0] == 'OK'
    c.append('Side', r'(\Seen)', time.gmtime(1700000300), body.replace(b'\n', b'\r\n'))
    select(c, 'Side')
    typ, data = c.uid('SEARCH', 'ALL')
    assert data[0].split() == [b'1'], data
    c.logout()
    mark_in_flight(db, seq)
    srv, _, _ = converge(dv, db)
    bodies = [x[3] for x in srv['Side']]
    assert bodies == [body.replace(b'\n', b'\r\n')], f'{len(bodies)} messages on the server: {bodies}'


def test_offline_ops_replay_in_order(dovecot, tmp_path):
    """Server down: ops accumulate (--once fails with 75, log kept); back up: all replay in order."""
    dv = dovecot
    corpus, db = prepare(dv, tmp_path)
    st = cache_state(db)
    dv.stop()
    localop(db, 'create', 'Trip')
    f = tmp_path / 'trip.eml'
    f.write_bytes(b'Subject: trip\nMessage-ID: <trip@acs>\n\ntickets\n')
    mid = int(localop(db, 'append', 'Trip', f, '-', 1700000300).stdout)
    localop(db, 'rename', 'Trip', 'Travel')
    m = st['INBOX'][0]
    localop(db, 'move', 'INBOX', m[0], 'Travel')
    n = op_count(db)
    assert n == 4
    r, _ = run_once(dv, db, extra=('--retries', '0'), check=False, timeout=60)
    assert r.returncode == EX_TEMPFAIL, r.stderr[-2000:]
    assert op_count(db) == n
    dv.start()
    srv, _, _ = converge(dv, db)
    assert 'Trip' not in srv and 'Travel' in srv
    bodies = sorted(lf(x[3]) for x in srv['Travel'])
    assert bodies == sorted([b'Subject: trip\nMessage-ID: <trip@acs>\n\ntickets\n', lf(m[3])])
    # the appended row kept its id and learned its uid
    con = db_connect(db)
    row = con.execute('SELECT uid FROM message WHERE id = ?', (mid,)).fetchone()
    con.close()
    assert row and row[0], row


def test_daemon_replays_at_once(dovecot, tmp_path):
    """The running daemon notices ops (inotify, also while in IDLE): p50 <= 200 ms to the server."""
    dv = dovecot
    corpus, db = prepare(dv, tmp_path, count=40)
    inbox = cache_state(db, bodies=False)['INBOX']
    with Daemon(dv, db) as d:
        d.wait_event(lambda e: e.get('event') == 'synced')
        time.sleep(0.5)  # in IDLE now
        c = dv.client('user1')
        select(c, 'INBOX')
        lat = []
        for i, m in enumerate(inbox[:15]):
            want_flagged = '\\Flagged' not in m[1]
            letters = ''.join(sorted({'\\Seen': 'S', '\\Answered': 'R', '\\Draft': 'D', '$Forwarded': 'P',
                                      '\\Flagged': 'F'}[f] for f in m[1]
                                     if f in ('\\Seen', '\\Answered', '\\Draft', '$Forwarded', '\\Flagged')))
            letters = ''.join(sorted(set(letters) ^ {'F'})) or '-'
            t0 = time.monotonic()
            localop(db, 'flags', 'INBOX', m[0], letters)
            while True:
                typ, data = c.uid('FETCH', str(m[0]), '(FLAGS)')
                assert typ == 'OK', data
                if (b'\\Flagged' in data[0]) == want_flagged:
                    break
                if time.monotonic() - t0 > 10:
                    raise AssertionError('flag change did not reach the server in 10 s\n' + ''.join(d.lines[-30:]))
                time.sleep(0.002)
            lat.append(time.monotonic() - t0)
            time.sleep(0.05)
        c.logout()
        p50 = statistics.median(lat)
        print(f'replay latency (acs-localop start -> server shows it): p50 {p50 * 1000:.1f} ms, '
              f'max {max(lat) * 1000:.1f} ms over {len(lat)}')
        assert p50 <= 0.2, lat
        assert d.stop() == 0
    assert op_count(db) == 0
    c = dv.client('user1')
    try:
        assert_cache_equals_server(db, c)
    finally:
        c.logout()


def test_folder_ops_already_done_on_server_count_as_done(dovecot, tmp_path):
    """CREATE answered ALREADYEXISTS and a RENAME an earlier attempt made are done, not failures."""
    dv = dovecot
    c = dv.client('user1')
    assert c.create('Before')[0] == 'OK'
    c.logout()
    corpus, db = prepare(dv, tmp_path)
    localop(db, 'create', 'Both')
    localop(db, 'rename', 'Before', 'After')
    c = dv.client('user1')
    assert c.create('Both')[0] == 'OK'
    assert c.rename('Before', 'After')[0] == 'OK'  # as if our RENAME had reached the server
    c.logout()
    srv, ev, r = converge(dv, db)
    assert 'Both' in srv and 'After' in srv and 'Before' not in srv
    assert not [e for e in ev if e.get('event') == 'op_given_up'], r.stderr[-2000:]
    assert sorted(e.get('kind') for e in ev if e.get('event') == 'op_done') == ['create', 'rename']


def test_refused_append_ends_in_recovery_folder(dovecot, tmp_path):
    """A server that keeps refusing (a folder name it rejects) never blocks the log nor loses mail."""
    dv = dovecot
    corpus, db = prepare(dv, tmp_path)
    long_name = 'X' * 300  # Dovecot: NO [CANNOT] Mailbox name too long
    localop(db, 'create', long_name)
    f = tmp_path / 'keep.eml'
    f.write_bytes(b'Subject: keep me\nMessage-ID: <keep@acs>\n\nprecious\n')
    localop(db, 'append', long_name, f, 'S', 1700000400)
    m = cache_state(db)['INBOX'][0]
    localop(db, 'flags', 'INBOX', m[0], 'F')  # queued behind the refused ones
    srv, ev, r = converge(dv, db)
    assert long_name not in srv
    rec = srv.get('acs-recovery')
    assert rec and [x[3] for x in rec] == [b'Subject: keep me\r\nMessage-ID: <keep@acs>\r\n\r\nprecious\r\n']
    assert rec[0][1] == frozenset({'\\Seen'}) and rec[0][2] == 1700000400
    assert '\\Flagged' in {x[0]: x for x in srv['INBOX']}[m[0]][1]
    given_up = sorted(e.get('kind') for e in ev if e.get('event') == 'op_given_up')
    assert given_up == ['append', 'create'], given_up


def test_message_moved_back_and_forth_ends_once_in_place(dovecot, tmp_path):
    """A -> B -> A -> B moves (and an append moved away and back) queued offline: each op uses
    the uid the previous one taught, so the server has every message exactly once, where the
    last move put it, with the last flag change (no re-append of a message that still exists)."""
    dv = dovecot
    corpus, db = prepare(dv, tmp_path)
    m = cache_state(db)['INBOX'][3]
    for src, dst in (('INBOX', 'Archive'), ('Archive', 'INBOX'), ('INBOX', 'Archive')):
        con = db_connect(db)
        uid = con.execute('SELECT m.uid FROM message m JOIN mailbox b ON b.id = m.mailbox_id '
                          'WHERE b.name = ? AND m.body_id = ?', (src, m[4]['body_id'])).fetchone()
        con.close()
        # the row keeps uid 0 after a local move: address it by the tool's 'uid 0' rule below
        if uid and uid[0]:
            localop(db, 'move', src, uid[0], dst)
        else:
            con = sqlite3.connect(str(db), timeout=30)
            mid = con.execute('SELECT m.id FROM message m JOIN mailbox b ON b.id = m.mailbox_id '
                              'WHERE b.name = ? AND m.body_id = ?', (src, m[4]['body_id'])).fetchone()[0]
            con.close()
            localop(db, 'move-id', mid, dst)
    f = tmp_path / 'pingpong.eml'
    f.write_bytes(b'Subject: ping pong\nMessage-ID: <pp@acs>\n\nback and forth\n')
    app = int(localop(db, 'append', 'Lists', f, '-', 1700000500).stdout)
    localop(db, 'move-id', app, 'Archive')
    localop(db, 'move-id', app, 'Lists')
    localop(db, 'flags-id', app, 'FS')
    srv, ev, _ = converge(dv, db)
    assert not [e for e in ev if e.get('event') == 'op_reappend'], 'a message that exists was re-appended'
    want = lf(m[3])
    where = {f: sum(1 for x in msgs if lf(x[3]) == want) for f, msgs in srv.items()}
    assert where.get('Archive') == 1 and sum(where.values()) == 1, where
    pp = b'Subject: ping pong\r\nMessage-ID: <pp@acs>\r\n\r\nback and forth\r\n'
    hits = [(f, x[1]) for f, msgs in srv.items() for x in msgs if x[3] == pp]
    assert hits == [('Lists', frozenset({'\\Flagged', '\\Seen'}))], hits


def test_op_that_cannot_be_sent_is_given_up_not_looped(dovecot, tmp_path):
    """An op replay cannot express (a mailbox name that is not UTF-8, written by a broken
    writer) is retried, then given up: --once still ends with an empty op log, exit 0."""
    dv = dovecot
    corpus, db = prepare(dv, tmp_path)
    m = cache_state(db)['INBOX'][0]
    con = sqlite3.connect(str(db), timeout=30)
    inbox_id = con.execute("SELECT id FROM mailbox WHERE name = 'INBOX'").fetchone()[0]
    with con:
        con.execute("INSERT INTO op (kind, mailbox_id, message_id, uid, flags_add, name) "
                    "VALUES (1, ?, ?, ?, 2, CAST(X'FF41' AS TEXT))", (inbox_id, m[4]['id'], m[0]))
    con.close()
    localop(db, 'flags', 'INBOX', cache_state(db)['INBOX'][1][0], 'F')  # behind it
    srv, ev, r = converge(dv, db)
    assert [e.get('kind') for e in ev if e.get('event') == 'op_given_up'] == ['flags'], r.stderr[-2000:]
    assert '\\Flagged' in {x[0]: x for x in srv['INBOX']}[cache_state(db)['INBOX'][1][0]][1]
