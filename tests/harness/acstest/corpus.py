# SPDX-License-Identifier: MIT
"""A deterministic test mailbox: messages of many MIME shapes in many folders, and seeding it."""

import base64
import os
import random
import time
import uuid
from pathlib import Path

from . import mutf7

# Folder set: nested levels, spaces, '&', non-ASCII, special-use names; never '.'.
DEFAULT_FOLDERS = (
    'INBOX', 'Drafts', 'Sent', 'Trash', 'Junk', 'Archive', 'Archive/2023', 'Archive/2024',
    'Entwürfe', 'A & B', 'Ünïcödé', 'Ünïcödé/日本', 'Work', 'Work/Projects',
    'Work/Projects/Big Project', 'Lists',
)

# Flags a seeded message may carry (IMAP names). \Deleted is left out on purpose: a test
# that ends with CLOSE would otherwise expunge corpus messages behind its back.
SYSTEM_FLAGS = (r'\Seen', r'\Answered', r'\Flagged', r'\Draft')
KEYWORDS = ('$Forwarded', '$Junk', '$NotJunk', '$label1', 'project-x', 'Urgent')
MAILDIR_LETTER = {r'\Draft': 'D', r'\Flagged': 'F', r'\Answered': 'R', r'\Seen': 'S',
                  r'\Deleted': 'T'}

KINDS = ('plain', 'alternative', 'attachment', 'eightbit', 'encoded_words', 'long_headers',
         'empty_body', 'nested', 'plain_keywords', 'qp')

BIG_SIZE = 30 * 1024 * 1024
BASE_DATE = 1704067200  # 2024-01-01T00:00:00Z

_WORDS = ('the of and to in is that for it as with was on be at by this had not are but '
          'from or have an they which one you were her all she there would their we him '
          'been has when who will more no if out so said what up its about into than them '
          'can only other new some could time these two may then do first any my now such '
          'like our over man me even most made after also did many before must through back '
          'years where much your way well down should because each just those people mail '
          'server cache folder message sync flag inbox archive draft reply forward').split()
_UTF8_LINES = ('Grüße aus Köln, schöne Äpfel und Öl für die Straße.',
               'Ça va très bien, merci — à bientôt !',
               'Съешь же ещё этих мягких французских булок, да выпей чаю.',
               '日本語のテキストです。メールのキャッシュ。',
               'Ελληνικά: ξεσκεπάζω την ψυχοφθόρα βδελυγμία.',
               'emoji: 📬✉️🗂️ and math: ∀x∈ℝ, x²≥0')


class Msg:
    """One corpus message. `uid` is the UID it gets when seeded into an empty server folder."""

    __slots__ = ('folder', 'data', 'flags', 'internaldate', 'message_id', 'kind', 'uid',
                 'index')

    def __init__(self, folder, data, flags, internaldate, message_id, kind, uid, index):
        self.folder = folder
        self.data = data
        self.flags = flags
        self.internaldate = internaldate
        self.message_id = message_id
        self.kind = kind
        self.uid = uid
        self.index = index

    def __repr__(self):
        return (f'Msg({self.index}, {self.folder!r}, uid={self.uid}, {self.kind}, '
                f'{len(self.data)} bytes, flags={self.flags})')


def _crlf(lines):
    return ''.join(line + '\r\n' for line in lines)


def _b64_lines(raw):
    enc = base64.b64encode(raw)
    return b''.join(enc[i:i + 76] + b'\r\n' for i in range(0, len(enc), 76))


class _Filler:
    """Deterministic readable text of any length, sliced from a per-seed pool."""

    def __init__(self, rng):
        words = [rng.choice(_WORDS) for _ in range(60000)]
        lines, cur = [], []
        n = 0
        for w in words:
            cur.append(w)
            n += len(w) + 1
            if n > 60 + rng.randrange(12):
                lines.append(' '.join(cur))
                cur, n = [], 0
        self.pool = ('\r\n'.join(lines) + '\r\n').encode()
        self.rng = rng

    def text(self, size):
        """About `size` bytes of whole CRLF-terminated lines (b'' for size <= 0)."""
        out = []
        pool = self.pool
        half = len(pool) // 2
        while size > 0:
            start = pool.index(b'\n', self.rng.randrange(half)) + 1
            end = pool.index(b'\n', start + min(size, half) - 1) + 1
            out.append(pool[start:end])
            size -= end - start
        return b''.join(out)


