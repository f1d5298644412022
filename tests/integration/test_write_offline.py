# SPDX-License-Identifier: MIT
"""Issue 5, offline: with Dovecot stopped, 1,000 mixed writes succeed in the tree; when it
comes back, server and tree converge, nothing lost and nothing duplicated."""

import os
import random
import re
import time
from collections import Counter

from acstest.corpus import Corpus
from acstest.dovecot import Dovecot
from acstest.instance import LETTER_FLAGS, Instance, diff_states, to_crlf

USER = 'user1'
SEED = 5105
WRITES = 1000
FOLDERS = ('INBOX', 'Work', 'Work/Projects', 'Lists', 'Entwürfe', 'A & B', 'Ünïcödé/日本', 'Archive/2024')
RENAMABLE = {'Lists', 'Entwürfe', 'A & B'}  # never INBOX or Dovecot's auto-created special-use folders
CONVERGE_TIMEOUT = 150
_MID = re.compile(rb'^Message-ID:[ \t]*<([^>\r\n]+)>', re.M | re.I)


def mid_of(data):
    m = _MID.search(data)
    assert m, f'no Message-ID in {data[:200]!r}'
    return m.group(1).decode()


class Model:
    """What the mailbox must hold after the writes: Message-ID -> (folder, IMAP flags)."""

    def __init__(self, state):
        self.msgs = {}
        self.folders = set(state)
        for folder, rows in state.items():
            for uid, flags, idate, body in rows:
                mid = mid_of(body)
                assert mid not in self.msgs, f'corpus Message-ID {mid} twice'
                self.msgs[mid] = [folder, set(flags)]
        self.deleted = set()
        self.idates = {}
        self.bodies = {}  # appended messages: the bytes written, as IMAP serves them (CRLF)
        self.hist = {}  # Message-ID -> what the test did to it (for failure messages)

    def did(self, mid, i, what):
        self.hist.setdefault(mid, []).append(f'#{i} {what}')

    def history(self, lines, limit=12):
        mids = []
        for line in lines:
            for mid in self.hist:
                if mid in line and mid not in mids:
                    mids.append(mid)
        return '\n'.join(f'  {mid}: ' + '; '.join(self.hist[mid]) for mid in mids[:limit])

    def check(self, state, where):
        """Differences between a state (server or tree, with bodies) and the model."""
        out = []
        seen = Counter()
        for folder, rows in state.items():
            for uid, flags, idate, body in rows:
                mid = mid_of(body)
                seen[mid] += 1
                want = self.msgs.get(mid)
                if want is None:
                    out.append(f'{where}: {mid} in {folder!r} should not exist' +
                               (' (deleted)' if mid in self.deleted else ''))
                    continue
                if want[0] != folder:
                    out.append(f'{where}: {mid} in {folder!r}, want {want[0]!r}')
                if set(flags) != want[1]:
                    out.append(f'{where}: {mid} flags {sorted(flags)}, want {sorted(want[1])}')
                if mid in self.idates and idate != self.idates[mid]:
                    out.append(f'{where}: {mid} INTERNALDATE {idate}, want {self.idates[mid]}')
                if mid in self.bodies and body != self.bodies[mid]:
                    out.append(f'{where}: {mid} body differs from what was written')
        for mid, n in seen.items():
            if n > 1:
                out.append(f'{where}: {mid} {n} times (duplicated)')
        for mid in set(self.msgs) - set(seen):
            out.append(f'{where}: {mid} lost (want in {self.msgs[mid][0]!r})')
        for f in self.folders ^ set(state):
            out.append(f'{where}: folder {f!r} ' + ('missing' if f in self.folders else 'should not exist'))
        return out


def flags_of(info, kw):
    return {LETTER_FLAGS[c] for c in info if c in LETTER_FLAGS} | {kw[c] for c in info if c in kw}


def with_info(name, letters):
    return f'{name.split(":2,")[0]}:2,{"".join(sorted(set(letters)))}'


