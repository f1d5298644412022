#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Rewrites the tables of docs/performance.md from bench/results/*.md.

docs/performance.md holds the prose; each figure table sits between two markers,
`<!-- bench:NAME -->` and `<!-- /bench:NAME -->`. This script replaces what is between them
with the command line and the first table of the newest run in bench/results/NAME.md (the
last section headed `### `, or the whole file when it has none), and the block
`<!-- bench:machine -->` with a description of this machine. Run by bench/run after the
benchmarks; it never invents a figure: a results file that is missing or has no table
fails the run.
"""

import datetime
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / 'docs' / 'performance.md'


def newest_run(text):
    i = text.rfind('\n### ')
    return text[i + 1:] if i >= 0 else text


def table_of(name):
    path = ROOT / 'bench' / 'results' / f'{name}.md'
    if not path.exists():
        raise SystemExit(f'render: {path} is missing (run its benchmark first)')
    run = newest_run(path.read_text())
    lines = run.splitlines()
    head = lines[0].lstrip('#').strip() if lines and lines[0].startswith('###') else ''
    cmd = next((l for l in lines if 'Command' in l and '`' in l), '')
    start = next((i for i, l in enumerate(lines) if l.startswith('|')), None)
    if start is None:
        raise SystemExit(f'render: {path} has no table in its newest run')
    end = start
    while end < len(lines) and lines[end].startswith('|'):
        end += 1
    out = []
    if head:
        out.append(f'*{head}* — full output in `bench/results/{name}.md`.')
    else:
        out.append(f'Full output in `bench/results/{name}.md`.')
    if cmd:
        out += ['', cmd.strip()]
    out += [''] + lines[start:end]
    return '\n'.join(out)


def machine():
    cpu = '?'
    try:
        for l in open('/proc/cpuinfo'):
            if l.startswith('model name'):
                cpu = l.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    mem = '?'
    try:
        for l in open('/proc/meminfo'):
            if l.startswith('MemTotal'):
                mem = f'{int(l.split()[1]) / 1024 / 1024:.0f} GiB'
    except OSError:
        pass
    osrel = '?'
    try:
        for l in open('/etc/os-release'):
            if l.startswith('PRETTY_NAME='):
                osrel = l.split('=', 1)[1].strip().strip('"')
    except OSError:
        pass
    head = subprocess.run(['git', '-C', str(ROOT), 'rev-parse', '--short', 'HEAD'],
                          capture_output=True, text=True).stdout.strip() or '?'
    when = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
    return (f'Tables rendered {when} (repository at commit {head}) on: {cpu}, {os.cpu_count()} cores, '
            f'{mem} RAM, {osrel}, kernel {platform.release()}. Each table says when its own run was; '
            f'`bench/run` makes them all in one go.')


def main():
    text = DOC.read_text()
    names = re.findall(r'<!-- bench:([a-z]+) -->', text)
    if not names:
        raise SystemExit(f'render: no <!-- bench:NAME --> markers in {DOC}')
    for name in names:
        body = machine() if name == 'machine' else table_of(name)
        pat = re.compile(r'(<!-- bench:%s -->\n).*?(<!-- /bench:%s -->)' % (name, name), re.S)
        if not pat.search(text):
            raise SystemExit(f'render: marker bench:{name} has no closing marker')
        text = pat.sub(lambda m: m.group(1) + body + '\n' + m.group(2), text)
    DOC.write_text(text)
    print(f'render: {DOC} rewritten ({", ".join(names)})')


if __name__ == '__main__':
    sys.exit(main())
