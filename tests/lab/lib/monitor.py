#!/usr/bin/env python3
"""Run QEMU (the lab's Xen machine), timestamp its serial console, collect
LAB-MARK events and LAB-RESULT lines, stop it when Dom0 says done.

Writes OUT/console.log (every line, with seconds since QEMU started),
appends to OUT/results.tsv and OUT/events.tsv, prints one PASS/FAIL/SKIP
line per result. Exit 0 when Dom0 finished, 1 otherwise.
"""
import argparse
import os
import re
import select
import signal
import subprocess
import sys
import time

RESULT = re.compile(r'LAB-RESULT (\S+) (PASS|FAIL|SKIP) ?(.*)$')
MARK = re.compile(r'LAB-MARK (.*)$')
FIGURE = re.compile(r'LAB-FIGURE (\S+) (\S+)')
SCRIPT_OUT = re.compile(r'^domu\((\w+)\): LAB-SCRIPT-OUT ?(.*)$')
SCRIPT_EXIT = re.compile(r'^domu\((\w+)\): LAB-SCRIPT-EXIT (\d+)')
XEN_BANNER = re.compile(r'\(XEN\) Xen version')
PANIC = re.compile(r'Kernel panic|\(XEN\) Panic on CPU')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', required=True)
    ap.add_argument('--timeout', type=float, default=900)
    ap.add_argument('--expect', default='', help='comma-separated result names that must appear')
    ap.add_argument('--autogroup-nice', type=int, default=None,
                    help="nice value of QEMU's scheduling autogroup (its own session)")
    ap.add_argument('cmd', nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == '--' else a.cmd

    t0 = time.monotonic()
    events = {}
    results = {}
    con = open(os.path.join(a.out, 'console.log'), 'w')
    ev_f = open(os.path.join(a.out, 'events.tsv'), 'a')
    res_f = open(os.path.join(a.out, 'results.tsv'), 'a')
    fig_f = open(os.path.join(a.out, 'figures.tsv'), 'a')
    script_f = None

    def event(name, t):
        if name not in events:
            events[name] = t
            ev_f.write(f'{name}\t{t:.1f}\n')
            ev_f.flush()

    def result(name, status, detail):
        results[name] = status
        res_f.write(f'{name}\t{status}\t{detail}\n')
        res_f.flush()
        print(f'{status}: {name}' + (f' ({detail})' if detail else ''), flush=True)

    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, start_new_session=True)
    # QEMU runs in a session of its own, so with autogroup scheduling
    # (sched_autogroup_enabled) it shares the host's CPUs with every other
    # session equally, whatever their processes' nice values: a few niced
    # builds in other sessions then starve the emulated CPUs, and every
    # trapped access waits. Its autogroup's nice restores the priority the
    # process nice value states (sched(7), "The autogroup feature").
    if a.autogroup_nice is not None:
        try:
            with open(f'/proc/{p.pid}/autogroup', 'w') as f:
                f.write(str(a.autogroup_nice))
        except OSError as e:
            print(f'lab: note: cannot set the autogroup nice of QEMU: {e}', flush=True)
    event('qemu-start', 0.0)
    buf = b''
    done_at = None
    panic_at = None
    why = ''
    while True:
        now = time.monotonic() - t0
        if done_at is not None and now - done_at > 5:
            break
        if panic_at is not None and now - panic_at > 3:
            why = 'panic'
            break
        if now > a.timeout:
            why = f'timeout after {a.timeout:.0f}s'
            break
        r, _, _ = select.select([p.stdout], [], [], 0.5)
        if not r:
            if p.poll() is not None:
                break
            continue
        chunk = os.read(p.stdout.fileno(), 65536)
        if not chunk:
            p.wait()
            break
        buf += chunk
        while b'\n' in buf:
            raw, buf = buf.split(b'\n', 1)
            line = raw.decode('utf-8', 'replace').replace('\r', '').rstrip()
            t = time.monotonic() - t0
            con.write(f'{t:8.2f} {line}\n')
            if XEN_BANNER.search(line):
                event('xen-banner', t)
            m = MARK.search(line)
            if m:
                name = m.group(1).split(' ')[0]
                if len(m.group(1).split(' ')) > 1 and (name.startswith('domu-') or name == 'group'):
                    name = name + ':' + m.group(1).split(' ')[1]
                event(name, t)
                if name == 'done':
                    done_at = t
            m = RESULT.search(line)
            if m:
                result(m.group(1), m.group(2), m.group(3).strip())
            m = FIGURE.search(line)
            if m:
                fig_f.write(f'{m.group(1)}\t{m.group(2)}\n')
                fig_f.flush()
                print(f'figure: {m.group(1)} = {m.group(2)}', flush=True)
            # --guest-script: its output and exit status, per guest.
            m = SCRIPT_OUT.match(line)
            if m:
                if script_f is None:
                    script_f = open(os.path.join(a.out, 'guest-script.out'), 'w')
                script_f.write(f'{m.group(1)}: {m.group(2)}\n')
                script_f.flush()
                print(f'guest-script({m.group(1)}): {m.group(2)}', flush=True)
            m = SCRIPT_EXIT.match(line)
            if m:
                rc = int(m.group(2))
                result(f'guest-script:{m.group(1)}', 'PASS' if rc == 0 else 'FAIL', f'exit status {rc}')
            if 'LAB-DOMU-INIT' in line:
                tag = re.match(r'domu\((\w+)\)', line)
                event('domu-init:' + (tag.group(1) if tag else '?'), t)
            if PANIC.search(line) and not line.startswith('domu(') and panic_at is None:
                panic_at = t
                print(f'lab: panic seen: {line}', flush=True)
        con.flush()

    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    event('qemu-exit', time.monotonic() - t0)
    if done_at is None and not why:
        why = f'QEMU exited (rc {p.returncode}) before Dom0 finished'
    for name in filter(None, a.expect.split(',')):
        if name not in results:
            result(name, 'FAIL', f'no result ({why or "not reported"}; see out/console.log)')
    if why:
        print(f'lab: {why}; last console lines:', flush=True)
        con.close()
        with open(os.path.join(a.out, 'console.log')) as f:
            for line in f.readlines()[-15:]:
                print('  ' + line.rstrip())
    return 0 if done_at is not None else 1


if __name__ == '__main__':
    sys.exit(main())
