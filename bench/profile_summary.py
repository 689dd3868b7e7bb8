# Usage: profile_summary.py A.log.xz B.log.xz STEPS  (per-step difference of two decode profiles)
#        profile_summary.py A.log.xz                 (one profile, kernel families by GPU time)
import re, sys, lzma, collections
pat = re.compile(r'^\| ([0-9.]+)(ns|µs|ms|s) +\| (.+?)\s*$')
unit = {'ns':1e-3,'µs':1.0,'ms':1e3,'s':1e6}
def load(path):
    cnt = collections.Counter(); tim = collections.Counter(); n=0
    for line in lzma.open(path, 'rt', errors='replace'):
        m = pat.match(line)
        if not m: continue
        name = m.group(3)
        if name.startswith('Name') or 'Duration' in name: continue
        fam = re.sub(r'_[0-9a-f]{8}$', '', name.split(' | ')[0])
        cnt[fam] += 1; tim[fam] += float(m.group(1))*unit[m.group(2)]; n+=1
    return cnt, tim, n
if len(sys.argv) == 2:
    # One profile: every kernel family by total GPU time (e.g. the vision stages).
    cnt, tim, n = load(sys.argv[1])
    print(f"{n} kernels, {sum(tim.values())/1e3:.1f} ms GPU")
    for f, t in tim.most_common(30):
        print(f"{f:60s} {cnt[f]:7d} kernels {t/1e3:9.2f} ms")
    sys.exit(0)
a = load(sys.argv[1]); b = load(sys.argv[2]); steps = int(sys.argv[3])
print("kernel lines", a[2], b[2], "per step", (b[2]-a[2])/steps)
fams = set(a[0])|set(b[0])
rows = []
for f in fams:
    dc = (b[0][f]-a[0][f])/steps; dt = (b[1][f]-a[1][f])/steps
    rows.append((dt, dc, f))
rows.sort(reverse=True)
tot_c = sum(r[1] for r in rows); tot_t = sum(r[0] for r in rows)
print(f"per step: {tot_c:.1f} kernels, {tot_t:.1f} µs GPU")
for dt, dc, f in rows[:25]:
    print(f"{f:45s} {dc:7.1f} kernels {dt:9.1f} µs")
