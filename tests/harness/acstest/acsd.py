# SPDX-License-Identifier: MIT
"""acsd for tests: a config in a temporary directory, acsd in the foreground, a protocol
client, and a stop that leaves nothing behind (children, mounts, its dbus-daemon)."""

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

from . import fusecheck, paths, procs

SANITIZER_VARS = ('ASAN_OPTIONS', 'UBSAN_OPTIONS', 'LSAN_OPTIONS')
# Per-user agent uids of the tests: users acs-agent0..127 made by tests/install-deps
# (dbus-daemon refuses uids without a passwd entry), in 8 slots of 16. acsd kills every
# process of an agent uid when it stops an instance, so concurrent test processes (other
# pytest runs on this machine) must not share uids: each takes a slot under a lock file.
AGENT_UID_BASE = 2100000
AGENT_UIDS = 16
AGENT_SLOTS = 8
_slot = None


def agent_uid_range():
    """(uid_min, uid_max) of this process's slot, taken once (lock held until exit)."""
    global _slot
    if _slot is None:
        import fcntl
        for i in range(AGENT_SLOTS):
            fd = os.open(f'/tmp/acstest-agent-uids-{i}.lock', os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            _slot = (i, fd)
            break
        else:
            raise RuntimeError(f'all {AGENT_SLOTS} agent uid slots are taken by other test '
                               'processes (/tmp/acstest-agent-uids-*.lock)')
    lo = AGENT_UID_BASE + _slot[0] * AGENT_UIDS
    return lo, lo + AGENT_UIDS - 1


class AcsError(Exception):
    """An ERR reply: .code ('auth', 'limit', ...) and .text."""

    def __init__(self, code, text):
        super().__init__(f'ERR {code} {text}')
        self.code = code
        self.text = text


def pct(data):
    """Percent-encodes a field as docs/protocol.md wants (rawurlencode: never a raw '+')."""
    if isinstance(data, str):
        data = data.encode()
    return urllib.parse.quote(data, safe='-._~/:@,=')


def parse_reply(line):
    """(kind, name, pairs) of one reply line (bytes or str, line end optional):
    ('OK', 'OPEN', {...}), ('DATA', 'STATUS', {...}), ('EVENT', 'change', {...}) or
    ('ERR', code, {'text': ...})."""
    if isinstance(line, bytes):
        line = line.decode('ascii')
    line = line.rstrip('\r\n')
    parts = line.split(' ')
    if parts[0] == 'ERR':
        return 'ERR', parts[1], {'text': ' '.join(parts[2:])}
    pairs = {}
    for p in parts[2:]:
        k, _, v = p.partition('=')
        pairs[k] = urllib.parse.unquote(v)
    return parts[0], parts[1], pairs


class Client:
    """One connection to acsd's socket speaking the line protocol (blocking, with a
    timeout). hello=True sends HELLO 1 1 at once."""

    def __init__(self, socket_path, hello=True, timeout=60):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(socket_path))
        self.buf = b''
        if hello:
            self.call('HELLO 1 1')

    def send(self, line):
        """Sends raw bytes or a str line (LF added to a str)."""
        if isinstance(line, str):
            line = (line + '\n').encode()
        self.sock.sendall(line)

    def read_line(self):
        while b'\n' not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError('acsd closed the connection')
            self.buf += data
        line, self.buf = self.buf.split(b'\n', 1)
        return line + b'\n'

    def reply(self):
        """The next reply, parsed (see parse_reply)."""
        return parse_reply(self.read_line())

    def call(self, line):
        """Sends a command and returns (ok_pairs, data_items); raises AcsError on ERR."""
        self.send(line)
        items = []
        while True:
            kind, name, pairs = self.reply()
            if kind == 'ERR':
                raise AcsError(name, pairs['text'])
            if kind == 'DATA':
                items.append(pairs)
                continue
            return pairs, items

    def open(self, user, password):
        """OPEN: returns the OK pairs (token, user, path)."""
        return self.call(f'OPEN {pct(user)} {pct(password)}')[0]

    def resume(self, token):
        return self.call(f'RESUME {token}')[0]

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _conf_value(v):
    if isinstance(v, bool):
        return 'yes' if v else 'no'
    return '' if v is None else str(v)


