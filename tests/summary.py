#!/usr/bin/env python3
"""Prints the closing lines of a test run.

  summary.py LOGDIR [--tsan TSAN_LOGDIR] [--fuzz FUZZ_SUMMARY_JSON]

'tests: N passed, N failed, N skipped' over every GoogleTest case (and every
plain test program) meson ran under ASan+UBSan: meson writes them all, gtest
cases included, to testlog.junit.xml. With --tsan, the same count for the
threaded tests run under ThreadSanitizer; with --fuzz, the libFuzzer
targets of tests/fuzz/run (executions and findings per target)."""
import argparse
import json
import os
import xml.etree.ElementTree as ET


def count(logdir):
    passed = failed = skipped = 0
    tree = ET.parse(os.path.join(logdir, "testlog.junit.xml"))
    for suite in tree.getroot().iter("testsuite"):
        for case in suite.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed += 1
            elif case.find("skipped") is not None:
                skipped += 1
            else:
                passed += 1
    return passed, failed, skipped


ap = argparse.ArgumentParser()
ap.add_argument("logdir")
ap.add_argument("--tsan")
ap.add_argument("--fuzz")
a = ap.parse_args()

p, f, s = count(a.logdir)
print(f"tests: {p} passed, {f} failed, {s} skipped")
if a.tsan:
    if os.path.exists(os.path.join(a.tsan, "testlog.junit.xml")):
        p, f, s = count(a.tsan)
        print(f"tsan: {p} passed, {f} failed, {s} skipped (threaded tests under ThreadSanitizer)")
    else:
        print("tsan: did not run")
if a.fuzz:
    if os.path.exists(a.fuzz):
        with open(a.fuzz) as fh:
            r = json.load(fh)
        ts = r["targets"]
        bad = [t["target"] for t in ts if not t["ok"]]
        print(f"fuzz: {len(ts)} targets x {r['seconds']} s, {sum(t['executions'] for t in ts)} executions, "
              + ("no findings" if not bad else "FINDINGS in " + ", ".join(bad)))
        for t in ts:
            print(f"  {t['target']:<18} {t['executions']:>9} execs {t['exec_per_s']:>6}/s  cov {t['cov']:>5}  "
                  f"ft {t['ft']:>6}" + ("" if t["ok"] else "  FAIL"))
    else:
        print("fuzz: did not run")
