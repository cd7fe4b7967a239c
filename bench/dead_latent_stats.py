#!/usr/bin/python3
"""Pre-activation statistics of the dead latents of a trained SAE (an msae train output directory) on
its training data (.npy): the measurement behind `msae bench --dead-positive` (docs/performance.md,
"AuxK cost"). Dead = fired in none of the file's batches of 4096 rows.

    /usr/bin/python3 bench/dead_latent_stats.py SAE_DIR DATA.npy [k]
"""
import json, struct, sys
import numpy as np
sae, data = sys.argv[1], sys.argv[2]
k = int(sys.argv[3]) if len(sys.argv) > 3 else 32
with open(sae + '/sae_weights.safetensors', 'rb') as f:
    n = struct.unpack('<Q', f.read(8))[0]; hdr = json.loads(f.read(n)); base = 8 + n
    raw = f.read()
def T(name):
    h = hdr[name]; a, b = h['data_offsets']
    return np.frombuffer(raw[a:b], np.float32).reshape(h['shape'])
W_enc, b_dec = T('W_enc'), T('b_dec')
x = np.load(data, mmap_mode='r')
B = 4096; nb = x.shape[0] // B
D = W_enc.shape[1]
fired = np.zeros((nb, D), bool); pres = []
for b in range(nb):
    pre = (np.asarray(x[b*B:(b+1)*B]) - b_dec) @ W_enc
    flat = np.maximum(pre, 0).ravel()
    cut = np.partition(flat, flat.size - k*B)[flat.size - k*B]
    fired[b] = ((pre >= cut) & (pre > 0)).any(0)
    if b < 4: pres.append((pre, cut))
# dead as the trainer defines it, approximately: no firing in any of the nb (= %d) batches
dead = ~fired.any(0)
print('batches', nb, 'latents', D, 'dead (no firing in %d batches):' % nb, dead.sum(), '(%.1f%%)' % (100 * dead.mean()))
for pre, cut in pres[:2]:
    pd = pre[:, dead]
    pos = pd > 0
    per_row = pos.sum(1)
    print('cut %.4f | dead pre>0: %.4f of entries | positives per row: mean %.1f median %d p10 %d p90 %d max %d'
          % (cut, pos.mean(), per_row.mean(), np.median(per_row), np.percentile(per_row, 10), np.percentile(per_row, 90), per_row.max()))
    if pos.any():
        v = pd[pos] / cut
        print('  positive dead acts / cut: median %.3f p90 %.3f p99 %.3f max %.3f' % (np.median(v), np.percentile(v, 90), np.percentile(v, 99), v.max()))
    fr = pos.mean(0)
    print('  per-dead-latent positive fraction: quantiles 10/50/90/99%%: %s' % np.round(np.percentile(fr, [10, 50, 90, 99]), 4))
    alive = ~dead
    print('  alive latents pre>0: %.4f of entries' % (pre[:, alive] > 0).mean())
