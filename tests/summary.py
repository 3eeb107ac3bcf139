#!/usr/bin/env python3
"""Prints the closing line of a test run, 'tests: N passed, N failed, N skipped',
over every GoogleTest case (and every plain test program) meson ran: meson
writes them all, gtest cases included, to testlog.junit.xml."""
import os
import sys
import xml.etree.ElementTree as ET

logdir = sys.argv[1]
passed = failed = skipped = 0
tree = ET.parse(os.path.join(logdir, "testlog.junit.xml"))
for suite in tree.getroot().iter("testsuite"):
    cases = list(suite.iter("testcase"))
    for case in cases:
        if case.find("failure") is not None or case.find("error") is not None:
            failed += 1
        elif case.find("skipped") is not None:
            skipped += 1
        else:
            passed += 1
print(f"tests: {passed} passed, {failed} failed, {skipped} skipped")
