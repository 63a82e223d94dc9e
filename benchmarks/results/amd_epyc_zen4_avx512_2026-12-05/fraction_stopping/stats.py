"""Errors of the fraction's sums against the long-double series (relative to sum_n c_n |da_n| and
sum_n c_n |db_n|, the terms' magnitudes) and block counts against eedae65's, per build and tolerance."""
import numpy as np


def load(fn):
    return [line.split() for line in open(fn)]


R = load('ref.txt')
old = load('old.txt')
for fn in ['old.txt', 'new.txt', 'new_fix.txt']:
    rows = load(fn)
    for ti, tn in ((0, '1e-11'), (1, '1e-9')):
        base = 6 + 10 * ti
        ea, eb, ea1 = [], [], []
        earlier = {"both": 0, "da only": 0, "db only": 0}
        later = dict(earlier)
        for row, r, o in zip(rows, R, old):
            rsa, rsb, sza, szb = float(r[2]), float(r[3]), float(r[4]), float(r[5])
            ea.append(abs(float(row[base + 1]) - rsa) / sza)
            eb.append(abs(float(row[base + 2]) - rsb) / szb)
            ea1.append(abs(float(row[base + 7]) - rsa) / sza)
            for name, k in (("both", base), ("da only", base + 6), ("db only", base + 8)):
                d = int(row[k]) - int(o[k])
                earlier[name] += d < 0
                later[name] += d > 0
        ea, eb, ea1 = map(np.array, (ea, eb, ea1))
        print(f"{fn:12s} tol {tn}: sum_a median {np.median(ea):.2g} p99 {np.percentile(ea, 99):.2g} max {ea.max():.3g}"
              f" | da only: median {np.median(ea1):.2g} p99 {np.percentile(ea1, 99):.2g} max {ea1.max():.3g}"
              f" | sum_b max {eb.max():.3g} | points stopping earlier than old.txt {earlier}, later {later}")
