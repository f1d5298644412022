# SPDX-License-Identifier: MIT
"""acs-syncd incremental sync against a real Dovecot, once per server kind: QRESYNC,
CONDSTORE only, and neither (plain flag scan). Changes made with an independent client
(flags set and cleared, keywords, \\Seen moving new/ -> cur/, expunges, appends) must all
arrive, through the expected path, without re-downloading unchanged messages."""

import pytest

from acstest.corpus import Corpus
from acstest.dovecot import Dovecot
from test_syncd_common import (assert_cache_equals_server, cache_state, quote, run_once,
                               sync_paths)

BASE_CAPS = ('IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE NAMESPACE UNSELECT CHILDREN '
             'UIDPLUS LIST-EXTENDED LITERAL+ MOVE SPECIAL-USE')
MODES = {
    # capability string (None = Dovecot's own, which has QRESYNC), expected path
    'qresync': (None, 'qresync'),
    'condstore': (BASE_CAPS + ' CONDSTORE', 'condstore'),
    'neither': (BASE_CAPS, 'scan'),
}
FOLDERS = ['INBOX', 'Lists', 'Work/Projects']


def _uids(client, mailbox, criteria):
    typ, data = client.select(quote(mailbox))
    assert typ == 'OK', data
    typ, data = client.uid('SEARCH', None, criteria)
    assert typ == 'OK', data
    return [int(x) for x in data[0].split()]


def _store(client, uids, op, flags):
    if uids:
        typ, data = client.uid('STORE', ','.join(map(str, uids)), op, flags)
        assert typ == 'OK', data


@pytest.fixture(params=sorted(MODES))
def mode(request, tmp_path):
    caps, path = MODES[request.param]
    dv = Dovecot(tmp_path / 'dovecot', capabilities=caps)
    try:
        yield dv, path, request.param
    finally:
        dv.close()


def test_incremental_paths(mode, tmp_path):
    dv, want_path, name = mode
    corpus = Corpus(seed=11, count=240, folders=FOLDERS)
    corpus.seed_maildir(dv, 'user1')
    db = tmp_path / 'cache.db'
    r, ev = run_once(dv, db)
    assert set(sync_paths(ev).values()) == {'full'}
    before = cache_state(db, bodies=False)
    ids_before = {f: {m[0]: m[4]['id'] for m in msgs} for f, msgs in before.items()}

    c = dv.client('user1')
    try:
        caps = c.capabilities
        if name == 'neither':
            assert 'CONDSTORE' not in caps and 'QRESYNC' not in caps, caps
        # INBOX: \Seen set and cleared, keyword, $Forwarded, expunges, appends
        unseen = _uids(c, 'INBOX', 'UNSEEN')
        seen = _uids(c, 'INBOX', 'SEEN')
        assert len(unseen) >= 6 and len(seen) >= 6
        _store(c, unseen[:4], '+FLAGS', r'(\Seen)')
        _store(c, seen[:3], '-FLAGS', r'(\Seen)')
        _store(c, seen[3:5], '+FLAGS', r'($Important \Flagged)')
        _store(c, unseen[4:6], '+FLAGS', r'($Forwarded)')
        gone = unseen[-3:]
        _store(c, gone, '+FLAGS', r'(\Deleted)')
        typ, data = c.uid('EXPUNGE', ','.join(map(str, gone)))
        assert typ == 'OK', data
        for i in range(5):
            c.append('INBOX', r'(\Seen)' if i % 2 else None, None,
                     f'Subject: new {i}\r\nMessage-ID: <n{i}@x>\r\n\r\nnew body {i}\r\n'.encode())
        c.append('Lists', None, None, b'Subject: list\r\n\r\nlist mail\r\n')
        # Work/Projects: flag changes only
        wp = _uids(c, 'Work.Projects', 'ALL')
        _store(c, wp[:2], '+FLAGS', r'(\Answered keywordX)')
        c.unselect()

        r, ev = run_once(dv, db)
        paths = sync_paths(ev)
        for folder in ('INBOX', 'Lists', 'Work.Projects'):
            assert paths.get(folder) == want_path, f'{folder}: path {paths.get(folder)} != {want_path}'
        srv = assert_cache_equals_server(db, c)
    finally:
        c.logout()

    after = cache_state(db, bodies=False)
    # unchanged and flag-changed messages kept their rows (no re-download)
    for f, msgs in after.items():
        for uid, *_rest, row in msgs:
            if uid in ids_before.get(f, {}):
                assert row['id'] == ids_before[f][uid], f'{f} uid {uid} was downloaded again'
    assert not set(gone) & {m[0] for m in after['INBOX']}
    # \Seen set by the server moved messages to cur/ (state not NEW)
    for m in after['INBOX']:
        if m[0] in unseen[:4]:
            assert m[4]['state'] == 0
    assert len(srv['INBOX']) == len(before['INBOX']) - 3 + 5


def test_resync_after_no_change_is_quiet(mode, tmp_path):
    dv, want_path, name = mode
    corpus = Corpus(seed=12, count=60, folders=FOLDERS)
    corpus.seed_maildir(dv, 'user1')
    db = tmp_path / 'cache.db'
    run_once(dv, db)
    r, ev = run_once(dv, db)
    paths = sync_paths(ev)
    if name == 'neither':
        # no HIGHESTMODSEQ: every mailbox needs its flag scan
        assert set(paths.values()) == {'scan'}
    else:
        assert paths == {}, f'unchanged mailboxes were selected: {paths}'
