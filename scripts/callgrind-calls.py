#!/usr/bin/env python3
"""Calls of the named functions in a callgrind out file (summed over every caller).

usage: callgrind-calls.py FILE NAME...   prints one count per NAME, space separated
"""
import re
import sys


def calls(path, names):
    ids = {}
    counts = dict.fromkeys(names, 0)
    target = None
    with open(path) as f:
        for line in f:
            if line.startswith("cfn="):
                m = re.match(r"cfn=(?:\((\d+)\))?\s*(.*)", line.rstrip("\n"))
                cid, name = m.group(1), m.group(2)
                if cid is not None and name:
                    ids[cid] = name
                target = name or ids.get(cid)
            elif line.startswith("fn="):
                m = re.match(r"fn=(?:\((\d+)\))?\s*(.*)", line.rstrip("\n"))
                if m.group(1) is not None and m.group(2):
                    ids[m.group(1)] = m.group(2)
            elif line.startswith("calls=") and target in counts:
                counts[target] += int(line[6:].split()[0])
    return [counts[n] for n in names]


if __name__ == "__main__":
    print(*calls(sys.argv[1], sys.argv[2:]))
