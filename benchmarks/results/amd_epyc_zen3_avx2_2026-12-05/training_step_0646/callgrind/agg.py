"""Per-step counts of step_cache.py's callgrind runs, eager against rtrick_ops, summed by library and by
function (callgrind_annotate's table). Reads cg.eager.out and cg.rtrick_ops.out (callgrind's output files, 1 MB
each, not committed) from the working directory."""
import re, subprocess, sys, collections
def load(f):
    out = subprocess.run(["callgrind_annotate", "--show=Ir,I1mr,ILmr,DLmr", "--sort=ILmr", "--threshold=100", "--auto=no", f], capture_output=True, text=True).stdout
    agg = collections.defaultdict(lambda: [0,0,0,0]); funcs = {}
    for line in out.splitlines():
        m = re.match(r'\s*([\d,]+) \([^)]*\)\s+([\d,]+|\.)(?: \([^)]*\))?\s+([\d,]+|\.)(?: \([^)]*\))?\s+([\d,]+|\.)(?: \([^)]*\))?\s+(.*)$', line)
        if not m: continue
        vals = [0 if v == '.' else int(v.replace(',', '')) for v in m.groups()[:4]]
        name = m.group(5)
        if 'PROGRAM TOTALS' in name: continue
        if '/work/main/csrc' in name or 'rtrick' in name: obj = 'rtrick_ops _C'
        elif 'libtorch_cpu' in name or 'at::' in name or 'c10::' in name or 'torch::' in name or 'mkl' in name: obj = 'torch'
        elif 'Python-3.11' in name or 'python' in name.lower(): obj = 'python'
        elif 'libc' in name or 'glibc' in name or 'malloc' in name: obj = 'libc'
        else: obj = 'other'
        for i in range(4): agg[obj][i] += vals[i]
        funcs[name] = vals
    return agg, funcs
ae, fe = load("cg.eager.out"); ar, fr = load("cg.rtrick_ops.out")
print(f"{'per step':14s} {'Ir e':>9s} {'Ir rt':>9s} {'I1mr e':>7s} {'I1mr rt':>7s} {'ILmr e':>7s} {'ILmr rt':>7s} {'DLmr e':>7s} {'DLmr rt':>7s}")
for obj in sorted(set(ae) | set(ar)):
    e, r = ae[obj], ar[obj]
    print(f"{obj:14s} {e[0]/100:9.0f} {r[0]/100:9.0f} {e[1]/100:7.0f} {r[1]/100:7.0f} {e[2]/100:7.0f} {r[2]/100:7.0f} {e[3]/100:7.0f} {r[3]/100:7.0f}")
# functions with the biggest ILmr increase (rt - eager)
diff = sorted(((fr.get(k,[0]*4)[2]-fe.get(k,[0]*4)[2], k) for k in set(fe)|set(fr)), reverse=True)
print("largest ILmr increases per step:")
for d,k in diff[:25]: print(f"{d/100:8.1f}  {k[:150]}")
print("largest DLmr increases per step:")
diff = sorted(((fr.get(k,[0]*4)[3]-fe.get(k,[0]*4)[3], k) for k in set(fe)|set(fr)), reverse=True)
for d,k in diff[:15]: print(f"{d/100:8.1f}  {k[:150]}")
print("largest Ir increases per step:")
diff = sorted(((fr.get(k,[0]*4)[0]-fe.get(k,[0]*4)[0], k) for k in set(fe)|set(fr)), reverse=True)
for d,k in diff[:40]: print(f"{d/100:8.0f}  {k[:170]}")