class Acsd:
    """acsd with its own config in a temporary directory; see tests/harness/API.md."""

    def __init__(self, dir, dovecot=None, url=None, ca=None, cache='memory', idle_timeout=600,
                 group='www-data', owner='acs', mode='0750', layout='fs', max_per_uid=32,
                 login_failures=5, settings=None, start=True):
        self.dir = Path(dir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        # Agents (unprivileged uids) must reach caches and the tree: a 0755 path.
        self._own_work = None
        if paths.nobody_can_traverse(self.dir) and len(str(self.dir)) < 60:
            self.work = self.dir
        else:
            self._own_work = tempfile.mkdtemp(prefix='acsd-', dir='/tmp')
            os.chmod(self._own_work, 0o755)
            self.work = Path(self._own_work)
        self.run_dir = self.work / 'run'
        self.socket = self.run_dir / 'acsd.sock'
        self.tree_root = self.work / 'tree'
        self.cache_dir = self.work / 'cache'
        self.memory_dir = self.work / 'cache-mem'
        self.conf_file = self.dir / 'acs.conf'
        self.log_file = self.dir / 'acsd.log'
        if dovecot is not None:
            url = url or dovecot.url('imaps')
            ca = ca or dovecot.ca_file
        if ca:
            # The agents (other uids) read the CA: a world-readable copy in the work dir.
            self.work.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ca, self.work / 'ca.pem')
            os.chmod(self.work / 'ca.pem', 0o644)
            ca = self.work / 'ca.pem'
        self.sections = {
            'imap': {'url': url or 'imaps://localhost:993', 'ca': ca or ''},
            'cache': {'mode': cache, 'dir': self.cache_dir, 'memory_dir': self.memory_dir},
            'tree': {'root': self.tree_root, 'layout': layout, 'owner': owner, 'group': group,
                     'mode': mode},
            'session': {'idle_timeout': idle_timeout},
            'socket': {'path': self.socket, 'max_per_uid': max_per_uid},
            'bus': {'mode': 'own'},
            'limits': {'login_failures': login_failures, 'max_users': AGENT_UIDS},
            # One uid per user for its agents, so one user's agent cannot open another's
            # cache.
            'agent': dict(zip(('uid_min', 'uid_max'), agent_uid_range())),
        }
        for sec, kv in (settings or {}).items():
            self.sections.setdefault(sec, {}).update(kv)
        self.proc = None
        self._logf = None
        self._seen = set()
        last = AGENT_UID_BASE + AGENT_SLOTS * AGENT_UIDS - 1
        try:
            pwd.getpwuid(last)
        except KeyError:
            raise RuntimeError(f'agent uids {AGENT_UID_BASE}..{last} have no passwd entries: '
                               'run tests/install-deps as root') from None
        self.write_config()
        procs.register(self)
        if start:
            self.start()

    # ---- config and process ----

    def write_config(self):
        lines = ['; written by acstest.acsd']
        for sec, kv in self.sections.items():
            lines.append(f'[{sec}]')
            lines += [f'{k} = {_conf_value(v)}' for k, v in kv.items()]
        self.conf_file.write_text('\n'.join(lines) + '\n')

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout=60):
        """Starts acsd -c CONF --foreground (log in log_file) and waits until its socket
        answers HELLO; raises RuntimeError with the log's tail if it exits or times out."""
        for d in (self.run_dir, self.tree_root, self.cache_dir, self.memory_dir):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o755)
        env = {k: v for k, v in os.environ.items()
               if k in SANITIZER_VARS or k in ('PATH', 'LANG', 'TZ')}
        env.setdefault('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')
        self._logf = open(self.log_file, 'ab')
        self.proc = subprocess.Popen(
            [paths.binary('acsd'), '-c', str(self.conf_file), '--foreground',
             '--log-level', 'debug'],
            stdin=subprocess.DEVNULL, stdout=self._logf, stderr=subprocess.STDOUT, env=env,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f'acsd exited with status {self.proc.returncode} at start:\n'
                                   + self.log_tail())
            try:
                with Client(self.socket, timeout=5):
                    return
            except (OSError, ConnectionError, AcsError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f'acsd did not answer on {self.socket} within {timeout}s:\n'
                                   + self.log_tail())
            time.sleep(0.05)

    def log_text(self):
        try:
            return self.log_file.read_bytes().decode(errors='replace')
        except FileNotFoundError:
            return ''

    def log_tail(self, n=60):
        return '\n'.join(self.log_text().splitlines()[-n:])

    def descendants(self):
        """Pids of every live descendant of acsd (agents, helpers)."""
        if not self.running:
            return []
        out = procs.descendants(self.proc.pid)
        self._seen.update(out)
        return out

    def _ours(self):
        """Live processes that belong to this acsd: descendants seen, and daemonized ones
        (its dbus-daemon) whose command line names our directories."""
        pids = set(p for p in self._seen if procs.alive(p))
        if self.running:
            pids.update(procs.descendants(self.proc.pid))
        marks = tuple(str(p) for p in (self.run_dir, self.conf_file, self.cache_dir,
                                        self.memory_dir, self.tree_root))
        for e in os.listdir('/proc'):
            if e.isdigit() and int(e) != os.getpid():
                cl = procs.cmdline(int(e))
                if any(m in cl for m in marks) and 'pytest' not in cl and procs.alive(int(e)):
                    pids.add(int(e))
        if self.proc:
            pids.discard(self.proc.pid)
        return sorted(pids)

    def agents(self, user=None):
        """{'syncd': [pids], 'fs': [pids]} of acsd's acs-syncd and acs-fs processes (of one
        user when given: its name in the command line, or its tree as the mount)."""
        out = {'syncd': [], 'fs': []}
        for p in self.descendants():
            try:
                comm = Path(f'/proc/{p}/comm').read_text().strip()
            except OSError:
                continue
            kind = {'acs-syncd': 'syncd', 'acs-fs': 'fs'}.get(comm)
            if not kind:
                continue
            if user is not None and not self._belongs(p, user):
                continue
            out[kind].append(p)
        return out

    def _belongs(self, pid, user):
        args = procs.cmdline(pid).split(' ')
        if user in args or str(self.tree(user)) in args:
            return True
        # --db path names the user; /dev/fd/N mounts do not: ask acsd's status
        return any(f'/{user}' in a and (str(self.work) in a) for a in args)

    def agent_uid(self, pid):
        """Real uid of a process."""
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith('Uid:'):
                    return int(line.split()[1])
        raise ProcessLookupError(pid)

    def cache_files(self, user):
        """user's cache database files: the --db of its acs-syncd (with -wal/-shm), else
        files under the cache directories whose path names the user."""
        out = []
        for p in self.agents(user)['syncd']:
            args = procs.cmdline(p).split(' ')
            for i, arg in enumerate(args):
                db = args[i + 1] if arg == '--db' and i + 1 < len(args) else (
                    arg[5:] if arg.startswith('--db=') else None)
                if db:
                    out += [db + sfx for sfx in ('', '-wal', '-shm') if os.path.exists(db + sfx)]
        if not out:
            for d in (self.memory_dir, self.cache_dir):
                for r, _, ns in os.walk(d):
                    out += [os.path.join(r, n) for n in ns if user in os.path.join(r, n)]
        return sorted(set(out))

    def tree(self, user):
        return self.tree_root / user

    def mounted(self, user):
        return fusecheck.is_mounted(self.tree(user))

    def mounts(self):
        """Mount points at or below tree_root."""
        root = os.path.realpath(self.tree_root)
        out = []
        with open('/proc/self/mountinfo') as f:
            for line in f:
                mp = line.split()[4].encode().decode('unicode_escape')
                if mp == root or mp.startswith(root + '/'):
                    out.append(mp)
        return out

    def bus_address(self):
        """Address of acsd's own dbus-daemon (from the <listen> of the config file its
        command line names), or None."""
        for p in self._ours():
            cl = procs.cmdline(p)
            if 'dbus-daemon' not in cl:
                continue
            m = re.search(r'--config-file[= ](\S+)', cl)
            if m and os.path.exists(m.group(1)):
                lm = re.search(r'<listen>([^<]+)</listen>', Path(m.group(1)).read_text())
                if lm:
                    return lm.group(1).strip()
        sock = self.run_dir / 'bus' / 'bus.sock'  # the default bus.dir, next to the socket
        return f'unix:path={sock}' if sock.exists() else None

    # ---- clients ----

    def client(self, hello=True, timeout=60):
        return Client(self.socket, hello=hello, timeout=timeout)

    def open(self, user, password):
        """Opens a session on a fresh connection (closed afterwards: the session stays);
        returns the OK pairs (token, user, path). Raises AcsError."""
        with self.client() as c:
            return c.open(user, password)

    def acsctl(self, *args, input=None, timeout=120, uid=None, **kw):
        """Runs acsctl -s SOCKET ARGS (as uid when given); a CompletedProcess (bytes)."""
        pre = None
        if uid is not None:
            def pre():
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
        return subprocess.run([paths.binary('acsctl'), '-s', str(self.socket), *args],
                              input=input if input is not None else b'', capture_output=True,
                              timeout=timeout, preexec_fn=pre, **kw)

    # ---- stop ----

    def stop(self, timeout=30):
        """SIGTERM to acsd, SIGKILL after timeout; then kills whatever of its processes
        survived, unmounts what is left below tree_root and removes its socket. Returns
        {'pids': [...], 'mounts': [...]}: what acsd itself left behind (empty when it
        stopped cleanly)."""
        left = {'pids': [], 'mounts': []}
        if self.proc is None:
            return left
        self.descendants()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        rest = procs.wait_gone(self._ours(), 5)
        left['pids'] = rest
        procs.kill_all(rest)
        procs.wait_gone(rest, 5)
        left['mounts'] = self.mounts()
        for mp in sorted(left['mounts'], key=len, reverse=True):
            try:
                fusecheck.unmount(mp)
            except RuntimeError:
                subprocess.run(['umount', '-l', mp], capture_output=True)
        if self._logf:
            self._logf.close()
            self._logf = None
        self.proc = None
        return left

    def kill(self):
        """SIGKILL to acsd alone (a crash); stop() cleans up afterwards."""
        self.descendants()
        if self.running:
            self.proc.kill()
            self.proc.wait(10)

    def close(self):
        self.stop()
        procs.unregister(self)
        if self._own_work and os.environ.get('ACS_KEEP_TMP') != '1':
            shutil.rmtree(self._own_work, ignore_errors=True)
            self._own_work = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---- small helpers for acsd tests ----

