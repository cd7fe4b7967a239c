#!/usr/bin/python3
"""Step time and scaling efficiency of latent-sharded training (msae under mpirun) against data parallelism,
modelled from one measured `mpirun -np 2 msae bench --json` run (docs/distributed.md).

From the measurement (one core per process, P0 processes):
  c_lat   seconds per latent per step of the work that scales with the shard (encoder GEMM, selection
          pass, latent pass, update): (step - rows) / (D/P0);
  t_rows  seconds of the per-row work of the whole batch (partial prefix sums, losses, suffix sums,
          b_dec's gradient, grad z), which the processes divide by rows: (rows - exchange) x P0 (the
          exchange time is counted in the rows phase; an upper bound);
  what stays replicated (x - b_dec over (B, d), the cut's decisions) is left out (under 1% at P0 = 2).
Both scale with B d: measured at the shape of the run, used at d = 2304, B = 4096.
Communication per step and process (ring-like sums: 2 (P-1)/P of the data sent):
  latent-sharded: the (G, B, d) prefix sums, the (d + 1) b_dec gradient and norm, three histograms of
                  the BatchTopK cut (4097 + 4096 + 256 counts); with AuxK active also the (B, d) AuxK
                  decode and the per-row cut (candidates 8 B k_aux (P-1) bytes or four (B, 256) histograms,
                  whichever is smaller)
  data-parallel:  the gradients of W_enc, W_dec (2 D d floats) and b_dec (each process computes B/P rows)
Network: bandwidth BW bytes/s per process, latency ALPHA per message, P - 1 messages per sum.
Usage: bench/distributed_model.py MEASURED.json [--bandwidth-gbit 100] [--latency-us 5] [--auxk]
"""
import argparse
import json


def comm_seconds(nbytes_sum, nbytes_other, calls, P, bw, alpha):
    sent = 2.0 * (P - 1) / P * nbytes_sum + nbytes_other
    return sent / bw + alpha * (P - 1) * calls, sent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("measured")
    ap.add_argument("--bandwidth-gbit", type=float, default=100.0)
    ap.add_argument("--latency-us", type=float, default=5.0)
    ap.add_argument("--auxk", action="store_true", help="AuxK active every step (k_aux 512)")
    a = ap.parse_args()
    m = json.load(open(a.measured))
    ph = m["phases_s"]
    Dl, d0, B0 = m["latents_per_process"], m["d_in"], m["batch"]
    G = len(m["groups"])
    k = m["k"]
    P0 = m.get("processes", 1)
    t_rows0 = max(ph["rows"] - ph.get("exchange", 0.0), 0.0) * P0
    c_lat0 = (m["step_s"] - ph["rows"]) / Dl
    bw = a.bandwidth_gbit * 1e9 / 8
    alpha = a.latency_us * 1e-6
    d, B = 2304, 4096
    scale = (B * d) / (B0 * d0)
    c_lat, t_rows = c_lat0 * scale, t_rows0 * scale
    print(f"measured: {a.measured}: d={d0} D/P={Dl} B={B0}, step {m['step_s']:.3f} s, rows {ph['rows']:.3f} s, "
          f"exchange {ph.get('exchange', 0):.3f} s -> c_lat {c_lat0 * 1e6:.2f} us/latent, t_rows {t_rows0:.3f} s; "
          f"model at d={d} B={B}: c_lat {c_lat * 1e6:.2f} us/latent, t_rows {t_rows:.3f} s; network "
          f"{a.bandwidth_gbit:g} Gb/s, {a.latency_us:g} us per message{', AuxK active' if a.auxk else ''}")
    print()
    print("| D | P | latent-sharded: compute s | comm s (MB sent) | step s | efficiency | "
          "data-parallel: comm s (MB sent) | step s | efficiency |")
    print("|---|---|---|---|---|---|---|---|---|")
    for D in (65536, 262144):
        t1 = c_lat * D + t_rows
        for P in (8, 32, 128):
            comp = (c_lat * D + t_rows) / P
            sums = 4 * (G * B * d + (d + 1) * 2) + 8 * (4097 + 4096 + 256)
            other, calls = 0.0, 6
            if a.auxk:
                sums += 4 * B * d
                cand = 8 * B * 512 * (P - 1)
                hist = 4 * 2 * (P - 1) / P * B * 256 * 8
                other += min(cand, hist)
                calls += 5
            tc, sent = comm_seconds(sums, other, calls, P, bw, alpha)
            step = comp + tc
            dp_comp = t1 / P
            dp_tc, dp_sent = comm_seconds(4 * (2 * D * d + d), 0.0, 1, P, bw, alpha)
            dp_step = dp_comp + dp_tc
            print(f"| {D} | {P} | {comp:.3f} | {tc:.3f} ({sent / 1e6:.0f}) | {step:.3f} | {t1 / (P * step):.0%} | "
                  f"{dp_tc:.3f} ({dp_sent / 1e6:.0f}) | {dp_step:.3f} | {t1 / (P * dp_step):.0%} |")
    print()
    print("one process, one core: D=65536 %.2f s, D=262144 %.2f s per step" % (c_lat * 65536 + t_rows, c_lat * 262144 + t_rows))


if __name__ == "__main__":
    main()
