#!/usr/bin/env python3
"""Prints the closing line of a test run: 'N passed, N failed' over every
GoogleTest case (and every plain test program) that meson ran."""
import json
import sys

passed = failed = skipped = 0
with open(sys.argv[1]) as f:
    for line in f:
        t = json.loads(line)
        result = t.get("result")
        subs = t.get("subtests") or []
        if subs:
            for s in subs:
                r = s.get("result")
                if r in ("OK", "EXPECTEDFAIL"):
                    passed += 1
                elif r == "SKIP":
                    skipped += 1
                else:
                    failed += 1
        elif result in ("OK", "EXPECTEDFAIL"):
            passed += 1
        elif result == "SKIP":
            skipped += 1
        else:
            failed += 1
print(f"tests: {passed} passed, {failed} failed, {skipped} skipped")
