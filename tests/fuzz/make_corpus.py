#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-only
"""Writes the seed corpora in tests/fuzz/corpus/<target>/ (run from anywhere;
the output is deterministic).

The targets read structured input through FuzzedDataProvider, which takes
integral choices from the END of the input and byte strings from the front,
so a seed is any byte string: a few pseudo-random ones of several lengths
per target give libFuzzer a spread of programs to start from. fuzz_config
also gets real configuration files in its raw-text mode (the last byte,
read as a bool, is 0: raw; 1: generated document)."""
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TARGETS = ["fuzz_split_queue", "fuzz_packed_queue", "fuzz_mmio", "fuzz_pci", "fuzz_blk", "fuzz_net",
           "fuzz_console", "fuzz_config", "fuzz_discovery"]
LENGTHS = [24, 96, 256, 700, 1500, 3000]

CONFIGS = [
    "",
    "[daemon]\nstrict = true\nworkers = 4\n",
    '[[domain]]\nid = 5\nname = "guest1"\nroles = ["domu"]\nclass = "safe"\n\n'
    '[[device]]\nguest = "guest1"\ntype = "blk"\ntransport = "pci"\nnonblocking = true\n'
    'path = "/var/lib/xen/images/g1.img"\nqueues = 2\n',
    '[[device]]\nguest = 7\ntype = "net"\nmac = "52:54:00:12:34:56"\nmtu = 9000\nqueues = 3\n',
    '[[device]]\nguest = "x"\ntype = "console"\nbackend = "socket"\nsocket = "/run/x.sock"\n',
    '[[device]]\nguest = "x"\ntype = "blk"\nqueus = 2\n',
    "[daemon\nworkers = \n",
]


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


for t in TARGETS:
    rng = random.Random(t)
    for i, n in enumerate(LENGTHS):
        write(t, "seed-%02d" % i, bytes(rng.randrange(256) for _ in range(n)))

example = open(os.path.join(ROOT, "systemd", "xen-virtiod.toml.example"), "rb").read()
write("fuzz_config", "example-toml", example + b"\x00")
for i, c in enumerate(CONFIGS):
    write("fuzz_config", "raw-%02d" % i, c.encode() + b"\x00")