def wait_for(pred, timeout, what, interval=0.05):
    """Polls pred() until it returns something true (returned); raises AssertionError
    naming `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out after {timeout}s waiting for {what}')
        time.sleep(interval)


def maildir_files(folder_dir):
    """Sorted paths of the messages in a Maildir folder (cur/ and new/), [] if unreadable."""
    out = []
    for sub in ('cur', 'new'):
        try:
            out += [os.path.join(folder_dir, sub, n) for n in os.listdir(os.path.join(folder_dir, sub))]
        except OSError:
            pass
    return sorted(out)


def proc_status(pid, key):
    """A field of /proc/PID/status ('VmRSS' -> '1234 kB'), or None."""
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith(key + ':'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return None


def rss_kb(pid):
    v = proc_status(pid, 'VmRSS')
    return int(v.split()[0]) if v else 0


def fd_count(pid):
    return len(os.listdir(f'/proc/{pid}/fd'))


# ---- watching acsd's bus ----

WIRE_PURPOSES = {1: 'AGENT_HELLO', 2: 'CRED_REQUEST', 3: 'CRED', 4: 'LOGIN_RESULT',
                 5: 'SYNC_NOW', 6: 'PROGRESS', 7: 'CHANGE', 8: 'STOP', 9: 'STATUS'}

_HDR = re.compile(r'^(method call|method return|signal|error) time=\S+ sender=(\S+) -> '
                  r'destination=(\S+)(.*)$')


def wire_header(data):
    """(kind, purpose name, sender id, recipient id, counter) of a sealed acs message
    (include/acs/wire.h), or None if data does not start with the magic."""
    if len(data) < 28 or data[:4] != b'ACSW':
        return None
    purpose = int.from_bytes(data[6:8], 'big')
    return (data[5], WIRE_PURPOSES.get(purpose, str(purpose)), int.from_bytes(data[8:12], 'big'),
            int.from_bytes(data[12:16], 'big'), int.from_bytes(data[16:24], 'big'))


class BusMonitor:
    """dbus-monitor (as root: BecomeMonitor) on a bus address, capturing everything twice:
    as text (parsed by messages()) and as pcap (raw wire bytes, for searching secrets)."""

    def __init__(self, address, dir):
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.text_file = self.dir / 'bus-monitor.txt'
        self.pcap_file = self.dir / 'bus-monitor.pcap'
        self.procs = [
            subprocess.Popen(['dbus-monitor', '--address', address, '--monitor'],
                             stdout=open(self.text_file, 'wb'), stderr=subprocess.STDOUT),
            subprocess.Popen(['dbus-monitor', '--address', address, '--pcap'],
                             stdout=open(self.pcap_file, 'wb'), stderr=subprocess.DEVNULL),
        ]
        # Ready once the monitor saw its own name handshake (it prints NameAcquired/Lost).
        wait_for(lambda: self.text_file.stat().st_size > 0 or self.procs[0].poll() is not None,
                 10, 'dbus-monitor to attach')
        if self.procs[0].poll() is not None:
            raise RuntimeError('dbus-monitor failed: ' + self.text_file.read_text(errors='replace'))
        time.sleep(0.2)
        procs.register(self)

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        procs.unregister(self)

    def raw(self):
        """Everything captured, as bytes (pcap and text)."""
        return self.pcap_file.read_bytes() + self.text_file.read_bytes()

    def messages(self):
        """Parsed messages: dicts with type, sender, dest, member, data (bytes of the first
        'ay' argument or None)."""
        out = []
        cur = None
        lines = self.text_file.read_text(errors='replace').splitlines()
        i = 0
        while i < len(lines):
            line = lines[i]
            m = _HDR.match(line)
            if m:
                rest = m.group(4)
                mm = re.search(r'member=(\S+)', rest)
                cur = {'type': m.group(1), 'sender': m.group(2), 'dest': m.group(3),
                       'member': mm.group(1) if mm else None, 'data': None}
                out.append(cur)
            elif cur is not None and cur['data'] is None and 'array of bytes [' in line:
                hexes = []
                i += 1
                while i < len(lines) and lines[i].strip() != ']':
                    hexes += lines[i].split()
                    i += 1
                cur['data'] = bytes(int(h, 16) for h in hexes)
            elif cur is not None and cur['data'] is None and 'array of bytes "' in line:
                s = line.split('array of bytes "', 1)[1]
                cur['data'] = s[:-1].encode('latin-1', errors='replace') if s.endswith('"') else s.encode()
            i += 1
        return out

    def wire(self):
        """acs messages seen: list of (message dict, wire_header tuple)."""
        out = []
        for m in self.messages():
            if m['member'] == 'Message' and m['data']:
                h = wire_header(m['data'])
                if h:
                    out.append((m, h))
        return out


def contains_secret(data, secret):
    """Whether bytes data hold secret raw, hex-encoded (with or without spaces, either case)
    or base64-encoded."""
    import base64
    if isinstance(secret, str):
        secret = secret.encode()
    forms = [secret, secret.hex().encode(), secret.hex().upper().encode(),
             ' '.join(f'{b:02x}' for b in secret).encode(), base64.b64encode(secret)[:-4]]
    return any(f in data for f in forms if f)
