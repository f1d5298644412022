# SPDX-License-Identifier: MIT
"""acs-fs: streaming readdir of folders larger than one batch (1,024 rows), new/ vs cur/, seekdir."""

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from acstest import paths

from test_fs_support import Mount, traversable_dir

N = 3000  # three batches and a bit


class Big:
    pass


@pytest.fixture(scope='module')
def big():
    """A cache with one folder of N messages (every third unseen, so in new/), imported with
    acs-import (a tree-internal test: the server-equality tests use acs-syncd), and mounted."""
    b = Big()
    b.base = traversable_dir('acs-fs-readdir-')
    m = None
    try:
        src = b.base / 'src'
        for d in (src, src / '.Big'):
            for sub in ('cur', 'new', 'tmp'):
                (d / sub).mkdir(parents=True)
        for i in range(N):
            unseen = i % 3 == 0
            name = f'{1600000000 + i}.M{i}P1.test' + ('' if unseen else ':2,S')
            p = src / '.Big' / ('new' if unseen else 'cur') / name
            p.write_bytes(f'Subject: {i}\nMessage-ID: <{i}@readdir>\n\nbody {i}\n'.encode())
            os.utime(p, (1600000000 + i, 1600000000 + i))
        b.db = b.base / 'cache.db'
        subprocess.run([paths.binary('acs-import'), '--db', str(b.db), str(src)], check=True,
                       capture_output=True, timeout=300)
        m = Mount(b.db, b.base / 'mnt')
        b.root = Path(m.mountpoint)
        yield b
    finally:
        try:
            if m:
                m.stop_clean()
        finally:
            shutil.rmtree(b.base, ignore_errors=True)


def test_listing_is_complete_and_split_by_state(big):
    cur = os.listdir(big.root / 'Big' / 'cur')
    new = os.listdir(big.root / 'Big' / 'new')
    assert len(new) == (N + 2) // 3
    assert len(cur) == N - len(new)
    assert len(set(cur) | set(new)) == N
    assert all(n.endswith(':2,S') for n in cur)
    assert all(n.endswith(':2,') for n in new)
    subjects = set()
    for sub, names in (('cur', cur), ('new', new)):
        for n in names[::97]:
            subjects.add((big.root / 'Big' / sub / n).read_bytes().split(b'\n')[0])
    assert len(subjects) == len(cur[::97]) + len(new[::97])
    # a second listing (kernel-cached) is the same
    assert sorted(os.listdir(big.root / 'Big' / 'cur')) == sorted(cur)
    p = subprocess.run(['mlist', str(big.root / 'Big')], capture_output=True, text=True, check=True)
    assert len(p.stdout.splitlines()) == N


_libc = ctypes.CDLL(None, use_errno=True)
_libc.opendir.restype = ctypes.c_void_p
_libc.opendir.argtypes = [ctypes.c_char_p]
_libc.readdir.restype = ctypes.c_void_p
_libc.readdir.argtypes = [ctypes.c_void_p]
_libc.telldir.restype = ctypes.c_long
_libc.telldir.argtypes = [ctypes.c_void_p]
_libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
_libc.closedir.argtypes = [ctypes.c_void_p]
NAME_OFFSET = 19  # offsetof(struct dirent, d_name) on x86_64/aarch64 glibc


def _next(d):
    ent = _libc.readdir(d)
    if not ent:
        return None
    return ctypes.string_at(ent + NAME_OFFSET).decode()


def test_seekdir_resumes_at_the_cookie(big):
    """On a fresh mount (nothing cached, so the rest of the listing is asked for by cookie):
    read part, telldir, read on, seekdir back, read again."""
    with Mount(big.db, big.base / 'mnt-seek') as m:
        d = _libc.opendir(os.fsencode(Path(m.mountpoint) / 'Big' / 'cur'))
        assert d
        try:
            first = [_next(d) for _ in range(1500)]
            pos = _libc.telldir(d)
            rest1 = []
            while (n := _next(d)) is not None:
                rest1.append(n)
            _libc.seekdir(d, pos)
            rest2 = []
            while (n := _next(d)) is not None:
                rest2.append(n)
        finally:
            _libc.closedir(d)
    assert rest1 == rest2
    names = [n for n in first + rest1 if n not in ('.', '..')]
    assert len(names) == len(set(names)) == N - (N + 2) // 3