class Corpus:
    """A deterministic list of messages (see tests/harness/API.md).

    Corpus(seed, count, folders=None, big=False, avg_size=4000):
    - `folders`: sequence of UTF-8 folder names ('/'-separated); default DEFAULT_FOLDERS.
      The first len(folders) messages go one to each folder, the rest at random with
      INBOX weighted heavier. Ancestors of nested folders are added to folders().
    - `avg_size`: the mean message size in bytes (approximate).
    - `big=True` appends one message of 30 MB (a base64 attachment) to INBOX.
    Content kinds cycle through KINDS, so any count >= len(KINDS) covers all of them.
    """

    def __init__(self, seed, count, folders=None, big=False, avg_size=4000):
        self.seed = seed
        self.count = count
        self.avg_size = avg_size
        self.big = big
        names = list(DEFAULT_FOLDERS if folders is None else folders)
        for f in names:
            mutf7.maildirpp_dir(f)  # validates: no '.', no empty level
        allf = []
        for f in names:
            parts = f.split('/')
            for i in range(1, len(parts) + 1):
                a = '/'.join(parts[:i])
                if a not in allf:
                    allf.append(a)
        self._folders = allf
        self._chosen = names
        rng = random.Random(f'acs-corpus-{seed}')
        self._rng = rng
        self._filler = _Filler(rng)
        self.messages = []
        per_folder = {}
        weights = [8 if f == 'INBOX' else 1 for f in names]
        date = BASE_DATE + rng.randrange(86400)
        for i in range(count):
            folder = names[i] if i < len(names) else rng.choices(names, weights)[0]
            kind = KINDS[i % len(KINDS)]
            date += rng.randrange(1, 3600)
            self.messages.append(self._make(i, folder, kind, date, per_folder))
        if big:
            date += 60
            self.messages.append(self._make(count, 'INBOX', 'big', date, per_folder))

    # -- generation ------------------------------------------------------------------
    def folders(self):
        """The set of folder names (UTF-8, '/'-separated), ancestors included."""
        return set(self._folders)

    def by_folder(self):
        """dict folder → list of Msg in UID order (every folder present, maybe empty)."""
        out = {f: [] for f in self._folders}
        for m in self.messages:
            out[m.folder].append(m)
        return out

    def total_bytes(self):
        return sum(len(m.data) for m in self.messages)

    def _flags(self, kind):
        rng = self._rng
        flags = [f for f in SYSTEM_FLAGS if rng.random() < (0.6 if f == r'\Seen' else 0.15)]
        if kind == 'plain_keywords' or rng.random() < 0.1:
            flags += rng.sample(KEYWORDS, rng.randint(1, 3))
        return tuple(flags)

    def _make(self, i, folder, kind, date, per_folder):
        rng = self._rng
        uid = per_folder.get(folder, 0) + 1
        per_folder[folder] = uid
        mid = f'<{self.seed}.{i}.{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}@corpus.acs.test>'
        # Empty bodies (1 kind in 10) are compensated so the mean size is about avg_size.
        body_target = max(0, int(rng.uniform(0.2, 1.8) * self.avg_size * 1.11) - 450)
        sender = rng.choice(('Alice Example <alice@example.org>', 'bob@example.net',
                             '"Carol Q. Public" <carol@example.com>'))
        h = [f'Date: {_rfc822_date(date)}',
             f'From: {sender}',
             'To: user1@localhost',
             f'Message-ID: {mid}',
             f'Subject: corpus {self.seed}/{i} {kind} ' + ' '.join(rng.choices(_WORDS, k=4)),
             'MIME-Version: 1.0']
        fl = self._flags(kind)
        filler = self._filler.text
        if kind in ('plain', 'plain_keywords'):
            h.append('Content-Type: text/plain; charset=us-ascii')
            data = _crlf(h).encode() + b'\r\n' + filler(body_target)
        elif kind == 'qp':
            h += ['Content-Type: text/plain; charset=utf-8',
                  'Content-Transfer-Encoding: quoted-printable']
            body = (b'Gr=C3=BC=C3=9Fe =E2=80=94 quoted-printable with a soft line br=\r\n'
                    b'eak and =3D signs.\r\n') + filler(body_target)
            data = _crlf(h).encode() + b'\r\n' + body
        elif kind == 'alternative':
            b = f'=_alt_{self.seed}_{i}'
            text = filler(body_target // 2)
            html = b'<html><body><p>' + text.replace(b'\r\n', b'<br>\r\n') + b'</p></body></html>\r\n'
            h.append(f'Content-Type: multipart/alternative; boundary="{b}"')
            data = (_crlf(h).encode() + b'\r\nThis is a multi-part message in MIME format.\r\n'
                    + f'--{b}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n'.encode() + text
                    + f'--{b}\r\nContent-Type: text/html; charset=us-ascii\r\n\r\n'.encode() + html
                    + f'--{b}--\r\n'.encode())
        elif kind in ('attachment', 'big'):
            b = f'=_mix_{self.seed}_{i}'
            size = BIG_SIZE if kind == 'big' else max(16, body_target * 3 // 4)
            raw = rng.randbytes(size * 3 // 4 if kind == 'big' else size)
            att = _b64_lines(raw)
            name = 'big.bin' if kind == 'big' else f'attachment-{i}.bin'
            h.append(f'Content-Type: multipart/mixed; boundary="{b}"')
            data = (_crlf(h).encode() + b'\r\n'
                    + f'--{b}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n'.encode()
                    + b'See the attachment.\r\n'
                    + f'--{b}\r\nContent-Type: application/octet-stream; name="{name}"\r\n'
                      f'Content-Disposition: attachment; filename="{name}"\r\n'
                      'Content-Transfer-Encoding: base64\r\n\r\n'.encode() + att
                    + f'--{b}--\r\n'.encode())
        elif kind == 'eightbit':
            h += ['Content-Type: text/plain; charset=utf-8', 'Content-Transfer-Encoding: 8bit']
            lines = rng.sample(_UTF8_LINES, 3)
            data = (_crlf(h).encode() + b'\r\n' + _crlf(lines).encode() + filler(body_target)
                    + _crlf([rng.choice(_UTF8_LINES)]).encode())
        elif kind == 'encoded_words':
            subj = base64.b64encode(f'Grüße {i}: 日本語の件名 ✉'.encode()).decode()
            h = [x for x in h if not x.startswith(('Subject:', 'From:'))]
            h += [f'Subject: =?UTF-8?B?{subj}?=',
                  'From: =?ISO-8859-1?Q?J=F6rg_M=FCller?= <joerg@example.de>',
                  'Cc: =?UTF-8?Q?Ren=C3=A9e_?= <renee@example.fr>, =?utf-8?b?0JjQstCw0L0=?= <ivan@example.ru>',
                  'Content-Type: text/plain; charset=utf-8',
                  'Content-Transfer-Encoding: 8bit']
            data = _crlf(h).encode() + b'\r\n' + 'Körper\r\n'.encode() + filler(body_target)
        elif kind == 'long_headers':
            refs = ' '.join(f'<ref{j}.{self.seed}.{i}@corpus.acs.test>' for j in range(40))
            folded = 'References: ' + '\r\n '.join(refs.split(' '))
            h += [folded,
                  'X-Long-Unfolded: ' + ''.join(rng.choices('abcdefghijklmnopqrstuvwxyz0123456789', k=1800)),
                  'Content-Type: text/plain; charset=us-ascii']
            data = _crlf(h).encode() + b'\r\n' + filler(body_target)
        elif kind == 'empty_body':
            h.append('Content-Type: text/plain; charset=us-ascii')
            data = _crlf(h).encode() + b'\r\n'
        elif kind == 'nested':
            b = f'=_fwd_{self.seed}_{i}'
            inner = (_crlf(['Date: ' + _rfc822_date(date - 86400),
                            'From: dave@example.org', 'To: alice@example.org',
                            f'Message-ID: <inner.{self.seed}.{i}@corpus.acs.test>',
                            'Subject: the original', 'Content-Type: text/plain; charset=us-ascii'])
                     .encode() + b'\r\n' + filler(body_target))
            h.append(f'Content-Type: multipart/mixed; boundary="{b}"')
            data = (_crlf(h).encode() + b'\r\n'
                    + f'--{b}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n'.encode()
                    + b'Forwarded message below.\r\n'
                    + f'--{b}\r\nContent-Type: message/rfc822\r\n'
                      'Content-Disposition: inline\r\n\r\n'.encode() + inner
                    + f'--{b}--\r\n'.encode())
        else:
            raise AssertionError(kind)
        return Msg(folder, data, fl, date, mid, kind, uid, i)

    # -- seeding ---------------------------------------------------------------------
    def seed_maildir(self, dovecot, user):
        """Writes the corpus into user's server Maildir before the first login.

        Files are named '<internaldate>.M<index>P<seed>.acstest:2,<letters>' (no ',S='),
        flags as Maildir letters, keywords through each folder's dovecot-keywords, mtime =
        internaldate, a dovecot-uidlist so UIDs are 1..n in corpus order, all owned by the
        server's mail uid. Raises if the user has logged in already (an index exists).
        """
        root = Path(dovecot.maildir(user))
        if (root / 'dovecot.index').exists() or (root / 'dovecot-uidlist').exists():
            raise RuntimeError(f'{root} was used already; seed before the first login')
        uid, gid = dovecot.mail_uid, dovecot.mail_gid
        home = root.parent
        byf = self.by_folder()
        made = []
        for n, folder in enumerate(self._folders):
            d = root / mutf7.maildirpp_dir(folder)
            for sub in ('cur', 'new', 'tmp'):
                (d / sub).mkdir(parents=True, exist_ok=True)
            if folder != 'INBOX':
                (d / 'maildirfolder').touch()
            msgs = byf[folder]
            kw = []
            for m in msgs:
                for f in m.flags:
                    if not f.startswith('\\') and f not in kw:
                        kw.append(f)
            if len(kw) > 26:
                raise ValueError(f'folder {folder!r} needs more than 26 keywords')
            if kw:
                (d / 'dovecot-keywords').write_text(''.join(f'{j} {k}\n' for j, k in enumerate(kw)))
            uidlist = [f'3 V{1000 + n} N{len(msgs) + 1} G{uuid.UUID(int=random.Random(f"{self.seed}/{folder}").getrandbits(128)).hex}\n']
            for m in msgs:
                letters = sorted(MAILDIR_LETTER[f] for f in m.flags if f.startswith('\\'))
                letters += sorted(chr(ord('a') + kw.index(f)) for f in m.flags
                                  if not f.startswith('\\'))
                base = f'{m.internaldate}.M{m.index}P{self.seed}.acstest'
                p = d / 'cur' / f'{base}:2,{"".join(letters)}'
                fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    os.write(fd, m.data.replace(b'\r\n', b'\n'))
                    os.fchown(fd, uid, gid)
                    os.utime(fd, (m.internaldate, m.internaldate))
                finally:
                    os.close(fd)
                uidlist.append(f'{m.uid} :{base}:2,{"".join(letters)}\n')
            (d / 'dovecot-uidlist').write_text(''.join(uidlist))
            made.append(d)
        for dirpath, dirnames, filenames in os.walk(home):
            os.chown(dirpath, uid, gid)
            if os.path.basename(dirpath) == 'cur':
                continue  # message files got their owner when written
            for f in filenames:
                os.chown(os.path.join(dirpath, f), uid, gid)
        return str(root)

    def append(self, client):
        """APPENDs the corpus over IMAP with flags and INTERNALDATE, creating folders.

        `client` is a logged-in imaplib client (e.g. dovecot.client(user)). Message data is
        sent as is (CRLF). Returns the number of messages appended.
        """
        typ, data = client.list('""', '*')
        existing = set()
        for line in data:
            if isinstance(line, bytes) and line.rstrip().endswith(b'"'):
                existing.add(line.rsplit(b' "', 1)[-1][:-1].decode())
        for folder in self._folders:
            name = mutf7.imap_name(folder)
            if folder != 'INBOX' and name not in existing:
                typ, dat = client.create(_quote(name))
                if typ != 'OK' and b'ALREADYEXISTS' not in b' '.join(dat):
                    raise RuntimeError(f'CREATE {name} failed: {dat}')
        for m in self.messages:
            flags = '(' + ' '.join(m.flags) + ')'
            typ, dat = client.append(_quote(mutf7.imap_name(m.folder)), flags,
                                     _internaldate(m.internaldate), m.data)
            if typ != 'OK':
                raise RuntimeError(f'APPEND of {m} failed: {dat}')
        return len(self.messages)


def _quote(name):
    return '"' + name.replace('\\', '\\\\').replace('"', '\\"') + '"'


def _rfc822_date(epoch):
    return time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime(epoch))


def _internaldate(epoch):
    return time.strftime('"%d-%b-%Y %H:%M:%S +0000"', time.gmtime(epoch))
