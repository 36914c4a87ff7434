#!/usr/bin/env python3
"""Where the per-packet and per-pass instructions are: fits Ir_f = a_f * packets + b_f * passes
+ c_f for every function f (its own instructions, callees excluded) over the runs of one build
(lines of scripts/callgrind-loop.sh), for two builds, and prints the functions whose a or b
changed most.

With --time, a per-second term joins the fit (see fit-per-packet.py --time).

usage: callgrind-functions.py [--time] RESULTS BACKEND SESSIONS SIZE [BEFORE_LABEL AFTER_LABEL]
"""
import collections
import re
import sys

sys.dont_write_bytecode = True  # no __pycache__ in scripts/
sys.path.insert(0, __import__("os").path.dirname(__file__))
fpp = __import__("fit-per-packet")

NAME = re.compile(r"(c?fn)=(?:\((\d+)\))?\s*(.*)")


def exclusive(path):
    """Ir per function, its own instructions only (call lines' inclusive costs skipped)."""
    ids = {}
    out = collections.Counter()
    fn = None
    skip = False
    with open(path) as f:
        for line in f:
            c = line[:1]
            if c.isdigit() or c in "+-*":
                if skip:
                    skip = False
                    continue
                parts = line.split()
                if len(parts) >= 2 and fn is not None:
                    out[fn] += int(parts[1])
            elif line.startswith("calls="):
                skip = True
            elif line.startswith("fn=") or line.startswith("cfn="):
                m = NAME.match(line.rstrip("\n"))
                kind, cid, name = m.groups()
                if cid is not None and name:
                    ids[cid] = name
                resolved = name or ids.get(cid)
                if kind == "fn":
                    fn = resolved
    return out


def main(argv):
    timed = bool(argv) and argv[0] == "--time"
    if timed:
        argv = argv[1:]
    path, backend, sessions, size = argv[0], argv[1], argv[2], argv[3]
    labels = argv[4:6] if len(argv) >= 6 else ["before", "after"]
    runs = collections.defaultdict(list)
    for line in open(path):
        f = line.split()
        if len(f) >= 15 and f[1:4] == [backend, sessions, size] and f[0] in labels:
            runs[f[0]].append((int(f[8]), int(f[12]), float(f[5]), exclusive(f[14])))
    per = {}
    for label in labels:
        rs = runs[label]
        names = set().union(*(r[3].keys() for r in rs))
        per[label] = {}
        for n in names:
            rows = [(p, w, t, fs.get(n, 0)) if timed else (p, w, fs.get(n, 0)) for p, w, t, fs in rs]
            (a, b, *_), _, _ = fpp.fit(rows)
            per[label][n] = (a, b)
    names = set(per[labels[0]]) | set(per[labels[1]])
    rows = []
    for n in names:
        a0, b0 = per[labels[0]].get(n, (0.0, 0.0))
        a1, b1 = per[labels[1]].get(n, (0.0, 0.0))
        rows.append((n, a0, a1, b0, b1))
    for what, i, j in (("per packet", 1, 2), ("per pass", 3, 4)):
        print(f"{what}: {labels[0]} {labels[1]} diff function")
        rows.sort(key=lambda r: -abs(r[j] - r[i]))
        print(f"  {sum(r[i] for r in rows):9.1f} {sum(r[j] for r in rows):9.1f} "
              f"{sum(r[j] - r[i] for r in rows):+8.1f}  TOTAL")
        for r in rows[:15]:
            print(f"  {r[i]:9.1f} {r[j]:9.1f} {r[j] - r[i]:+8.1f}  {r[0][:110]}")


if __name__ == "__main__":
    main(sys.argv[1:])
