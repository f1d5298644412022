#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Counts test results of tests/run (meson TAP logs, pytest junit XML, build steps) into one line.

Usage: summarize.py [--meson FLAVOR=testlog.json]... [--junit FLAVOR=report.xml]...
                    [--steps FILE]
Every TAP "ok"/"not ok" line is one test named <flavor>/<program>/<case>; a program that
printed fewer results than its plan (crash, Bail out!, timeout) has its missing ones
counted as failed, and a program that printed only "ok" lines but failed anyway (exit
status, sanitizer or valgrind report at exit, timeout) adds one failure. In junit XML,
failures, errors and skips all count as failed (a test that cannot run fails). A steps
file holds "name<TAB>exit status" lines for build steps; a non-zero status is a failure,
as is a log or report that does not exist. The last line printed is exactly
"tests: N passed, N failed"; the exit status is 0 only if nothing failed and at least
one test passed.
"""

import argparse
import json
import re
import sys
import xml.etree.ElementTree as ET

TAP_RESULT = re.compile(r'^(not )?ok\b\s*(\d+)?\s*(?:-\s*)?(.*?)\s*(?:#\s*(\w+).*)?$', re.I)
TAP_PLAN = re.compile(r'^1\.\.(\d+)')


class Tally:
    def __init__(self):
        self.passed = 0
        self.failed = []

    def ok(self, name):
        self.passed += 1

    def fail(self, name, why=''):
        self.failed.append(f'{name}{" (" + why + ")" if why else ""}')


def program_name(name):
    # meson names tests "project:suite / name"
    return name.split(' / ', 1)[-1].strip()


def read_meson(t, flavor, path):
    try:
        with open(path, encoding='utf-8', errors='replace') as f:
            lines = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        t.fail(f'{flavor}/(meson log missing: {path})')
        return
    except json.JSONDecodeError as e:
        t.fail(f'{flavor}/(meson log unreadable: {path}: {e})')
        return
    if not lines:
        t.fail(f'{flavor}/(no tests in {path})')
    for rec in lines:
        prog = program_name(rec.get('name', '?'))
        result = rec.get('result', 'ERROR')
        out = rec.get('stdout') or ''
        plan, seen, bad, bailed = None, 0, 0, False
        for raw in out.splitlines():
            line = raw.strip()
            m = TAP_PLAN.match(line)
            if m and plan is None:
                plan = int(m.group(1))
                continue
            if line.lower().startswith('bail out!'):
                bailed = True
                break
            m = TAP_RESULT.match(line)
            if not m or line.startswith('#'):
                continue
            seen += 1
            case = m.group(3) or f'#{m.group(2) or seen}'
            name = f'{flavor}/{prog}/{case}'
            directive = (m.group(4) or '').upper()
            if m.group(1):
                t.fail(name)
                bad += 1
            elif directive == 'SKIP':
                t.fail(name, 'skipped')
                bad += 1
            else:
                t.ok(name)
        if plan is None and seen == 0:
            t.fail(f'{flavor}/{prog}/(no TAP output)', f'{result}, exit {rec.get("returncode")}')
            continue
        if plan is not None and seen < plan:
            for k in range(seen + 1, plan + 1):
                t.fail(f'{flavor}/{prog}/#{k}',
                       f'missing: {"bailed out" if bailed else result}, exit {rec.get("returncode")}')
            continue
        if plan is not None and seen > plan:
            t.fail(f'{flavor}/{prog}/(plan)', f'{seen} results for a plan of {plan}')
        if result not in ('OK', 'EXPECTEDFAIL') and bad == 0:
            t.fail(f'{flavor}/{prog}/(exit)', f'{result}, exit {rec.get("returncode")}')


def read_junit(t, flavor, path):
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        t.fail(f'{flavor}/(junit report missing: {path})')
        return
    except ET.ParseError as e:
        t.fail(f'{flavor}/(junit report unreadable: {path}: {e})')
        return
    cases = list(root.iter('testcase'))
    if not cases:
        t.fail(f'{flavor}/(no tests in {path})')
    for c in cases:
        cls = c.get('classname') or ''
        name = f'{flavor}/{cls + "::" if cls else ""}{c.get("name", "?")}'
        kinds = [e.tag for e in c if e.tag in ('failure', 'error', 'skipped')]
        if kinds:
            msg = next((e.get('message') for e in c if e.tag in kinds), '') or ''
            t.fail(name, ', '.join(sorted(set(kinds))) + (': ' + msg.splitlines()[0][:160]
                                                         if msg.strip() else ''))
        else:
            t.ok(name)


def read_steps(t, path):
    try:
        with open(path) as f:
            for line in f:
                if not line.strip():
                    continue
                name, _, rc = line.rstrip('\n').partition('\t')
                if rc.strip() != '0':
                    t.fail(f'step/{name}', f'exit {rc.strip()}')
    except FileNotFoundError:
        t.fail(f'step/(steps file missing: {path})')


def pair(s):
    flavor, sep, path = s.partition('=')
    if not sep or not flavor or not path:
        raise argparse.ArgumentTypeError(f'expected FLAVOR=PATH, got {s!r}')
    return flavor, path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--meson', type=pair, action='append', default=[])
    ap.add_argument('--junit', type=pair, action='append', default=[])
    ap.add_argument('--steps')
    args = ap.parse_args(argv)
    t = Tally()
    if args.steps:
        read_steps(t, args.steps)
    for flavor, path in args.meson:
        read_meson(t, flavor, path)
    for flavor, path in args.junit:
        read_junit(t, flavor, path)
    if t.failed:
        print(f'{len(t.failed)} failed:')
        for name in t.failed:
            print(f'FAILED {name}')
    if t.passed == 0 and not t.failed:
        print('FAILED nothing ran')
    print(f'tests: {t.passed} passed, {len(t.failed)} failed')
    return 0 if not t.failed and t.passed > 0 else 1


if __name__ == '__main__':
    sys.exit(main())
