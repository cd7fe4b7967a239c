#!/usr/bin/env python3
"""The scaling table of docs/performance.md: msae bench --json over D, k, B, threads, AuxK and the
Gemma-2-2B shape; prints a markdown table (step, encoder GEMM alone, ratio, tokens/s, phases, peak RSS).

    python3 bench/sweep.py --msae build/msae [--quick]
"""
import argparse
import json
import subprocess

ROWS = [
    # label, options
    ("default", []),
    ("threads 1", ["--threads", "1"]),
    ("AuxK, 10% dead (trained-like)", ["--dead-fraction", "0.1"]),
    ("AuxK, 10% dead (rows x0.3)", ["--dead-fraction", "0.1", "--dead-positive", "-1"]),
    ("D=4096 threads 1", ["--d-sae", "4096", "--threads", "1"]),
    ("D=4096", ["--d-sae", "4096"]),
    ("D=8192", ["--d-sae", "8192"]),
    ("D=32768", ["--d-sae", "32768"]),
    ("D=65536", ["--d-sae", "65536"]),
    ("k=8", ["--k", "8"]),
    ("k=16", ["--k", "16"]),
    ("k=64", ["--k", "64"]),
    ("k=128", ["--k", "128"]),
    ("B=1024", ["--batch", "1024"]),
    ("B=2048", ["--batch", "2048"]),
    ("B=8192", ["--batch", "8192"]),
    ("Gemma d=2304 D=36864", ["--d-in", "2304", "--d-sae", "36864"]),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--msae", default="build/msae")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--only", nargs="*", help="labels to run")
    a = ap.parse_args()
    print("| config | d | D | k | B | thr | step ms | enc GEMM ms | step/GEMM | tokens/s | select | rows | latents | auxk sel | update | peak RSS MiB | AuxK extra |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, opts in ROWS:
        if a.only and label not in a.only:
            continue
        out = subprocess.run([a.msae, "bench", "--json", "--steps", str(a.steps), "--warmup", str(a.warmup)] + opts,
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out)
        p = r["phases_s"]
        print("| %s | %d | %d | %d | %d | %d | %.0f | %.0f | %.2f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %s |" % (
            label, r["d_in"], r["d_sae"], r["k"], r["batch"], r["threads"], 1e3 * r["step_s"],
            1e3 * r["encoder_gemm_s"], r["step_over_gemm"], r["tokens_per_s"], 1e3 * p.get("select", 0),
            1e3 * p.get("rows", 0), 1e3 * p.get("latents", 0), 1e3 * p.get("auxk_select", 0),
            1e3 * p.get("update", 0), r["peak_rss_bytes"] / 2 ** 20,
            "%+.0f%% (%.0f/row)" % (100 * r["auxk_overhead"], r["aux_entries_per_row_last_step"])
            if r.get("dead_fraction") else "-"), flush=True)


if __name__ == "__main__":
    main()
