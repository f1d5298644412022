# SPDX-License-Identifier: MIT
"""Checks that FUSE can be used here, and unmounts FUSE mounts robustly."""

import os
import shutil
import subprocess


class FuseUnavailable(RuntimeError):
    """FUSE cannot be used on this machine; the test must fail, not skip."""


def require_fuse():
    """Raises FuseUnavailable unless /dev/fuse opens read-write and fusermount3 exists."""
    try:
        fd = os.open('/dev/fuse', os.O_RDWR)
    except OSError as e:
        raise FuseUnavailable(f'cannot open /dev/fuse read-write: {e} (load the fuse '
                              'module, or give the container /dev/fuse and CAP_SYS_ADMIN)') from e
    os.close(fd)
    if shutil.which('fusermount3') is None:
        raise FuseUnavailable('fusermount3 is not on PATH (Debian package fuse3)')


def is_mounted(path):
    """True if path is a mount point (per /proc/self/mountinfo)."""
    real = os.path.realpath(path)
    with open('/proc/self/mountinfo') as f:
        for line in f:
            mp = line.split()[4].encode().decode('unicode_escape')
            if mp == real:
                return True
    return False


FUSECTL = '/sys/fs/fuse/connections'


def fusectl_mounted():
    """True if the FUSE control filesystem is mounted at /sys/fs/fuse/connections."""
    with open('/proc/self/mountinfo') as f:
        return any(line.split()[4] == FUSECTL for line in f)


def ensure_fusectl():
    """Mounts the FUSE control filesystem if it is not mounted (many machines without
    systemd never mount it); acsd does the same before it aborts a connection."""
    if not fusectl_mounted():
        subprocess.run(['mount', '-t', 'fusectl', 'fusectl', FUSECTL], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def unmount_fusectl():
    """Unmounts the FUSE control filesystem, so a test can check that acsd mounts it.
    Returns None when it is unmounted, else why not (a container may not allow it)."""
    if not fusectl_mounted():
        return None
    r = subprocess.run(['umount', FUSECTL], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if fusectl_mounted():
        return f'umount {FUSECTL}: exit {r.returncode}: {r.stdout.strip()}'
    return None


def abort_connection(path):
    """Aborts the FUSE connection mounted at path the way acsd does for a dying acs-fs
    (/sys/fs/fuse/connections/<minor>/abort; the minor comes from /proc/self/mountinfo, so
    nothing touches the hung mount itself). Returns True if a connection was aborted."""
    real = os.path.realpath(path)
    ensure_fusectl()
    with open('/proc/self/mountinfo') as f:
        for line in f:
            fields = line.split()
            if fields[4].encode().decode('unicode_escape') == real:
                minor = fields[2].split(':')[1]
                try:
                    with open(f'/sys/fs/fuse/connections/{minor}/abort', 'w') as a:
                        a.write('1')
                    return True
                except OSError:
                    return False
    return False


def unmount(path):
    """fusermount3 -u path; lazily (-uz) if busy; ignores "not mounted". Raises otherwise."""
    if not is_mounted(path):
        return
    r = subprocess.run(['fusermount3', '-u', path], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if r.returncode == 0 or not is_mounted(path):
        return
    r = subprocess.run(['fusermount3', '-uz', path], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if r.returncode == 0 or not is_mounted(path):
        return
    if os.geteuid() == 0:
        r = subprocess.run(['umount', '-l', path], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if r.returncode == 0 or not is_mounted(path):
            return
    raise RuntimeError(f'cannot unmount {path}: {r.stdout.decode(errors="replace")}')


HELLO_TEXT = b'hello from acstest fuse\n'


def selftest(workdir):
    """Proves FUSE works end to end: builds fusehello.c with cc and pkg-config fuse3,
    mounts it at workdir/mnt, reads workdir/mnt/hello, unmounts. Returns the bytes read
    (HELLO_TEXT when FUSE works); raises FuseUnavailable with the reason otherwise."""
    require_fuse()
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fusehello.c')
    exe = os.path.join(workdir, 'fusehello')
    mnt = os.path.join(workdir, 'mnt')
    os.makedirs(mnt, exist_ok=True)
    flags = subprocess.run(['pkg-config', '--cflags', '--libs', 'fuse3'], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    if flags.returncode != 0:
        raise FuseUnavailable(f'pkg-config fuse3 failed: {flags.stderr}')
    cc = subprocess.run(['cc', '-O1', '-o', exe, src, *flags.stdout.split()],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if cc.returncode != 0:
        raise FuseUnavailable(f'cannot build {src}: {cc.stdout}')
    r = subprocess.run([exe, mnt], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=30)
    if r.returncode != 0:
        raise FuseUnavailable(f'mounting a FUSE filesystem failed: {r.stdout}')
    try:
        with open(os.path.join(mnt, 'hello'), 'rb') as f:
            return f.read()
    finally:
        unmount(mnt)