def test_offline_writes_converge(harness_tmp):
    rng = random.Random(SEED)
    dv = Dovecot(harness_tmp / 'dovecot')
    inst = None
    try:
        Corpus(SEED, 400, folders=FOLDERS).seed_maildir(dv, USER)
        inst = Instance(dv, USER, harness_tmp / 'acs')
        inst.wait_quiescent(60)
        start_state = inst.server_state()
        model = Model(start_state)
        kw = inst._keywords_by_letter()
        kw_letters = sorted(kw)[:3]
        assert kw_letters, 'the cache knows no keyword'
        assert not diff_states(start_state, inst.tree_state())

        dv.stop()
        t_off = time.monotonic()
        counts = Counter()
        created = 0
        renamable = set(RENAMABLE)

        def pick(folder=None, sub=None):
            folders = sorted(f for f in model.folders if folder is None or f == folder)
            rng.shuffle(folders)
            for f in folders:
                fs = [x for x in inst.tree_files(f) if sub is None or x[1] == sub]
                if fs:
                    return f, rng.choice(sorted(fs))
            raise AssertionError('no message left in the tree')

        for i in range(WRITES):
            r = rng.random()
            if i % 83 == 41:
                kind = ('mkdir', 'rename folder', 'rmdir')[(i // 83) % 3]
            elif r < 0.40:
                kind = 'flags'
            elif r < 0.55:
                kind = 'unlink'
            elif r < 0.78:
                kind = 'move'
            else:
                kind = 'append'
            counts[kind] += 1
            if kind == 'flags':
                folder, (path, sub, uniq, info) = pick()
                mid = mid_of(path.read_bytes())
                if sub == 'new' and rng.random() < 0.5:
                    info += 'S'
                    new = path.parent.parent / 'cur' / with_info(path.name, info)
                else:
                    c = rng.choice('DFRS' + ''.join(kw_letters))
                    info = info.replace(c, '') if c in info else info + c
                    new = path.parent / with_info(path.name, info)
                os.rename(path, new)
                assert new.exists() and not path.exists(), f'write {i}: rename not visible'
                model.msgs[mid][1] = flags_of(info, kw)
                model.did(mid, i, f'{sub}/ -> {new.parent.name}/ :2,{info} in {folder!r}')
            elif kind == 'unlink':
                folder, (path, sub, uniq, info) = pick()
                mid = mid_of(path.read_bytes())
                os.unlink(path)
                assert not path.exists()
                del model.msgs[mid]
                model.deleted.add(mid)
                model.did(mid, i, f'unlink in {folder!r}')
            elif kind == 'move':
                folder, (path, sub, uniq, info) = pick()
                target = rng.choice(sorted(model.folders - {folder}))
                mid = mid_of(path.read_bytes())
                new = inst.folder_dir(target) / sub / path.name
                os.rename(path, new)
                assert new.exists() and not path.exists(), f'write {i}: move not visible'
                model.msgs[mid][0] = target
                model.did(mid, i, f'move {folder!r} -> {target!r} ({sub}/ :2,{info})')
                assert model.msgs[mid][1] == flags_of(info, kw)
            elif kind == 'append':
                target = rng.choice(sorted(model.folders))
                fdir = inst.folder_dir(target)
                mid = f'offline-{SEED}-{i}@acs.test'
                data = (f'From: offline@example.org\nTo: {USER}@example.org\nSubject: offline write {i}\n'
                        f'Message-ID: <{mid}>\n\nwritten while the server was down ({i})\n'
                        + 'x' * rng.randrange(0, 3000) + '\n').encode()
                uniq = f'{1_700_000_000 + i}.M{i}P{os.getpid()}.offline'
                tmp = fdir / 'tmp' / uniq
                with open(tmp, 'wb') as f:
                    f.write(data)
                    os.fsync(f.fileno())
                idate = 1_650_000_000 + i * 61
                os.utime(tmp, (idate, idate))
                if rng.random() < 0.5:
                    info, dest = '', fdir / 'new' / uniq
                else:
                    info = ''.join(c for c in 'DFRS' if rng.random() < 0.4)
                    dest = fdir / 'cur' / f'{uniq}:2,{info}'
                os.rename(tmp, dest)
                assert any(x[2] == uniq for x in inst.tree_files(target)), f'write {i}: append not visible'
                model.msgs[mid] = [target, flags_of(info, kw)]
                model.did(mid, i, f'append to {target!r} {dest.parent.name}/ :2,{info}')
                model.idates[mid] = idate
                model.bodies[mid] = to_crlf(data)
            elif kind == 'mkdir':
                created += 1
                name = f'Offline {created} ü'
                os.mkdir(inst.folder_dir(name))
                assert (inst.folder_dir(name) / 'cur').is_dir(), f'write {i}: new folder has no cur/'
                model.folders.add(name)
            elif kind == 'rename folder':
                cands = sorted(f for f in model.folders if f.split('/')[0] in renamable or f.startswith('Offline'))
                old = rng.choice([f for f in cands if '/' not in f])
                new = f'{old} moved {i}'
                os.rename(inst.folder_dir(old), inst.folder_dir(new))
                assert inst.folder_dir(new).is_dir() and not inst.folder_dir(old).exists()
                ren = lambda f: new + f[len(old):] if f == old or f.startswith(old + '/') else f  # noqa: E731
                model.folders = {ren(f) for f in model.folders}
                for mid, m in model.msgs.items():
                    if ren(m[0]) != m[0]:
                        model.did(mid, i, f'its folder renamed {m[0]!r} -> {ren(m[0])!r}')
                    m[0] = ren(m[0])
                renamable.add(new)
            elif kind == 'rmdir':
                used = {m[0] for m in model.msgs.values()}
                empty = sorted(f for f in model.folders if f.startswith('Offline') and f not in used
                               and not any(g.startswith(f + '/') for g in model.folders))
                if not empty:
                    created += 1
                    name = f'Offline {created} ü'
                    os.mkdir(inst.folder_dir(name))
                    empty = [name]
                    model.folders.add(name)
                os.rmdir(inst.folder_dir(empty[0]))
                assert not inst.folder_dir(empty[0]).exists()
                model.folders.discard(empty[0])
        t_writes = time.monotonic() - t_off
        print(f'{WRITES} writes offline in {t_writes:.1f} s: {dict(counts)}; {inst.op_count()} ops queued')
        assert inst.syncd.poll() is None, 'acs-syncd died while the server was down:\n' + inst.syncd_log_tail()

        # the tree alone already shows every write
        d = model.check(inst.tree_state(), 'tree')
        assert not d, 'tree after the offline writes:\n' + '\n'.join(d[:30]) + '\n' + model.history(d)

        dv.start()
        took = inst.wait_quiescent(CONVERGE_TIMEOUT)
        print(f'converged {took:.1f} s after Dovecot came back')

        server = inst.server_state()
        d = model.check(server, 'server')
        assert not d, 'server after convergence:\n' + '\n'.join(d[:40]) + '\nhistory:\n' + model.history(d)
        d = diff_states(server, inst.tree_state())
        assert not d, 'server and tree differ:\n' + '\n'.join(d[:40])
        total = sum(len(v) for v in server.values())
        print(f'server: {total} messages in {len(server)} folders, each Message-ID once')
        inst.stop(check=True)
    finally:
        if inst:
            inst.stop()
        dv.close()
