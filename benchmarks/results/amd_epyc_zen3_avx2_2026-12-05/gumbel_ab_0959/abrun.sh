#!/bin/bash
# A/B of two builds in alternating processes (the results README, "Later the same day").
# usage: abrun.sh N THREADS CASES OLDPATH NEWPATH   (CASES: L:log2,... ; *PATH: a folder holding the rtrick_ops package)
# CASE picks the case script (default abcase.py beside this file), PYTHON the interpreter (default python3); the raw lines go to OUT (default the current folder):
# ab_old.txt and ab_new.txt. The session ran it with the scripts under /tmp/prof and the main checkout's .venv.
N=$1; T=$2; C=$3; O=$4; NW=$5
HERE=$(cd "$(dirname "$0")" && pwd); PY=${PYTHON:-python3}; OUT=${OUT:-.}
rm -f "$OUT/ab_old.txt" "$OUT/ab_new.txt"
for i in $(seq "$N"); do
  PYTHONPATH=$O "$PY" "${CASE:-$HERE/abcase.py}" "$T" "$C" >> "$OUT/ab_old.txt"
  PYTHONPATH=$NW "$PY" "${CASE:-$HERE/abcase.py}" "$T" "$C" >> "$OUT/ab_new.txt"
done
OUT=$OUT python3 - <<'PY'
import collections, os, statistics as st
def load(f):
    d = collections.defaultdict(lambda: ([], [], []))
    for line in open(f):
        k, a, b, c = line.split(); d[k][0].append(float(a)); d[k][1].append(float(b)); d[k][2].append(float(c))
    return d
out = os.environ["OUT"]
o, n = load(os.path.join(out, "ab_old.txt")), load(os.path.join(out, "ab_new.txt"))
for k in o:
    of, ob, oe = (st.median(v) for v in o[k]); nf, nb, ne = (st.median(v) for v in n[k])
    print(f"{k:10s} fwd {of:7.2f} -> {nf:7.2f}  full {ob:7.2f} -> {nb:7.2f}  x eager {oe/ob:5.2f} -> {ne/nb:5.2f}   (runs {len(o[k][0])})")
PY
