"""Compares Concord's exact samplers with OpenDP's: the same distributions, drawn 200 000 times
each, must pass a two-sample chi-square test of homogeneity at the 1 - 1e-6 quantile (a correct
pair fails by chance once in a million runs).

Usage: opendp_compare.py DRAW_BINARY
"""

import math
import subprocess
import sys

import opendp.prelude as dp

N = 200_000
Z = 4.753  # one-sided 1e-6 tail of the standard normal

dp.enable_features("contrib")


def critical(df):
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + Z * math.sqrt(a)) ** 3


def homogeneity(x, y):
    """Two-sample chi-square over the values, bins of small counts merged at the tails."""
    cx, cy = {}, {}
    for v in x:
        cx[v] = cx.get(v, 0) + 1
    for v in y:
        cy[v] = cy.get(v, 0) + 1
    values = sorted(set(cx) | set(cy))
    bins, cur = [], [0, 0]
    for v in values:
        cur[0] += cx.get(v, 0)
        cur[1] += cy.get(v, 0)
        if cur[0] + cur[1] >= 40:
            bins.append(cur)
            cur = [0, 0]
    if bins:
        bins[-1][0] += cur[0]
        bins[-1][1] += cur[1]
    nx, ny = len(x), len(y)
    chi = 0.0
    for a, b in bins:
        t = a + b
        ea, eb = t * nx / (nx + ny), t * ny / (nx + ny)
        chi += (a - ea) ** 2 / ea + (b - eb) ** 2 / eb
    return chi, critical(len(bins) - 1)


def concord(binary, kind, num, den):
    out = subprocess.run([binary, kind, str(num), str(den), str(N)], check=True, capture_output=True, text=True)
    return [int(line) for line in out.stdout.split()]


def opendp_draws(kind, scale):
    if kind == "gaussian":
        m = dp.m.make_gaussian(dp.vector_domain(dp.atom_domain(T=int)), dp.l2_distance(T=int), scale=scale)
    else:
        m = dp.m.make_laplace(dp.vector_domain(dp.atom_domain(T=int)), dp.l1_distance(T=int), scale=scale)
    return m([0] * N)


def main():
    binary = sys.argv[1]
    failed = 0
    cases = [("gaussian", 9, 1, 3.0), ("gaussian", 100, 1, 10.0), ("laplace", 5, 2, 2.5), ("laplace", 7, 1, 7.0)]
    for kind, num, den, scale in cases:
        chi, crit = homogeneity(concord(binary, kind, num, den), opendp_draws(kind, scale))
        ok = chi < crit
        failed += not ok
        print(f"{kind} scale {scale}: chi-square {chi:.1f}, critical {crit:.1f}: {'same distribution' if ok else 'DIFFERENT'}")
    print(f"opendp comparison: {len(cases) - failed} passed; {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
