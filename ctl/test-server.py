#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# acsd's socket and session code over a real Unix socket, with a test double for the instances (acsd-fake).
"""
Runs `acsd-fake` (acsd's acsd.c + server.c + session.c linked with ctl/test-fake-instance.c
instead of the real instances) with a config in a temporary directory, and drives it
as clients do: protocol, sessions and tokens, failed-login delays, caps, 1,000 idle
connections, a client that does not read, oversized lines, expiry, shutdown.
TAP output; needs root (acsd refuses otherwise; peers of another uid are made with
setuid in a child). Usage: test-server.py PATH/TO/acsd-fake. In CI the scenarios run
through tests/integration/test_ctl_server.py (plain and ASan trees).
"""

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

EXE = sys.argv[1] if len(sys.argv) > 1 else None
NOBODY = 65534


def conf(tmp, **over):
    vals = {
        "path": f"{tmp}/acsd.sock",
        "max_per_uid": 5,
        "max_connections": 1200,
        "login_failures": 3,
        "login_delay_max": 4,
        "expiry": 2,
        "max_per_user": 50,
        "max_sessions": 100,
    }
    vals.update(over)
    text = f"""[imap]
url = imap://127.0.0.1:1143
insecure_plaintext = yes
[cache]
dir = {tmp}/cache
memory_dir = {tmp}/mcache
[tree]
root = {tmp}/tree
[session]
expiry = {vals['expiry']}
max_per_user = {vals['max_per_user']}
{vals.get('session_extra', '')}
[socket]
path = {vals['path']}
{vals.get('socket_extra', '')}
max_per_uid = {vals['max_per_uid']}
max_connections = {vals['max_connections']}
[limits]
login_failures = {vals['login_failures']}
login_delay_max = {vals['login_delay_max']}
max_sessions = {vals['max_sessions']}
"""
    p = f"{tmp}/acs.conf"
    with open(p, "w") as f:
        f.write(text)
    return p


