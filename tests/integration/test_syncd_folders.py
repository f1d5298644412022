# SPDX-License-Identifier: MIT
"""acs-syncd against a real Dovecot: mailboxes created, renamed (with children) and deleted
on the server follow; a UIDVALIDITY change rebuilds the mailbox and keeps the op log."""

import sqlite3
import time

from acstest.corpus import Corpus
from test_syncd_common import (assert_cache_equals_server, cache_state, mailbox_rows, quote,
                               run_once)

FOLDERS = ['INBOX', 'Lists', 'Work/Projects', 'Work/Projects/Big Project', 'Old']


def test_create_rename_delete(dovecot, tmp_path):
    Corpus(seed=21, count=120, folders=FOLDERS).seed_maildir(dovecot, 'user1')
    db = tmp_path / 'cache.db'
    run_once(dovecot, db)
    before = cache_state(db, bodies=False)
    boxes_before = mailbox_rows(db)
    assert 'Work/Projects/Big Project' in before and before['Work/Projects']

    c = dovecot.client('user1')
    try:
        typ, data = c.create(quote('Neu &APw-ber'))  # "Neu über"
        assert typ == 'OK', data
        c.append(quote('Neu &APw-ber'), r'(\Seen)', None, b'Subject: in new\r\n\r\nhi\r\n')
        typ, data = c.rename('Work', 'Job')
        assert typ == 'OK', data
        typ, data = c.delete('Old')
        assert typ == 'OK', data

        r, ev = run_once(dovecot, db)
        assert_cache_equals_server(db, c)
    finally:
        c.logout()

    after = cache_state(db, bodies=False)
    boxes = mailbox_rows(db)
    assert 'Neu über' in after and len(after['Neu über']) == 1
    assert 'Old' not in boxes
    for old, new in (('Work', 'Job'), ('Work/Projects', 'Job/Projects'),
                     ('Work/Projects/Big Project', 'Job/Projects/Big Project')):
        assert old not in boxes
        # a rename keeps the mailbox row and its messages (no delete + download)
        assert boxes[new]['id'] == boxes_before[old]['id'], f'{old} -> {new} was not a rename'
        assert [m[4]['id'] for m in after.get(new, [])] == [m[4]['id'] for m in before.get(old, [])]
    renamed = {e['mailbox'] for e in ev if e['event'] == 'mailbox_renamed'}
    assert {'Job', 'Job.Projects'} <= renamed


def test_uidvalidity_change_rebuilds_and_keeps_ops(dovecot, tmp_path):
    Corpus(seed=22, count=60, folders=['INBOX', 'Lists']).seed_maildir(dovecot, 'user1')
    db = tmp_path / 'cache.db'
    run_once(dovecot, db)
    boxes = mailbox_rows(db)
    lists = boxes['Lists']
    st = cache_state(db, bodies=False)
    victim = st['Lists'][0]

    # A local change still waiting to be written back, referring to a Lists message.
    con = sqlite3.connect(db)
    with con:
        con.execute('INSERT INTO op (kind, mailbox_id, message_id, uid, flags_add, body_id) '
                    'VALUES (1, ?, ?, ?, 2, ?)',
                    (lists['id'], victim[4]['id'], victim[0], victim[4]['body_id']))
    n_ops = con.execute('SELECT count(*) FROM op').fetchone()[0]
    con.close()

    c = dovecot.client('user1')
    try:
        time.sleep(1.1)  # Dovecot derives UIDVALIDITY from the clock
        assert c.delete('Lists')[0] == 'OK'
        assert c.create('Lists')[0] == 'OK'
        for i in range(4):
            c.append('Lists', None, None, f'Subject: after {i}\r\n\r\nreborn {i}\r\n'.encode())
        typ, data = c.status('Lists', '(UIDVALIDITY)')
        new_uv = int(data[0].split(b'UIDVALIDITY ')[1].rstrip(b')'))
        assert new_uv != lists['uidvalidity'], 'server kept UIDVALIDITY; test proves nothing'

        r, ev = run_once(dovecot, db)
        assert_cache_equals_server(db, c)
    finally:
        c.logout()
    assert any(e['event'] == 'uidvalidity' and e['mailbox'] == 'Lists' for e in ev)
    boxes = mailbox_rows(db)
    assert boxes['Lists']['uidvalidity'] == new_uv
    assert boxes['Lists']['id'] == lists['id']
    con = sqlite3.connect(db)
    try:
        ops = con.execute('SELECT count(*) FROM op').fetchone()[0]
    finally:
        con.close()
    # Issue 5: the op named a uid of the old UIDVALIDITY; replay must not send it (uid
    # victim[0] now names another message): it is dropped, never applied to the new one.
    assert n_ops == 1 and ops == 0
    assert victim[0] <= 4, 'the stale uid must exist in the new incarnation for this check'
    lists_now = cache_state(db, bodies=False)['Lists']
    assert len(lists_now) == 4
    assert all('\\Flagged' not in m[1] for m in lists_now), 'a stale flag op reached the server'
    assert any(e.get('event') == 'uidvalidity' for e in ev)
