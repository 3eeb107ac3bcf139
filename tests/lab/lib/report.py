#!/usr/bin/env python3
"""Summarise a lab run: timing table on stdout, OUT/results.json."""
import json
import os
import sys


def read_tsv(path, cols):
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                parts = line.rstrip('\n').split('\t')
                if len(parts) >= 2:
                    rows.append(dict(zip(cols, parts + [''] * (len(cols) - len(parts)))))
    return rows


def main():
    out, xen, smoke = sys.argv[1], sys.argv[2], sys.argv[3] == '1'
    stages = read_tsv(os.path.join(out, 'timings.tsv'), ['stage', 'seconds', 'state'])
    events = read_tsv(os.path.join(out, 'events.tsv'), ['event', 'seconds'])
    results = read_tsv(os.path.join(out, 'results.tsv'), ['name', 'status', 'detail'])
    figures = read_tsv(os.path.join(out, 'figures.tsv'), ['name', 'value'])

    print('\nTimings (host stages)')
    print(f'  {"stage":<22} {"seconds":>8}  state')
    for s in stages:
        print(f'  {s["stage"]:<22} {float(s["seconds"]):>8.1f}  {s["state"]}')
    if events:
        print('Timings (inside QEMU, seconds since QEMU start)')
        for e in events:
            print(f'  {e["event"]:<30} {float(e["seconds"]):>8.1f}')
    # Each test group's duration: from its mark to the next group's (or done).
    groups = []
    marks = [(e['event'], float(e['seconds'])) for e in events]
    for i, (name, t) in enumerate(marks):
        if not name.startswith('group:'):
            continue
        end = next((u for n, u in marks[i + 1:] if n.startswith('group:') or n == 'done'), None)
        if end is not None:
            groups.append((name[len('group:'):], end - t))
    if groups:
        print('Timings (test groups)')
        for g, d in groups:
            print(f'  {g:<30} {d:>8.1f}')
    if figures:
        print('Figures')
        for f in figures:
            print(f'  {f["name"]:<30} {f["value"]:>10}')
    counts = {k: sum(1 for r in results if r['status'] == k) for k in ('PASS', 'FAIL', 'SKIP')}
    doc = {
        'xen': xen,
        'smoke': smoke,
        'results': results,
        'stages': {s['stage']: {'seconds': float(s['seconds']), 'state': s['state']} for s in stages},
        'events': {e['event']: float(e['seconds']) for e in events},
        'groups': {g: round(d, 1) for g, d in groups},
        'figures': {f['name']: f['value'] for f in figures},
        'summary': {'passed': counts['PASS'], 'failed': counts['FAIL'], 'skipped': counts['SKIP']},
    }
    with open(os.path.join(out, 'results.json'), 'w') as f:
        json.dump(doc, f, indent=2)
    print(f'\nlab: {counts["PASS"]} passed, {counts["FAIL"]} failed, {counts["SKIP"]} skipped'
          f' (details: {os.path.join(out, "results.json")})')


if __name__ == '__main__':
    main()
