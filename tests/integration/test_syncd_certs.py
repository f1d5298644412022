# SPDX-License-Identifier: MIT
"""acs-syncd end to end against Dovecot with bad certificates: wrong CA, wrong host name,
expired, self-signed — over imaps:// and STARTTLS. None is accepted: exit status 69
(EX_UNAVAILABLE, acs_imap_error_exit_status() of imapconn.c), no login reaches the server, nothing is cached. (The connection layer itself
is tested byte by byte in test_syncd_tls.py.)"""

import sqlite3
import subprocess

import pytest

from acstest.dovecot import Dovecot
from acstest.pki import PKI
from test_syncd_common import run_once, syncd_args

EX_UNAVAILABLE = 69

CASES = ['wrong-ca', 'wrong-host', 'expired', 'self-signed']


def _dovecot(tmp_path, case):
    if case == 'wrong-ca':
        return Dovecot(tmp_path / 'dovecot'), str(PKI(tmp_path / 'other-ca').ca_cert)
    pki = PKI(tmp_path / 'pki-for-cert')
    if case == 'wrong-host':
        cert = pki.server_cert('wronghost', hosts=('mail.example.org',))
    elif case == 'expired':
        cert = pki.server_cert('expired', expired=True)
    else:
        cert = pki.self_signed('selfsigned')
    dv = Dovecot(tmp_path / 'dovecot', cert=cert)
    # trust the CA that issued the served certificate (except for self-signed, which no CA issued)
    return dv, str(pki.ca_cert)


@pytest.mark.parametrize('tls', ['imaps', 'starttls'])
@pytest.mark.parametrize('case', CASES)
def test_bad_certificate_refused(case, tls, tmp_path):
    dv, ca = _dovecot(tmp_path, case)
    try:
        db = tmp_path / 'cache.db'
        args = syncd_args(dv, db, url=dv.url(tls), extra=('--once',))
        args[args.index('--ca') + 1] = ca
        r = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert r.returncode == EX_UNAVAILABLE, f'exit {r.returncode}\n{r.stderr[-2000:]}'
        log = open(dv.log_file, errors='replace').read()
        assert 'Login: user=<user1>' not in log, 'a login reached the server'
        con = sqlite3.connect(db)
        try:
            assert con.execute('SELECT count(*) FROM message').fetchone()[0] == 0
        finally:
            con.close()
    finally:
        dv.close()


@pytest.mark.parametrize('tls', ['imaps', 'starttls'])
def test_good_certificate_accepted(tls, tmp_path):
    """The control: the same setup with the right CA and host logs in and syncs."""
    dv = Dovecot(tmp_path / 'dovecot')
    try:
        c = dv.client('user1')
        c.append('INBOX', None, None, b'Subject: ok\r\n\r\nok\r\n')
        c.logout()
        db = tmp_path / 'cache.db'
        if tls == 'imaps':
            run_once(dv, db)
        else:
            a = syncd_args(dv, db, url=dv.url('starttls'), extra=('--once',))
            r = subprocess.run(a, capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr[-2000:]
        con = sqlite3.connect(db)
        try:
            assert con.execute('SELECT count(*) FROM message').fetchone()[0] == 1
        finally:
            con.close()
    finally:
        dv.close()
