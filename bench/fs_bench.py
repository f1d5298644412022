#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""acs-fs benchmarks, side by side with copies of the same tree on tmpfs and on disk.

Measures (issue 4):
  warm grep -r      acs-fs vs tmpfs copy                      (goal <= 1.2x)
  cold grep -r      fresh mount + drop_caches vs disk copy    (goal <= 2x)
  ls -f | wc -l     100,000-message folder, acs-fs vs native  (goal <= 2x)
  acs-fs RSS        while serving that folder                 (goal <= 50 MB)

Usage (root; needs /dev/fuse and drop_caches):
  /usr/bin/python3 bench/fs_bench.py [--build build] [--work /var/tmp/acs-fs-bench]
      [--tmpfs /dev/shm/acs-fs-bench] [--runs 7] [--out bench/results/fs.md]

Data (generated once, deterministic, kept in --work): tree A = 10,000 messages of ~20 KB
in 5 folders (~200 MB) for grep; tree B = one folder of 100,000 small messages for ls
and RSS. Both are imported into cache databases on disk with acs-import, mounted with
acs-fs, and copied from the mount (cp -a) to the disk and tmpfs peers, so all three
trees hold the same names, bytes and mtimes.
"""

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WORDS = ('the of and to in is that for it as was with be by on not he this are or his from at which '
         'but have an they you were her she there one all we their been has when who will more no if '
         'out so said what up its about into than them can only other new some could time these two '
         'may then do first any my now such like our over man me even most made after also did many '
         'before must through back years where much your way well down should because each just those '
         'people how too little state good very make world still own see men work long get here between '
         'both life being under never day same another know while last might us great old year off come '
         'since against go came right used take three mailbox server cache folder message invoice report '
         'meeting schedule budget quarterly project deadline review').split()


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def gen_message(rnd, i, size, folder):
    date = 1600000000 + i * 37
    hdr = (f'From: Sender {i % 97} <sender{i % 97}@example.org>\n'
           f'To: user1@example.org\n'
           f'Subject: {" ".join(rnd.choices(WORDS, k=6))} #{i}\n'
           f'Date: {time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(date))}\n'
           f'Message-ID: <bench-{folder}-{i}@example.org>\n'
           f'MIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n\n')
    lines = []
    n = len(hdr)
    while n < size:
        line = ' '.join(rnd.choices(WORDS, k=12))
        lines.append(line)
        n += len(line) + 1
    return date, (hdr + '\n'.join(lines) + '\n').encode()


def gen_maildir(root, folders, count, avg, seed):
    """A Maildir++ tree (Dovecot's server layout) with count messages spread over folders."""
    if (root / '.done').exists():
        return
    shutil.rmtree(root, ignore_errors=True)
    rnd = random.Random(seed)
    dirs = []
    for f in folders:
        d = root if f == 'INBOX' else root / ('.' + f)
        for sub in ('cur', 'new', 'tmp'):
            (d / sub).mkdir(parents=True, exist_ok=True)
        dirs.append(d)
    for i in range(count):
        d = dirs[i % len(dirs)]
        size = max(300, int(rnd.expovariate(1 / avg)))
        date, data = gen_message(rnd, i, size, d.name)
        name = f'{date}.M{i}P1.bench:2,{"S" if i % 3 else ""}'
        p = d / 'cur' / name
        p.write_bytes(data)
        os.utime(p, (date, date))
    (root / '.done').touch()


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def drop_caches():
    os.sync()
    with open('/proc/sys/vm/drop_caches', 'w') as f:
        f.write('3\n')


def timed(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, shell=isinstance(cmd, str), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


class Mount:
    def __init__(self, acsfs, db, mnt):
        self.mnt = str(mnt)
        os.makedirs(self.mnt, exist_ok=True)
        subprocess.run(['fusermount3', '-uz', self.mnt], capture_output=True)
        self.proc = subprocess.Popen([acsfs, '--db', str(db), '-f', self.mnt])
        t = time.monotonic()
        while not os.path.ismount(self.mnt):
            if self.proc.poll() is not None or time.monotonic() - t > 10:
                raise SystemExit(f'acs-fs did not mount {self.mnt}')
            time.sleep(0.02)

    def status(self, key):
        for line in open(f'/proc/{self.proc.pid}/status'):
            if line.startswith(key + ':'):
                return int(line.split()[1])  # kB
        return 0

    def stop(self):
        subprocess.run(['fusermount3', '-u', self.mnt], capture_output=True)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def median(xs):
    return statistics.median(xs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--build', default=os.environ.get('ACS_BUILD_DIR', 'build'))
    ap.add_argument('--work', default='/var/tmp/acs-fs-bench')
    ap.add_argument('--tmpfs', default='/dev/shm/acs-fs-bench')
    ap.add_argument('--runs', type=int, default=7)
    ap.add_argument('--out', default=str(REPO / 'bench/results/fs.md'))
    a = ap.parse_args()
    build = Path(a.build) if Path(a.build).is_absolute() else REPO / a.build
    acsfs, acsimport = str(build / 'fs/acs-fs'), str(build / 'tests/import/acs-import')
    work, tmpfs = Path(a.work), Path(a.tmpfs)
    work.mkdir(parents=True, exist_ok=True)
    tmpfs.mkdir(parents=True, exist_ok=True)

    log('generating source Maildirs (once) ...')
    gen_maildir(work / 'srcA', ['INBOX', 'Archive', 'Lists.dev', 'Sent', 'Work'], 10000, 20000, 1)
    gen_maildir(work / 'srcB', ['Big'], 100000, 1500, 2)
    dbs = {}
    for t in ('A', 'B'):
        db = work / f'cache{t}.db'
        if not (work / f'cache{t}.done').exists():
            for suffix in ('', '-wal', '-shm'):
                Path(str(db) + suffix).unlink(missing_ok=True)
            log(f'importing tree {t} ...')
            t0 = time.perf_counter()
            run([acsimport, '--db', str(db), str(work / f'src{t}')], stdout=subprocess.DEVNULL)
            log(f'  {time.perf_counter() - t0:.1f} s')
            (work / f'cache{t}.done').touch()
        dbs[t] = db

    results = {}
    # peers: copies of the mounted tree itself
    mA = Mount(acsfs, dbs['A'], work / 'mntA')
    mB = Mount(acsfs, dbs['B'], work / 'mntB')
    try:
        for t, m in (('A', mA), ('B', mB)):
            for peer in (work / f'disk{t}', tmpfs / f'tmpfs{t}'):
                if not (peer.parent / (peer.name + '.done')).exists():
                    log(f'copying {m.mnt} to {peer} ...')
                    shutil.rmtree(peer, ignore_errors=True)
                    run(['cp', '-a', m.mnt + '/.', str(peer)])
                    (peer.parent / (peer.name + '.done')).touch()
        diskA, tmpA = str(work / 'diskA'), str(tmpfs / 'tmpfsA')
        bigcur = 'Big/cur'
        acsB, diskB, tmpB = f'{mB.mnt}/{bigcur}', str(work / 'diskB' / bigcur), str(tmpfs / 'tmpfsB' / bigcur)
        nfiles = int(subprocess.run(f'ls -f {acsB} | wc -l', shell=True, capture_output=True, text=True).stdout)
        nA = int(subprocess.run(f'find {diskA} -type f | wc -l', shell=True, capture_output=True,
                                text=True).stdout)
        bytesA = int(subprocess.run(['du', '-sb', '--apparent-size', diskA], capture_output=True,
                                    text=True).stdout.split()[0])
        log(f'tree A: {nA} files, {bytesA / 1e6:.0f} MB; tree B folder: {nfiles - 2} files')

        # RSS at start
        results['rss_start_kb'] = mB.status('VmRSS')

        # ---- ls -f | wc -l on the 100,000-message folder ----
        lscmd = 'ls -f {} | wc -l'
        mB.stop()
        mB = Mount(acsfs, dbs['B'], work / 'mntB')
        drop_caches()
        ls_cold_acs = timed(lscmd.format(acsB))
        drop_caches()
        ls_cold_disk = timed(lscmd.format(diskB))
        for d in (acsB, diskB, tmpB):  # warm-up
            timed(lscmd.format(d))
        ls = {'acs': [], 'disk': [], 'tmpfs': []}
        for _ in range(a.runs):
            for k, d in (('acs', acsB), ('disk', diskB), ('tmpfs', tmpB)):
                ls[k].append(timed(lscmd.format(d)))
        results['ls'] = {k: median(v) for k, v in ls.items()}
        results['ls_cold_acs'] = ls_cold_acs
        results['ls_cold_disk'] = ls_cold_disk
        # uncached listing (every readdir served by acs-fs): remount, no drop_caches
        mB.stop()
        mB = Mount(acsfs, dbs['B'], work / 'mntB')
        results['ls_first_after_mount'] = timed(lscmd.format(acsB))

        # RSS while serving that folder: listing, stat of every file, reading every file
        timed(f'ls -lf {acsB} > /dev/null')
        timed(['grep', '-rq', 'no-such-string-anywhere', acsB])
        results['rss_kb'] = mB.status('VmRSS')
        results['hwm_kb'] = mB.status('VmHWM')

        # ---- warm grep -r ----
        pat = 'no-such-string-anywhere'
        for d in (mA.mnt, diskA, tmpA):
            timed(['grep', '-r', pat, d])
        g = {'acs': [], 'disk': [], 'tmpfs': []}
        for _ in range(a.runs):
            for k, d in (('acs', mA.mnt), ('disk', diskA), ('tmpfs', tmpA)):
                g[k].append(timed(['grep', '-r', pat, d]))
        results['grep_warm'] = {k: median(v) for k, v in g.items()}

        # ---- cold grep -r: fresh mount + dropped page cache vs the disk copy, dropped too ----
        c = {'acs': [], 'disk': []}
        for _ in range(max(3, a.runs // 2)):
            mA.stop()
            mA = Mount(acsfs, dbs['A'], work / 'mntA')
            drop_caches()
            c['acs'].append(timed(['grep', '-r', pat, mA.mnt]))
            drop_caches()
            c['disk'].append(timed(['grep', '-r', pat, diskA]))
        results['grep_cold'] = {k: median(v) for k, v in c.items()}
    finally:
        mA.stop()
        mB.stop()

    r = results
    rows = [
        ('warm `grep -r` (tree A)', r['grep_warm']['acs'], r['grep_warm']['tmpfs'], 'tmpfs copy', 1.2,
         f"disk copy {r['grep_warm']['disk']:.3f} s"),
        ('cold `grep -r` (tree A, fresh mount, drop_caches)', r['grep_cold']['acs'], r['grep_cold']['disk'],
         'disk copy, drop_caches', 2.0, ''),
        ('`ls -f | wc -l`, 100,000-message folder (warm)', r['ls']['acs'], r['ls']['disk'], 'disk copy', 2.0,
         f"tmpfs copy {r['ls']['tmpfs']:.3f} s; acs-fs first listing after a fresh mount "
         f"{r['ls_first_after_mount']:.3f} s"),
        ('`ls -f | wc -l`, same folder, cold (fresh mount, drop_caches)', r['ls_cold_acs'], r['ls_cold_disk'],
         'disk copy, drop_caches', 2.0, 'one run each'),
    ]
    out = []
    out.append('# acs-fs benchmark results\n')
    out.append(f'Generated by `bench/fs_bench.py` on {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, '
               f'kernel {os.uname().release}, {os.cpu_count()} CPUs; medians of {a.runs} interleaved runs.\n')
    out.append('Command (root): `/usr/bin/python3 bench/fs_bench.py --build ' + a.build + ' --runs '
               + str(a.runs) + '`\n')
    out.append(f'Tree A: {nA} messages, {bytesA / 1e6:.0f} MB in 5 folders. Tree B: one folder of '
               f'{nfiles - 2} messages. Peers are `cp -a` copies of the mounted tree on disk '
               f'({work}) and on tmpfs ({tmpfs}); the caches are SQLite files on disk, filled by `acs-import` from generated Maildirs (deterministic, seeds 1 and 2).\n')
    out.append('| measure | acs-fs | peer | peer time | ratio | goal | met | notes |')
    out.append('|---|---|---|---|---|---|---|---|')
    for name, acs, peer, pname, goal, note in rows:
        ratio = acs / peer
        out.append(f'| {name} | {acs:.3f} s | {pname} | {peer:.3f} s | {ratio:.2f}x | <= {goal}x | '
                   f'{"yes" if ratio <= goal else "NO"} | {note} |')
    rss_mb = r['hwm_kb'] / 1024
    out.append(f'| acs-fs peak RSS serving the 100,000-message folder (ls -f, ls -l, grep -r of it) | '
               f'{rss_mb:.1f} MB | | | | <= 50 MB | {"yes" if rss_mb <= 50 else "NO"} | '
               f'RSS at start {r["rss_start_kb"] / 1024:.1f} MB, after {r["rss_kb"] / 1024:.1f} MB |')
    out.append('')
    out.append('How each figure is taken (wall time of the whole command, `time.perf_counter` around '
               '`subprocess.run`; acs-fs, disk and tmpfs runs interleaved in each round):')
    out.append('')
    out.append('- warm `grep -r no-such-string-anywhere DIR` after one untimed run of each; acs-fs runs '
               'with its defaults (kernel caches names, attributes, listings and pages; `--open-calls skip`).')
    out.append('- cold: unmount, mount acs-fs again, `sync; echo 3 > /proc/sys/vm/drop_caches`, time '
               'the grep; then drop caches again and time the grep over the disk copy.')
    out.append('- `sh -c "ls -f DIR | wc -l"` on `Big/cur` (100,002 entries with `.` and `..`); warm = after '
               'one untimed listing of each.')
    out.append('- RSS: `VmHWM` of the acs-fs process in `/proc/PID/status` after `ls -f`, `ls -lf` (stat '
               'of every file) and `grep -rq` (reads every file) over that folder, on a fresh mount.')
    out.append('')
    out.append('The machine is a shared 2-CPU VM; other builds ran at the same time, so absolute times '
               'drift between runs; the ratios of interleaved runs are what counts.')
    text = '\n'.join(out) + '\n'
    print(text)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)


if __name__ == '__main__':
    main()
