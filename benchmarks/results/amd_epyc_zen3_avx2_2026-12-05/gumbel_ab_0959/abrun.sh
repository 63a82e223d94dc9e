#!/bin/bash
# usage: abrun.sh N THREADS CASES OLDPATH NEWPATH
N=$1; T=$2; C=$3; O=$4; NW=$5
rm -f /tmp/prof/ab_old.txt /tmp/prof/ab_new.txt
for i in $(seq $N); do
  PYTHONPATH=$O /work/main/.venv/bin/python /tmp/prof/abcase.py $T $C >> /tmp/prof/ab_old.txt
  PYTHONPATH=$NW /work/main/.venv/bin/python /tmp/prof/abcase.py $T $C >> /tmp/prof/ab_new.txt
done
python3 - <<'PY'
import statistics as st, collections
def load(f):
    d = collections.defaultdict(lambda: ([], [], []))
    for line in open(f):
        k, a, b, c = line.split(); d[k][0].append(float(a)); d[k][1].append(float(b)); d[k][2].append(float(c))
    return d
o, n = load('/tmp/prof/ab_old.txt'), load('/tmp/prof/ab_new.txt')
for k in o:
    of, ob, oe = (st.median(v) for v in o[k]); nf, nb, ne = (st.median(v) for v in n[k])
    print(f"{k:10s} fwd {of:7.2f} -> {nf:7.2f}  full {ob:7.2f} -> {nb:7.2f}  x eager {oe/ob:5.2f} -> {ne/nb:5.2f}   (runs {len(o[k][0])})")
PY
