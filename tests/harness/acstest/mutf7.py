# SPDX-License-Identifier: MIT
"""IMAP modified UTF-7 (RFC 3501 5.1.3) and Dovecot Maildir++ folder directory names."""

import base64


def _b64(s):
    return base64.b64encode(s.encode('utf-16-be')).rstrip(b'=').replace(b'/', b',').decode()


def encode(name):
    """UTF-8 str → modified UTF-7 str ('&' → '&-', non-ASCII runs → '&...-')."""
    out, run = [], []
    for ch in name:
        if 0x20 <= ord(ch) <= 0x7e:
            if run:
                out.append('&' + _b64(''.join(run)) + '-')
                run = []
            out.append('&-' if ch == '&' else ch)
        else:
            run.append(ch)
    if run:
        out.append('&' + _b64(''.join(run)) + '-')
    return ''.join(out)


def decode(name):
    """Modified UTF-7 str → UTF-8 str; raises ValueError on malformed input."""
    out, i = [], 0
    while i < len(name):
        ch = name[i]
        if ch != '&':
            if not 0x20 <= ord(ch) <= 0x7e:
                raise ValueError(f'non-ASCII character in modified UTF-7: {name!r}')
            out.append(ch)
            i += 1
            continue
        j = name.find('-', i)
        if j < 0:
            raise ValueError(f'unterminated shift in modified UTF-7: {name!r}')
        if j == i + 1:
            out.append('&')
        else:
            b = name[i + 1:j].replace(',', '/')
            raw = base64.b64decode(b + '=' * (-len(b) % 4), validate=True)
            if len(raw) % 2:
                raise ValueError(f'odd UTF-16 length in modified UTF-7: {name!r}')
            out.append(raw.decode('utf-16-be'))
        i = j + 1
    return ''.join(out)


def maildirpp_dir(folder):
    """Corpus folder ('A/B', UTF-8, '/'-separated) → Dovecot Maildir++ directory name.

    'INBOX' → '' (the Maildir root); 'Archive/2024' → '.Archive.2024'; levels are
    mUTF-7 encoded. Levels must not contain '.' (the server's hierarchy delimiter).
    """
    if folder == 'INBOX':
        return ''
    levels = folder.split('/')
    for lv in levels:
        if '.' in lv or not lv:
            raise ValueError(f'folder level {lv!r} of {folder!r} is empty or contains "."')
    return '.' + '.'.join(encode(lv) for lv in levels)


def imap_name(folder, delimiter='.'):
    """Corpus folder → the mailbox name as sent over IMAP (mUTF-7, server delimiter)."""
    if folder == 'INBOX':
        return 'INBOX'
    return delimiter.join(encode(lv) for lv in folder.split('/'))


def folder_from_imap(name, delimiter='.'):
    """IMAP mailbox name (mUTF-7, server delimiter) → corpus folder ('/'-separated UTF-8)."""
    if name.upper() == 'INBOX':
        return 'INBOX'
    return '/'.join(decode(lv) for lv in name.split(delimiter))
