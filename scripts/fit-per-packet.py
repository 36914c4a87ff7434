#!/usr/bin/env python3
"""Instructions per packet and per shard-loop pass, from scripts/callgrind-loop.sh lines.

For each (build, backend, sessions, size) it fits, by least squares over its runs,
    Ir = a * packets + b * passes + c
(packets: the relay's forwarded count; passes: recvmmsg() calls, one per pass of the shard
loop that had something to read;
c: start-up, set-up, shutdown), and prints a and b with their standard errors, the
residuals, and Ir per packet at 1, 2 and 64 packets per pass (a + b / batch). Then, for each
point measured with both builds, the after/before ratios.

With --time, a per-second term d * seconds joins the fit (housekeeping that runs on a clock,
e.g. the expiry sweep over 1,000 sessions), for runs whose counts start after the set-up
(ZERO_AFTER_SETUP), where the traffic phase's length is the run's time.

usage: fit-per-packet.py [--time] RESULTS [BEFORE_LABEL AFTER_LABEL]
"""
import collections
import math
import sys


def solve(m, v):
    """Solves m x = v (3x3) by Gaussian elimination with partial pivoting."""
    n = len(v)
    a = [row[:] + [v[i]] for i, row in enumerate(m)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(a[r][c]))
        a[c], a[p] = a[p], a[c]
        for r in range(n):
            if r != c:
                f = a[r][c] / a[c][c]
                a[r] = [x - f * y for x, y in zip(a[r], a[c])]
    return [a[i][n] / a[i][i] for i in range(n)]


def inverse(m):
    n = len(m)
    cols = [solve(m, [1.0 if i == j else 0.0 for i in range(n)]) for j in range(n)]
    return [[cols[j][i] for j in range(n)] for i in range(n)]


def fit(runs):
    """Least squares of ir on (x..., 1) for runs of (x..., ir); returns (coefficients, their
    standard errors, residuals), the intercept last."""
    xs = [tuple(r[:-1]) + (1.0,) for r in runs]
    ys = [r[-1] for r in runs]
    n = len(xs[0])
    xtx = [[sum(x[i] * x[j] for x in xs) for j in range(n)] for i in range(n)]
    xty = [sum(x[i] * y for x, y in zip(xs, ys)) for i in range(n)]
    beta = solve(xtx, xty)
    res = [y - sum(b * xi for b, xi in zip(beta, x)) for x, y in zip(xs, ys)]
    dof = max(len(ys) - n, 1)
    s2 = sum(r * r for r in res) / dof
    inv = inverse(xtx)
    se = [math.sqrt(max(s2 * inv[i][i], 0.0)) for i in range(n)]
    return beta, se, res


def main(argv):
    timed = bool(argv) and argv[0] == "--time"
    if timed:
        argv = argv[1:]
    path = argv[0]
    labels = argv[1:3] if len(argv) >= 3 else ["before", "after"]
    groups = collections.defaultdict(list)
    for line in open(path):
        f = line.split()
        if len(f) < 14:
            continue
        label, backend, sessions, size = f[0], f[1], int(f[2]), int(f[3])
        sent, received, forwarded = int(f[6]), int(f[7]), int(f[8])
        # passes: recvmmsg calls (one per pass that found the socket readable); poll() also
        # counts idle time-outs and, after the control socket came, its accept loop's waits
        ir, polls = int(f[10]), int(f[12])
        if received != sent:
            print(f"note: {label} {backend} s{sessions} b{size} r{f[4]} d{f[5]}: "
                  f"received {received} of {sent}", file=sys.stderr)
        groups[(label, backend, sessions, size)].append((forwarded, polls, ir, f[4], float(f[5])))
    fits = {}
    print("| build | backend | sessions | size | runs | Ir/packet (a) | Ir/pass (b) | "
          "packets/pass seen | Ir/pkt @1 | @2 | @64 | residuals (Ir/pkt of the run) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key in sorted(groups):
        runs = groups[key]
        if len(runs) < 3:
            continue
        if timed:
            (a, b, d, _), (sa, sb, sd, _), res = fit([(p, w, t, ir) for p, w, ir, _, t in runs])
            print(f"<!-- {key}: d = {d:.0f} ± {sd:.0f} instructions per second -->")
        else:
            (a, b, _), (sa, sb, _), res = fit([(p, w, ir) for p, w, ir, _, _ in runs])
        fits[key] = (a, b, sa, sb)
        batch = [p / w for p, w, _, _, _ in runs]
        resid = ", ".join(f"{r / p:+.1f}" for r, (p, _, _, _, _) in zip(res, runs))
        print(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {len(runs)} | {a:.1f} ± {sa:.1f} | "
              f"{b:.0f} ± {sb:.0f} | {min(batch):.2f}–{max(batch):.2f} | {a + b:.0f} | "
              f"{a + b / 2:.0f} | {a + b / 64:.1f} | {resid} |")
    print()
    print("| backend | sessions | size | a after − before | b after − before | "
          "ratio @1 pkt/pass | @2 | @64 | within 2 % from |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key in sorted(fits):
        if key[0] != labels[0]:
            continue
        other = (labels[1],) + key[1:]
        if other not in fits:
            continue
        a0, b0, sa0, sb0 = fits[key]
        a1, b1, sa1, sb1 = fits[other]
        ratio = [(a1 + b1 / n) / (a0 + b0 / n) for n in (1, 2, 64)]
        # (a1 + b1 w) <= 1.02 (a0 + b0 w), w = passes per packet
        num, den = 1.02 * a0 - a1, b1 - 1.02 * b0
        if den <= 0:
            holds = "always" if num >= 0 or -num / den >= 1 else f"{-den / num:.1f} pkt/pass down"
        elif num < 0:
            holds = "never"
        else:
            holds = f"{den / num:.1f} pkt/pass up"
        print(f"| {key[1]} | {key[2]} | {key[3]} | {a1 - a0:+.1f} ± {math.hypot(sa0, sa1):.1f} | "
              f"{b1 - b0:+.0f} ± {math.hypot(sb0, sb1):.0f} | "
              + " | ".join(f"{r:.4f}" for r in ratio) + f" | {holds} |")


if __name__ == "__main__":
    main(sys.argv[1:])
