#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""How far acsd's private D-Bus goes: runs bench/dbus_scale.c (acs-dbus-scale) with 100, 1,000
and 3,000 agents on dbus-daemon (acsd's own bus configuration) and on dbus-broker (same
policy, launched without systemd), probes the limits, and writes bench/results/dbus.md.

Usage (root, from a built tree):
  /usr/bin/python3 bench/dbus_bench.py --build build [--runs 3] [--agents 100,1000,3000]

dbus-broker is started without systemd as its launcher: dbus-broker-launch gets its
listening socket through LISTEN_FDS (socket activation done by this script), its log goes
to a throwaway journal socket inside a private mount namespace (`unshare -m`), and a
classic dbus-daemon stands in for the user manager bus it insists on connecting to.
"""

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_scale(binary, args, timeout=900):
    p = subprocess.run([binary] + args, capture_output=True, text=True, timeout=timeout)
    lines = [l for l in p.stdout.splitlines() if l.startswith('{')]
    if not lines:
        raise RuntimeError(f'acs-dbus-scale {args} printed no result (rc={p.returncode}): {p.stderr[-2000:]}')
    return json.loads(lines[-1])


class Broker:
    """dbus-broker on the bus configuration acsd writes, without systemd."""

    INNER = r'''
set -e
mount -t tmpfs none /run/systemd 2>/dev/null || { mkdir -p /run/systemd; mount -t tmpfs none /run/systemd; }
mkdir -p /run/systemd/journal
/usr/bin/python3 -c '
import socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind("/run/systemd/journal/socket")
while True: s.recv(65536)
' &
sleep 0.3
exec /usr/bin/python3 "$0.launch" "$1" "$2"
'''
    LAUNCH = r'''
import os, socket, sys
path, conf = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path); s.listen(4096); os.chmod(path, 0o666)
os.dup2(s.fileno(), 3); os.set_inheritable(3, True)
os.environ['LISTEN_FDS'] = '1'; os.environ['LISTEN_PID'] = str(os.getpid())
os.execvp('dbus-broker-launch', ['dbus-broker-launch', '--scope', 'user', '--config-file', conf])
'''

    def __init__(self, work, conf_text):
        self.dir = Path(work)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sock = self.dir / 'broker.sock'
        conf = conf_text
        # dbus-broker turns the unix-fd limits into a per-uid fd quota that also counts
        # the listening socket; the classic daemon's 0/1 would stop it from starting
        conf = conf.replace('<limit name="max_outgoing_unix_fds">0</limit>', '<limit name="max_outgoing_unix_fds">64</limit>')
        conf = conf.replace('<limit name="max_incoming_unix_fds">1</limit>', '<limit name="max_incoming_unix_fds">64</limit>')
        import re
        conf = re.sub(r'<listen>[^<]*</listen>', f'<listen>unix:path={self.sock}</listen>', conf)
        (self.dir / 'broker.conf').write_text(conf)
        inner = self.dir / 'inner.sh'
        inner.write_text(self.INNER)
        (self.dir / 'inner.sh.launch').write_text(self.LAUNCH)
        self.session = subprocess.run(['dbus-daemon', '--session', '--fork', '--print-address=1', '--print-pid=1'],
                                      capture_output=True, text=True, check=True).stdout.split()
        env = dict(os.environ, DBUS_SESSION_BUS_ADDRESS=self.session[0])
        if self.sock.exists():
            self.sock.unlink()
        self.proc = subprocess.Popen(['unshare', '-m', '--propagation', 'private', 'bash', str(inner),
                                      str(self.sock), str(self.dir / 'broker.conf')],
                                     env=env, stdout=subprocess.DEVNULL, stderr=open(self.dir / 'broker.err', 'w'))
        deadline = time.monotonic() + 10
        self.pid = None
        while time.monotonic() < deadline:
            out = subprocess.run(['pgrep', '-f', 'dbus-broker --log'], capture_output=True, text=True).stdout.split()
            if out and self.sock.exists():
                self.pid = int(out[-1])
                try:
                    c = socket.socket(socket.AF_UNIX)
                    c.connect(str(self.sock))
                    c.close()
                    break
                except OSError:
                    pass
            time.sleep(0.1)
        if not self.pid:
            raise RuntimeError('dbus-broker did not start: ' + (self.dir / 'broker.err').read_text()[-2000:])
        self.address = f'unix:path={self.sock}'

    def stop(self):
        subprocess.run(['pkill', '-f', 'dbus-broker-launch --scope user --config-file ' + str(self.dir)], check=False)
        subprocess.run(['pkill', '-f', 'dbus-broker --log'], check=False)
        self.proc.kill()
        self.proc.wait()
        if len(self.session) > 1:
            try:
                os.kill(int(self.session[1]), signal.SIGTERM)
            except OSError:
                pass


def med(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None and r[key] >= 0]
    return statistics.median(vals) if vals else float('nan')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--build', default=os.environ.get('ACS_BUILD_DIR', str(REPO / 'build')))
    ap.add_argument('--runs', type=int, default=3)
    ap.add_argument('--agents', default='100,1000,3000')
    ap.add_argument('--rounds', type=int, default=5)
    ap.add_argument('--serial', type=int, default=1000)
    ap.add_argument('--out', default=str(REPO / 'bench/results/dbus.md'))
    ap.add_argument('--json', default=None, help='also write the raw results here')
    a = ap.parse_args()
    binary = str(Path(a.build) / 'bench/acs-dbus-scale')
    if not os.path.exists(binary):
        sys.exit(f'{binary} is missing: build first (ninja -C {a.build})')
    work = Path(tempfile.mkdtemp(prefix='acs-dbus-bench.', dir='/tmp'))
    os.chmod(work, 0o755)
    counts = [int(x) for x in a.agents.split(',')]
    res = {'daemon': {}, 'broker': {}, 'limits': {}}
    if shutil.which('dbus-broker-launch') is None:
        # the peer is installed by the bench itself (quiet, idempotent)
        subprocess.run(['apt-get', 'install', '-y', '-q', '--no-install-recommends', 'dbus-broker'],
                       stdout=subprocess.DEVNULL, check=False, env=dict(os.environ, DEBIAN_FRONTEND='noninteractive'))
    have_broker = shutil.which('dbus-broker-launch') is not None

    # interleave: for each size, each run, both buses
    conf_text = None
    for n in counts:
        for r in range(a.runs):
            common = ['--agents', str(n), '--workers', '4', '--rounds', str(a.rounds), '--serial', str(a.serial)]
            d = run_scale(binary, common + ['--dir', str(work / 'daemon')])
            res['daemon'].setdefault(n, []).append(d)
            print('dbus-daemon', json.dumps(d), flush=True)
            if conf_text is None:
                conf_text = (work / 'daemon' / 'bus.conf').read_text()
            if have_broker:
                b = Broker(work / f'broker-{n}-{r}', conf_text)
                try:
                    row = run_scale(binary, common + ['--address', b.address, '--bus-pid', str(b.pid)])
                finally:
                    b.stop()
                res['broker'].setdefault(n, []).append(row)
                print('dbus-broker', json.dumps(row), flush=True)

    # limits: more agents than the bus is sized for; a flood past the queue toward acsd
    res['limits']['over_max'] = run_scale(binary, ['--agents', '150', '--workers', '2', '--rounds', '2',
                                                   '--serial', '100', '--max-agents', '100',
                                                   '--dir', str(work / 'over')])
    print('over max', json.dumps(res['limits']['over_max']), flush=True)
    res['limits']['flood'] = run_scale(binary, ['--agents', '1000', '--workers', '4', '--rounds', '1',
                                                '--burst', '200', '--serial', '10',
                                                '--dir', str(work / 'flood')])
    print('flood', json.dumps(res['limits']['flood']), flush=True)
    if have_broker:
        b = Broker(work / 'broker-flood', conf_text)
        try:
            res['limits']['flood_broker'] = run_scale(binary, ['--agents', '1000', '--workers', '4', '--rounds', '1',
                                                               '--burst', '200', '--serial', '10',
                                                               '--address', b.address, '--bus-pid', str(b.pid)])
        finally:
            b.stop()
        print('flood broker', json.dumps(res['limits']['flood_broker']), flush=True)

    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1, default=str))
    write_report(a, res, counts, have_broker)
    shutil.rmtree(work, ignore_errors=True)


def write_report(a, res, counts, have_broker):
    dv = subprocess.run(['dbus-daemon', '--version'], capture_output=True, text=True).stdout.splitlines()[0]
    bv = subprocess.run(['dbus-broker', '--version'], capture_output=True, text=True).stdout.splitlines()[0] if have_broker else 'not installed'
    lines = [
        '# D-Bus scaling: raw results',
        '',
        f'Command: `/usr/bin/python3 bench/dbus_bench.py --build {a.build} --runs {a.runs} --agents {a.agents}`',
        f'Run {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())} on {platform.node()} '
        f'({os.cpu_count()} cores, {platform.release()}); {dv}; dbus-broker {bv}.',
        f'Medians of {a.runs} runs. Storm: every agent sends a signed CRED_REQUEST at once, acsd '
        f'answers each with a boxed CRED, {a.rounds} rounds; serial: {a.serial} round trips one at a time.',
        '',
        '| bus | agents | connect all (ms) | bus RSS idle → connected (MB) | bus peak (MB) | storm round trips/s | storm p50 / p99 (ms) | serial p50 / p99 (ms) | serial round trips/s | lost | refused |',
        '|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    for bus in ('daemon', 'broker'):
        for n in counts:
            rows = res[bus].get(n)
            if not rows:
                continue
            lines.append(
                f'| {"dbus-daemon" if bus == "daemon" else "dbus-broker"} | {n} | {med(rows, "connect_ms"):.0f} | '
                f'{med(rows, "daemon_rss_kb_idle") / 1024:.1f} → {med(rows, "daemon_rss_kb_connected") / 1024:.1f} | '
                f'{med(rows, "daemon_hwm_kb") / 1024:.1f} | {med(rows, "storm_rtt_per_s"):.0f} | '
                f'{med(rows, "storm_p50_ms"):.1f} / {med(rows, "storm_p99_ms"):.1f} | '
                f'{med(rows, "serial_p50_ms"):.3f} / {med(rows, "serial_p99_ms"):.3f} | '
                f'{med(rows, "serial_rtt_per_s"):.0f} | {sum(r["lost"] for r in rows)} | '
                f'{sum(r["connect_failed"] for r in rows)} |')
    o = res['limits']['over_max']
    lines += ['', '## Limits', '',
              f'- 150 agents on a bus sized for 100 (`--max-agents 100`, all agents one uid as here): '
              f'{o["connected"]} connected, {o["connect_failed"]} refused (libdbus: "{o["first_error"]}"), '
              f'{o["lost"]} requests of the connected ones lost.']
    for key, name in (('flood', 'dbus-daemon'), ('flood_broker', 'dbus-broker')):
        f = res['limits'].get(key)
        if not f:
            continue
        sent = f['agents'] * f['burst']
        lines.append(f'- flood on {name}: 1,000 agents send 200 requests each without waiting ({sent:,} in all): '
                     f'acsd received and answered {f["storm_requests"]:,}; {f["lost"]:,} unanswered after 30 s; '
                     f'bus peak RSS {f["daemon_hwm_kb"] / 1024:.0f} MB; send errors {f["send_failed"]}; '
                     f'disconnected agents {f["disconnected"]}; p50 {f["storm_p50_ms"]:.0f} ms.')
    lines.append('')
    Path(a.out).write_text('\n'.join(lines) + '\n')
    print(f'wrote {a.out}')


if __name__ == '__main__':
    main()
