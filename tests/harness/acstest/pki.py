# SPDX-License-Identifier: MIT
"""A throw-away certificate authority for tests, driven by the openssl command line."""

import datetime
import ipaddress
import os
import subprocess
from pathlib import Path


def _run(args, cwd):
    r = subprocess.run(['openssl', *args], cwd=cwd, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed ({r.returncode}): "
                           f"{r.stderr.decode(errors='replace')}")
    return r.stdout


def _san(hosts):
    parts = []
    for h in hosts:
        try:
            ipaddress.ip_address(h)
            parts.append(f'IP:{h}')
        except ValueError:
            parts.append(f'DNS:{h}')
    return ','.join(parts)


def _stamp(dt):
    return dt.strftime('%Y%m%d%H%M%SZ')


_CA_CNF = """\
[ ca ]
default_ca = acs_ca
[ acs_ca ]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/serial
certificate = $dir/ca.pem
private_key = $dir/ca.key
default_md = sha256
policy = acs_policy
unique_subject = no
copy_extensions = none
email_in_dn = no
[ acs_policy ]
commonName = supplied
[ req ]
distinguished_name = acs_dn
prompt = no
[ acs_dn ]
CN = acs
"""


class PKI:
    """A CA in `dir` (created if needed): `ca_cert`, `ca_key`; issues leaf certificates.

    Keys are EC P-256 (fast to make). All files are PEM; keys are mode 0600.
    """

    def __init__(self, dir, name='acs test CA'):
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / 'newcerts').mkdir(exist_ok=True)
        self.ca_cert = str(self.dir / 'ca.pem')
        self.ca_key = str(self.dir / 'ca.key')
        self._cnf = self.dir / 'ca.cnf'
        if not os.path.exists(self.ca_cert):
            self._cnf.write_text(_CA_CNF.format(dir=self.dir))
            (self.dir / 'index.txt').write_text('')
            (self.dir / 'serial').write_text('1000\n')
            _run(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1',
                  '-nodes', '-keyout', self.ca_key, '-out', self.ca_cert, '-days', '3650',
                  '-subj', f'/CN={name}', '-sha256',
                  '-addext', 'basicConstraints=critical,CA:TRUE',
                  '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
                  '-addext', 'subjectKeyIdentifier=hash'], self.dir)
            os.chmod(self.ca_key, 0o600)

    def _newkey_csr(self, name):
        key = self.dir / f'{name}.key'
        csr = self.dir / f'{name}.csr'
        _run(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1',
              '-nodes', '-keyout', str(key), '-out', str(csr), '-subj', f'/CN={name}'], self.dir)
        os.chmod(key, 0o600)
        return key, csr

    def server_cert(self, name='server', hosts=('localhost', '127.0.0.1'), days=30,
                    expired=False):
        """Issues a TLS server certificate for `hosts` (subjectAltName) signed by the CA.

        Returns (cert_path, key_path) as str. With expired=True the validity window is
        [now - days - 2 days, now - 1 day], so notAfter lies in the past.
        """
        key, csr = self._newkey_csr(name)
        cert = self.dir / f'{name}.pem'
        ext = self.dir / f'{name}.ext'
        ext.write_text('[ leaf ]\n'
                       'basicConstraints = critical,CA:FALSE\n'
                       'keyUsage = critical,digitalSignature,keyEncipherment,keyAgreement\n'
                       'extendedKeyUsage = serverAuth\n'
                       f'subjectAltName = {_san(hosts)}\n'
                       'authorityKeyIdentifier = keyid\n')
        now = datetime.datetime.now(datetime.timezone.utc)
        if expired:
            start, end = now - datetime.timedelta(days=days + 2), now - datetime.timedelta(days=1)
        else:
            start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=days)
        _run(['ca', '-batch', '-config', str(self._cnf), '-notext', '-in', str(csr),
              '-out', str(cert), '-startdate', _stamp(start), '-enddate', _stamp(end),
              '-extfile', str(ext), '-extensions', 'leaf'], self.dir)
        return str(cert), str(key)

    def self_signed(self, name, hosts=('localhost', '127.0.0.1'), days=30):
        """A self-signed server certificate for `hosts`, not issued by the CA.

        Returns (cert_path, key_path) as str.
        """
        key = self.dir / f'{name}.key'
        cert = self.dir / f'{name}.pem'
        _run(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1',
              '-nodes', '-keyout', str(key), '-out', str(cert), '-days', str(days),
              '-subj', f'/CN={name}', '-addext', f'subjectAltName={_san(hosts)}',
              '-addext', 'extendedKeyUsage=serverAuth'], self.dir)
        os.chmod(key, 0o600)
        return str(cert), str(key)

    def verify(self, cert, host=None):
        """Runs `openssl verify` of cert against the CA (and host name if given).

        Returns (ok, output) — output is openssl's combined text, for messages.
        """
        args = ['openssl', 'verify', '-CAfile', self.ca_cert]
        if host:
            try:
                ipaddress.ip_address(host)
                args += ['-verify_ip', host]
            except ValueError:
                args += ['-verify_hostname', host]
        r = subprocess.run(args + [cert], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
        return r.returncode == 0, r.stdout.decode(errors='replace')
