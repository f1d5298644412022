# SPDX-License-Identifier: MIT
"""A private dbus-daemon with its own configuration and generous limits, for one test."""

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from . import procs

_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>acstest</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="signal"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
  <limit name="max_incoming_bytes">1000000000</limit>
  <limit name="max_outgoing_bytes">1000000000</limit>
  <limit name="max_message_size">33554432</limit>
  <limit name="max_completed_connections">100000</limit>
  <limit name="max_incomplete_connections">10000</limit>
  <limit name="max_connections_per_user">100000</limit>
  <limit name="max_pending_service_starts">10000</limit>
  <limit name="max_names_per_connection">50000</limit>
  <limit name="max_match_rules_per_connection">50000</limit>
  <limit name="max_replies_per_connection">50000</limit>
  <limit name="auth_timeout">30000</limit>
  <limit name="pending_fd_timeout">150000</limit>
  <limit name="reply_timeout">300000</limit>
</busconfig>
"""


class Bus:
    """A private bus: `address` (unix:path=...), `pid`, `config_file`, `stop()`.

    Its socket lives in `dir` when the path is short enough for a Unix socket, else in a
    0755 directory under /tmp removed by stop(). Anyone may connect (EXTERNAL auth).
    """

    def __init__(self, dir, start=True):
        self.dir = Path(dir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._tmp = None
        sock = self.dir / 'bus.sock'
        if len(str(sock)) > 90:
            self._tmp = tempfile.mkdtemp(prefix='acs-bus-', dir='/tmp')
            os.chmod(self._tmp, 0o755)
            sock = Path(self._tmp) / 'bus.sock'
        self.socket = str(sock)
        self.address = f'unix:path={self.socket}'
        self.config_file = str(self.dir / 'bus.conf')
        Path(self.config_file).write_text(_CONF.format(socket=self.socket))
        self.pid = None
        self._proc = None
        if start:
            self.start()

    @property
    def running(self):
        return self._proc is not None and self._proc.poll() is None

    def start(self):
        if self.running:
            return
        if os.path.exists(self.socket):
            os.unlink(self.socket)
        procs.register(self)
        log = open(self.dir / 'dbus.log', 'ab')
        self._proc = subprocess.Popen(
            ['dbus-daemon', f'--config-file={self.config_file}', '--nofork', '--nopidfile',
             '--print-address=1', '--nosyslog'],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
        log.close()
        line = self._proc.stdout.readline().decode().strip()
        if not line:
            self._proc.wait(5)
            raise RuntimeError(f'dbus-daemon did not start: '
                               f'{(self.dir / "dbus.log").read_text(errors="replace")}')
        self.pid = self._proc.pid
        # dbus prints the address with a ',guid=' suffix; keep the plain path form.
        self.printed_address = line
        deadline = time.monotonic() + 5
        while not os.path.exists(self.socket) and time.monotonic() < deadline:
            time.sleep(0.005)

    def stop(self):
        p = self._proc
        if p is None:
            return
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        p.stdout.close()
        self._proc = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        elif os.path.exists(self.socket):
            os.unlink(self.socket)
        procs.unregister(self)

    def env(self):
        """Environment additions pointing a D-Bus client at this bus."""
        return {'DBUS_SESSION_BUS_ADDRESS': self.address,
                'DBUS_SYSTEM_BUS_ADDRESS': self.address}

    def __enter__(self):
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False