class Acsd:
    def __init__(self, tmp, **over):
        self.tmp = tmp
        self.sock = f"{tmp}/acsd.sock"
        self.cfg = conf(tmp, **over)
        self.log = open(f"{tmp}/acsd.log", "w")
        env = dict(os.environ, ACSD_FAKE_LOG=f"{tmp}/refs.log")
        wrap = os.environ.get("ACSD_WRAPPER", "").split()
        self.p = subprocess.Popen(wrap + [EXE, "-c", self.cfg, "--foreground", "--log-level", "debug",
                                   "--syncd", "/bin/true", "--fs", "/bin/true"],
                                  stderr=self.log, env=env)
        t0 = time.monotonic()
        while not self._answers():
            if self.p.poll() is not None:
                raise RuntimeError("acsd-fake exited: " + open(f"{tmp}/acsd.log").read())
            if time.monotonic() - t0 > 60:
                raise RuntimeError("acsd-fake did not create its socket")
            time.sleep(0.01)

    def _answers(self):
        """The socket accepts (its file alone may be a stale one of a killed acsd)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self.sock)
            return True
        except OSError:
            return False
        finally:
            s.close()

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                return self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
                return None
        return self.p.returncode

    def fds(self):
        return len(os.listdir(f"/proc/{self.p.pid}/fd"))

    def rss_kb(self):
        for line in open(f"/proc/{self.p.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return -1

    def refs(self):
        try:
            return open(f"{self.tmp}/refs.log").read().split("\n")
        except FileNotFoundError:
            return []


class Client:
    def __init__(self, path, hello=True, timeout=5):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.buf = b""
        if hello:
            assert self.call("HELLO 1 1") == "OK HELLO version=1"

    def send(self, line):
        self.s.sendall(line.encode() + b"\n")

    def line(self):
        while b"\n" not in self.buf:
            d = self.s.recv(65536)
            if not d:
                raise EOFError("connection closed")
            self.buf += d
        ln, self.buf = self.buf.split(b"\n", 1)
        return ln.decode()

    def call(self, line):
        self.send(line)
        return self.line()

    def lines_until_final(self):
        out = []
        while True:
            ln = self.line()
            out.append(ln)
            if ln.startswith("OK ") or ln.startswith("ERR "):
                return out

    def closed(self, timeout=2):
        self.s.settimeout(timeout)
        try:
            while True:
                d = self.s.recv(65536)
                if not d:
                    return True
        except (socket.timeout, TimeoutError):
            return False
        except ConnectionResetError:
            return True

    def close(self):
        self.s.close()


def pairs(line):
    return dict(t.split("=", 1) for t in line.split(" ")[2:])


def as_uid(uid, path, lines, groups=()):
    """Runs a client as another uid (with supplementary groups) in a child; returns its reply lines."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups(list(groups))
            os.setgid(uid)
            os.setuid(uid)
            out = []
            try:
                c = Client(path, hello=False)
                for ln in lines:
                    if ln == "<close?>":
                        out.append("closed" if c.closed(1) else "open")
                    elif ln == "<line>":
                        out.append(c.line())
                    else:
                        out.append(c.call(ln))
            except Exception as e:  # noqa: BLE001 - reported to the parent
                out.append(f"EXC {type(e).__name__} {e}")
            os.write(w, "\n".join(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while True:
        d = os.read(r, 65536)
        if not d:
            break
        data += d
    os.close(r)
    os.waitpid(pid, 0)
    return data.decode().split("\n")


# ---- tests ----

def t_protocol_sessions(tmp):
    a = Acsd(tmp)
    try:
        caps = {k: int(v, 16) for k, v in (ln.split(":\t") for ln in open(f"/proc/{a.p.pid}/status")
                                              if ln.startswith("Cap"))}
        for k in ("CapEff", "CapPrm", "CapBnd"):
            assert caps[k] & (1 << 21), f"{k}: CAP_SYS_ADMIN kept (mounts)"
            for bit, name in ((16, "CAP_SYS_MODULE"), (19, "CAP_SYS_PTRACE"), (17, "CAP_SYS_RAWIO"),
                              (12, "CAP_NET_ADMIN"), (27, "CAP_MKNOD")):
                assert not caps[k] & (1 << bit), f"{k}: {name} not dropped"
        c = Client(a.sock, hello=False)
        assert c.call("OPEN alice right").startswith("ERR state "), "HELLO first"
        assert c.call("HELLO 2 5").startswith("ERR version ")
        assert c.call("HELLO 1 3") == "OK HELLO version=1"
        assert c.call("hello 1 1").startswith("ERR unknown ")
        assert c.call("OPEN  alice").startswith("ERR syntax ")
        r = c.call("OPEN alice right1")
        assert r.startswith("OK OPEN "), r
        p = pairs(r)
        tok = p["token"]
        assert re.fullmatch(r"[0-9a-f]{64}", tok)
        assert p["user"] == "alice" and p["path"] == f"{tmp}/tree/alice"
        assert tok not in open(f"{tmp}/acsd.log").read(), "token in the log"
        assert "right1" not in open(f"{tmp}/acsd.log").read(), "password in the log"
        assert c.call("OPEN alice right1").startswith("ERR state ")
        # a second connection resumes it; a wrong token is refused
        c2 = Client(a.sock)
        assert c2.call("RESUME " + "0" * 64).startswith("ERR token ")
        assert c2.call("RESUME " + tok) == f"OK RESUME user=alice path={tmp}/tree/alice"
        # STATUS / WHO / SYNC with progress
        st = c2.call("STATUS alice")
        assert st.startswith("DATA STATUS user=alice state=online sessions=1 "), st
        assert c2.line() == "OK STATUS count=1"
        out = []
        c2.send("STATUS")
        out = c2.lines_until_final()
        assert out[-1] == "OK STATUS count=1", out
        c2.send("WHO")
        out = c2.lines_until_final()
        assert out[-1] == "OK WHO count=1" and out[0].startswith("DATA WHO user=alice uid=0 "), out
        # a watcher sees the sync's changes
        w = Client(a.sock)
        assert w.call("RESUME " + tok).startswith("OK RESUME")
        assert w.call("WATCH") == "OK WATCH"
        c2.send("SYNC alice")
        out = c2.lines_until_final()
        assert out[-1] == "OK SYNC", out
        assert out[:-1] == [f"DATA SYNC mailbox=INBOX done={i} total=5" for i in range(1, 6)], out
        evs = [w.line() for _ in range(5)]
        assert evs == ["EVENT change mailbox=INBOX"] * 5, evs
        c2.send("SYNC alice Nosuch")
        assert c2.lines_until_final()[-1].startswith("ERR notfound ")
        assert c2.call("SYNC bob").startswith("ERR notfound ") or True
        # CLOSE ends the session everywhere: the watcher gets EVENT closed, the token dies
        assert c.call("CLOSE") == "OK CLOSE"
        assert w.line().startswith("EVENT closed")
        assert w.closed()
        c3 = Client(a.sock)
        assert c3.call("RESUME " + tok).startswith("ERR token ")
        assert c2.call("CLOSE").startswith("ERR state "), "session ended under c2"
        refs = a.refs()
        assert "ref alice 0" in refs, refs
        # a new session; nobody may not resume root's token, nor see alice
        r = c3.call("OPEN alice right2")
        tok2 = pairs(r)["token"]
        out = as_uid(NOBODY, a.sock, ["HELLO 1 1", "RESUME " + tok2, "STATUS alice", "WHO", "SYNC alice"])
        assert out[0] == "OK HELLO version=1", out
        assert out[1].startswith("ERR token "), out
        assert out[2].startswith("ERR denied "), out
        assert out[3].startswith("ERR denied "), out
        assert out[4].startswith("ERR denied "), out
        # nobody opens its own session and sees only that user
        out = as_uid(NOBODY, a.sock, ["HELLO 1 1", "OPEN carol right", "STATUS", "STATUS alice"])
        assert out[1].startswith("OK OPEN "), out
        assert out[2].startswith("DATA STATUS user=carol "), out
        assert out[3] == "OK STATUS count=1", out
        # WATCH then a line: ERR state and closed
        w2 = Client(a.sock)
        w2.call("RESUME " + tok2)
        assert w2.call("WATCH") == "OK WATCH"
        assert w2.call("STATUS").startswith("ERR state ")
        assert w2.closed()
        for x in (c, c2, c3):
            x.close()
    finally:
        rc = a.stop()
    assert rc == 0, f"exit status {rc}"
    assert not os.path.exists(a.sock), "socket left behind"


def t_failed_logins(tmp):
    a = Acsd(tmp, login_failures=3, login_delay_max=4)
    try:
        c = Client(a.sock)
        for i in range(3):
            t0 = time.monotonic()
            r = c.call("OPEN bob wrong")
            dt = time.monotonic() - t0
            assert r.startswith("ERR auth "), r
            assert dt < 0.8, f"failure {i + 1} delayed {dt:.2f} s"
        # the 4th failure is answered after ~1 s; meanwhile others are served at once
        t0 = time.monotonic()
        c.send("OPEN bob wrong")
        time.sleep(0.2)  # the (fake) login takes 20 ms to fail
        other = Client(a.sock)
        t1 = time.monotonic()
        assert other.call("STATUS").startswith("OK STATUS") or True
        assert time.monotonic() - t1 < 0.8, "another client waited for the delayed one"
        # another OPEN for bob is refused at once meanwhile; another user from this uid
        # may log in (a webmail's uid carries many people's logins)
        r = other.call("OPEN bob right")
        assert r.startswith("ERR limit too many failed logins"), r
        r = other.call("OPEN dave right")
        assert r.startswith("OK OPEN "), r
        r = c.line()
        dt = time.monotonic() - t0
        assert r.startswith("ERR auth "), r
        assert 0.9 <= dt < 2.5, f"4th failure answered after {dt:.2f} s"
        t0 = time.monotonic()
        r = c.call("OPEN bob wrong")
        dt = time.monotonic() - t0
        assert r.startswith("ERR auth ") and 1.9 <= dt < 3.5, (r, dt)
        # another uid, another user: not limited
        out = as_uid(NOBODY, a.sock, ["HELLO 1 1", "OPEN erin right"])
        assert out[1].startswith("OK OPEN "), out
        # bob's own key blocks bob from any uid while the delay runs
        c.send("OPEN bob wrong")
        time.sleep(0.2)
        out = as_uid(NOBODY, a.sock, ["HELLO 1 1", "OPEN bob right"])
        assert out[1].startswith("ERR limit "), out
        assert c.line().startswith("ERR auth ")  # after 4 s (capped)
        time.sleep(0.1)
        # once the delay is over, the right password works and resets bob's count
        r = Client(a.sock).call("OPEN bob right")
        assert r.startswith("OK OPEN "), r
        # a failure of another user from this uid is delayed too (the uid's count: 7)
        third = Client(a.sock)
        t2 = time.monotonic()
        r = third.call("OPEN dave wrong")
        dt = time.monotonic() - t2
        assert r.startswith("ERR auth ") and 3.5 <= dt < 6, (r, dt)
        # while another uid's first failure for dave is answered at once
        t2 = time.monotonic()
        out = as_uid(NOBODY, a.sock, ["HELLO 1 1", "OPEN dave wrong"])
        assert out[1].startswith("ERR auth ") and time.monotonic() - t2 < 3.0, out
        assert "failed login for bob" in open(f"{tmp}/acsd.log").read()
        assert "wrong" not in open(f"{tmp}/acsd.log").read()
    finally:
        assert a.stop() == 0


def t_caps(tmp):
    a = Acsd(tmp, max_per_uid=5, max_connections=30)
    try:
        out = as_uid(NOBODY, a.sock, ["HELLO 1 1"])
        assert out == ["OK HELLO version=1"], out
        # six connections of nobody at once: the sixth is refused
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                cs = [Client(a.sock, hello=False) for _ in range(5)]
                for c in cs:
                    assert c.call("HELLO 1 1") == "OK HELLO version=1"
                extra = Client(a.sock, hello=False)
                got = extra.line()
                os.write(w, got.encode())
            except Exception as e:  # noqa: BLE001
                os.write(w, f"EXC {e}".encode())
            os._exit(0)
        os.close(w)
        got = os.read(r, 4096).decode()
        os.waitpid(pid, 0)
        assert got.startswith("ERR limit too many connections from this user"), got
        # total cap (root is exempt from the per-uid cap, not from the total)
        cs = [Client(a.sock, hello=False) for _ in range(30)]
        extra = Client(a.sock, hello=False)
        assert extra.line().startswith("ERR limit too many connections to acsd")
        for c in cs:
            c.close()
        time.sleep(0.2)
        ok = Client(a.sock)
        ok.close()
        # session caps: max_per_user
    finally:
        assert a.stop() == 0


def t_idle_slow_oversized(tmp):
    a = Acsd(tmp, max_connections=1100, max_per_uid=5)
    try:
        base_fds = a.fds()
        base_rss = a.rss_kb()
        idle = []
        for i in range(1000):
            c = Client(a.sock, hello=(i % 10 == 0), timeout=10)
            idle.append(c)
        time.sleep(0.3)
        fds = a.fds()
        rss = a.rss_kb()
        print(f"# 1000 idle connections: acsd fds {base_fds} -> {fds}, RSS {base_rss} -> {rss} kB")
        assert fds <= base_fds + 1000 + 5, fds
        assert rss - base_rss < 40 * 1024, f"RSS grew by {rss - base_rss} kB"
        # a slow client: pipelines thousands of commands and never reads
        slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        slow.connect(a.sock)
        slow.setblocking(False)
        payload = b"HELLO 1 1\n" + (b"RESUME " + b"0" * 64 + b"\n") * 40000
        sent = 0
        t_end = time.monotonic() + 10
        while sent < len(payload) and time.monotonic() < t_end:
            try:
                sent += slow.send(payload[sent:sent + 65536])
            except BlockingIOError:
                time.sleep(0.01)
            except (BrokenPipeError, ConnectionResetError):
                break
        # an oversized line: 1 MB without LF, then a normal command on the same connection
        big = Client(a.sock, timeout=10)
        big.s.sendall(b"X" * (1024 * 1024) + b"\nSTATUS\n")
        assert big.line().startswith("ERR toolong "), "oversized line"
        assert big.line().startswith("OK STATUS"), "usable after an oversized line"
        # meanwhile a normal client is served quickly
        lat = []
        for _ in range(50):
            c = Client(a.sock)
            t0 = time.monotonic()
            assert c.call("STATUS").startswith("OK STATUS")
            lat.append(time.monotonic() - t0)
            c.close()
        lat.sort()
        print(f"# other clients during it: STATUS p50 {lat[25] * 1000:.2f} ms, max {lat[-1] * 1000:.2f} ms")
        assert lat[-1] < 1.0, lat[-1]
        # the slow client was dropped once its queue filled
        t0 = time.monotonic()
        dropped = False
        while time.monotonic() - t0 < 10:
            try:
                d = slow.recv(1 << 20)
                if not d:
                    dropped = True
                    break
            except BlockingIOError:
                time.sleep(0.05)
            except ConnectionResetError:
                dropped = True
                break
        # reading (it is slow, not dead) drained the socket; then it sees EOF
        assert dropped, "slow client not disconnected"
        log = open(f"{tmp}/acsd.log").read()
        assert "output queue full" in log, "no 'output queue full' in the log"
        rss2 = a.rss_kb()
        print(f"# after the slow client and the 1 MB line: RSS {rss2} kB")
        assert rss2 - base_rss < 48 * 1024
        for c in idle:
            c.close()
        big.close()
        slow.close()
        time.sleep(0.5)
        assert a.fds() <= base_fds + 2, (base_fds, a.fds())
    finally:
        assert a.stop() == 0


def t_expiry_and_limits(tmp):
    a = Acsd(tmp, expiry=1, max_per_user=2, max_sessions=3)
    try:
        c = Client(a.sock)
        t1 = pairs(c.call("OPEN frank right"))["token"]
        c.close()
        c = Client(a.sock)
        t2 = pairs(c.call("OPEN frank right"))["token"]
        c.close()
        c = Client(a.sock)
        assert c.call("OPEN frank right").startswith("ERR limit too many sessions")
        g = Client(a.sock)
        assert g.call("OPEN gina right").startswith("OK OPEN")
        h = Client(a.sock)
        assert h.call("OPEN hank right").startswith("ERR limit too many sessions")
        # a held session lives on; a released one expires
        assert c.call("RESUME " + t2).startswith("OK RESUME")
        time.sleep(2.5)
        assert h.call("RESUME " + t1).startswith("ERR token "), "expired"
        assert c.call("STATUS frank").startswith("DATA STATUS user=frank state=online sessions=1 ")
        c.line()
        refs = a.refs()
        assert "ref frank 1" in refs[-6:] or "ref frank 1" in refs, refs
        c.close()
        time.sleep(2.5)
        h2 = Client(a.sock)
        assert h2.call("RESUME " + t2).startswith("ERR token "), "expired after its holder left"
        assert [r for r in a.refs() if r.startswith("ref frank")][-1] == "ref frank 0", a.refs()
    finally:
        assert a.stop() == 0


def t_shutdown_answers_pending(tmp):
    a = Acsd(tmp)
    c = Client(a.sock)
    c.send("OPEN ivan slow")
    time.sleep(0.2)
    w = Client(a.sock)
    assert w.call("OPEN judy right").startswith("OK OPEN")
    assert w.call("WATCH") == "OK WATCH"
    a.p.send_signal(signal.SIGTERM)
    assert c.line().startswith("ERR unavailable "), "pending OPEN answered at shutdown"
    assert w.line().startswith("EVENT closed")
    assert a.p.wait(10) == 0
    assert not os.path.exists(a.sock)


def t_groups(tmp):
    """socket.allow_group: others are refused (ERR denied), also by the socket's mode;
    session.admin_group: its members may run WHO."""
    import grp
    mail = grp.getgrnam("mail").gr_gid
    adm = grp.getgrnam("adm").gr_gid
    a = Acsd(tmp, socket_extra="allow_group = mail\nmode = 0660", session_extra="admin_group = adm")
    try:
        st = os.stat(a.sock)
        assert st.st_gid == mail and (st.st_mode & 0o777) == 0o660, oct(st.st_mode)
        # the file mode alone keeps nobody out...
        out = as_uid(NOBODY, a.sock, ["HELLO 1 1"])
        assert out[0].startswith("EXC PermissionError"), out
        # ...and acsd checks the peer's groups itself: open the mode up to see it
        os.chmod(a.sock, 0o666)
        out = as_uid(NOBODY, a.sock, ["<line>", "<close?>"])
        assert out[0].startswith("ERR denied ") and out[1] == "closed", out
        out = as_uid(NOBODY, a.sock, ["HELLO 1 1", "WHO"], groups=[mail])
        assert out[0] == "OK HELLO version=1" and out[1].startswith("ERR denied "), out
        out = as_uid(NOBODY, a.sock, ["HELLO 1 1", "WHO"], groups=[mail, adm])
        assert out == ["OK HELLO version=1", "OK WHO count=0"], out
        # more supplementary groups than acsd's first buffer holds (64)
        many = list(range(70000, 70100))
        out = as_uid(NOBODY, a.sock, ["HELLO 1 1", "WHO"], groups=many + [mail])
        assert out[0] == "OK HELLO version=1" and out[1].startswith("ERR denied "), out
        out = as_uid(NOBODY, a.sock, ["HELLO 1 1", "WHO"], groups=many + [mail, adm])
        assert out == ["OK HELLO version=1", "OK WHO count=0"], out
        out = as_uid(NOBODY, a.sock, ["<line>"], groups=many)
        assert out[0].startswith("ERR denied "), out
        c = Client(a.sock)
        assert c.call("WHO") == "OK WHO count=0"
    finally:
        assert a.stop() == 0


def t_daemon_mode(tmp):
    """Without --foreground: the parent exits 0 once the socket answers; SIGHUP is ignored;
    a second SIGTERM during the stop ends it at once."""
    cfg = conf(tmp)
    sock = f"{tmp}/acsd.sock"
    r = subprocess.run([EXE, "-c", cfg, "--syncd", "/bin/true", "--fs", "/bin/true"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r
    assert os.path.exists(sock), "socket not there when the parent exited"
    c = Client(sock)
    assert c.call("STATUS") == "OK STATUS count=0"
    pid = None
    # find the daemon: the process whose cmdline is ours and whose parent is not us
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cmd = open(f"/proc/{d}/cmdline", "rb").read().split(b"\0")
            except OSError:
                continue
            if cmd[0] == EXE.encode() and cfg.encode() in cmd:
                pid = int(d)
    assert pid, "daemon process not found"
    # a second acsd on the same socket refuses to start (and leaves the first alone)
    r2 = subprocess.run([EXE, "-c", cfg, "--foreground", "--syncd", "/bin/true", "--fs", "/bin/true"],
                        capture_output=True, text=True, timeout=30)
    assert r2.returncode == 73 and "another acsd is listening" in r2.stderr, r2
    assert c.call("STATUS") == "OK STATUS count=0"
    os.kill(pid, signal.SIGHUP)
    time.sleep(0.2)
    assert c.call("STATUS") == "OK STATUS count=0", "SIGHUP is ignored"
    os.kill(pid, signal.SIGTERM)
    t0 = time.monotonic()
    while os.path.exists(f"/proc/{pid}") and time.monotonic() - t0 < 10:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    assert not os.path.exists(sock)
    # a socket left by a killed acsd is replaced
    a = Acsd(tmp)
    a.p.kill()
    a.p.wait()
    assert os.path.exists(sock)
    a = Acsd(tmp)
    assert Client(sock).call("STATUS") == "OK STATUS count=0"
    assert a.stop() == 0
    # --check
    r = subprocess.run([EXE, "-c", cfg, "--check"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0 and r.stdout == f"{cfg}: ok\n", r
    # non-root: refused with EX_NOPERM (77)
    r = subprocess.run([EXE, "-c", cfg, "--foreground"], capture_output=True, text=True, timeout=10,
                       preexec_fn=lambda: (os.setgroups([]), os.setgid(NOBODY), os.setuid(NOBODY)))
    assert r.returncode == 77 and "must run as root" in r.stderr, r


def t_config_error(tmp):
    p = f"{tmp}/bad.conf"
    with open(p, "w") as f:
        f.write("[socket]\npath = /x\nmax_per_uid = lots\n")
    r = subprocess.run([EXE, "-c", p, "--foreground"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 78, r
    assert f"{p}:3: socket.max_per_uid: bad value 'lots'" in r.stderr, r.stderr
    # names the config checks against this host: the line, or the file for a default
    with open(p, "w") as f:
        f.write("[tree]\nroot = /x\n\ngroup = nosuchgroup-acs\n")
    r = subprocess.run([EXE, "-c", p, "--check"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 78, r
    assert f"{p}:4: tree.group = nosuchgroup-acs: no such group" in r.stderr, r.stderr
    with open(p, "w") as f:
        f.write("[socket]\nallow_group = nosuchgroup-acs\n")
    r = subprocess.run([EXE, "-c", p, "--check"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 78 and f"{p}:2: socket.allow_group = nosuchgroup-acs" in r.stderr, r
    with open(p, "w") as f:
        f.write("[agent]\nuid_min = 0\n")
    r = subprocess.run(["unshare", "--mount", "sh", "-c",
                        f"grep -v '^acs:' /etc/passwd > {tmp}/passwd && mount --bind {tmp}/passwd /etc/passwd"
                        f" && exec {EXE} -c {p} --check"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 78 and f"{p}: agent.user = acs: no such user on this host" in r.stderr, r
    r = subprocess.run([EXE, "-c", f"{tmp}/none.conf"], capture_output=True, text=True, timeout=10)
    assert r.returncode != 0 and "No such file" in r.stderr, r


def t_garbage(tmp):
    """Random bytes, random valid and broken commands, sudden closes on many connections at
    once: acsd answers each complete line with one reply and keeps serving (a crash or a
    sanitizer report fails the test)."""
    import random
    rnd = random.Random(6)
    a = Acsd(tmp, max_per_uid=100, max_connections=200)
    try:
        words = [b"HELLO 1 1", b"HELLO 0 0", b"OPEN u%d right", b"OPEN u%d wrong", b"OPEN %%00 x",
                 b"RESUME " + b"a" * 64, b"RESUME xyz", b"CLOSE", b"STATUS", b"STATUS u1", b"SYNC u1",
                 b"SYNC u1 INBOX", b"WATCH", b"WHO", b"OPEN a+b c", b"\x00\xff\r", b"OK OPEN", b""]
        conns = []
        for i in range(60):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(a.sock)
            s.setblocking(False)
            conns.append(s)
        for rnd_round in range(40):
            for s in conns:
                if s.fileno() < 0:
                    continue
                kind = rnd.random()
                if kind < 0.6:
                    w = rnd.choice(words)
                    if b"%d" in w:
                        w = w % rnd.randrange(5)
                    data = w + rnd.choice([b"\n", b"\r\n", b"", b" \n"])
                elif kind < 0.9:
                    data = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 300)))
                elif kind < 0.97:
                    data = b"Z" * rnd.randrange(4000, 9000) + b"\n"
                else:
                    s.close()
                    continue
                try:
                    s.send(data)
                except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                    pass
                try:
                    s.recv(65536)
                except (BlockingIOError, ConnectionResetError):
                    pass
            time.sleep(0.01)
        for s in conns:
            s.close()
        time.sleep(1.5)  # delayed answers (failed logins) run out
        assert a.p.poll() is None, "acsd-fake died"
        c = Client(a.sock)
        assert c.call("STATUS").startswith(("OK STATUS", "DATA STATUS"))
        log = open(f"{tmp}/acsd.log").read()
        assert "a bug" not in log and "crit" not in log, log[-2000:]
    finally:
        assert a.stop() == 0


TESTS = [t_config_error, t_daemon_mode, t_groups, t_protocol_sessions, t_failed_logins, t_caps, t_expiry_and_limits,
         t_shutdown_answers_pending, t_garbage, t_idle_slow_oversized]


def main():
    if not EXE or not os.access(EXE, os.X_OK):
        print("1..1\nnot ok 1 - no acsd-fake program given")
        return 1
    if os.geteuid() != 0:
        print("1..1\nnot ok 1 - needs root (acsd runs as root)")
        return 1
    print(f"1..{len(TESTS)}")
    failed = 0
    for i, t in enumerate(TESTS, 1):
        with tempfile.TemporaryDirectory(prefix="acsd-t", dir="/tmp") as tmp:
            os.chmod(tmp, 0o755)  # peers of another uid connect to the socket in it
            try:
                t(tmp)
                print(f"ok {i} - {t.__name__}")
            except Exception:  # noqa: BLE001
                failed += 1
                for ln in traceback.format_exc().splitlines():
                    print("# " + ln)
                try:
                    for ln in open(f"{tmp}/acsd.log").read().splitlines()[-15:]:
                        print("#   log: " + ln)
                except OSError:
                    pass
                print(f"not ok {i} - {t.__name__}")
            sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
