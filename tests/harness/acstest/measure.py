# SPDX-License-Identifier: MIT
"""Runs a program and measures its own peak RSS and wall time (not inflated by pytest's size)."""

import os
import subprocess
import tempfile
import time

TIME = '/usr/bin/time'


class Measured:
    """Result of run(): returncode, stdout, stderr (bytes), maxrss_kb, seconds."""

    def __init__(self, returncode, stdout, stderr, maxrss_kb, seconds):
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.maxrss_kb = maxrss_kb
        self.seconds = seconds

    def __repr__(self):
        return (f'<Measured rc={self.returncode} {self.seconds:.2f}s {self.maxrss_kb} KB '
                f'stderr={self.stderr[-300:]!r}>')


def run(args, timeout=300, input=None, **kwargs):
    """Runs args under /usr/bin/time (a small parent, so the peak RSS is the program's own:
    a child forked from a big process inherits that process's RSS as ru_maxrss).

    Returns Measured; a program killed by a signal has a negative returncode. kwargs go to
    subprocess.run (env, cwd, ...). Raises subprocess.TimeoutExpired after `timeout` s.
    """
    fd, out = tempfile.mkstemp(prefix='acs-time-')
    os.close(fd)
    try:
        t = time.monotonic()
        r = subprocess.run([TIME, '-f', '%x %M', '-o', out, *args], input=input,
                           stdin=None if input is not None else subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                           **kwargs)
        secs = time.monotonic() - t
        with open(out) as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
    finally:
        os.unlink(out)
    if not lines:
        raise RuntimeError(f'{TIME} wrote no result for {args}')
    status, rss = lines[-1].split()
    rc = int(status)
    if lines[0].startswith('Command terminated by signal'):
        rc = -int(lines[0].split()[-1])
    return Measured(rc, r.stdout, r.stderr, int(rss), secs)
