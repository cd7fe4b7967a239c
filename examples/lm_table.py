#!/usr/bin/env -S /usr/bin/python3
"""Markdown table of examples/lm_pipeline.sh's results (docs/lm.md): per SAE and Matryoshka prefix,
L0, FVU and CE recovered on the held-out text, and first-letter absorption.

    /usr/bin/python3 examples/lm_table.py OUT_DIR
"""
import json
import os
import sys

out = sys.argv[1]
ab = json.load(open(os.path.join(out, "absorption.json")))
by_sae = {os.path.basename(s["sae"].rstrip("/")): s for s in ab["saes"]}
probe = ab["probe"]
first = None
rows = []
for arch in ("matryoshka", "batchtopk"):
    ce = json.load(open(os.path.join(out, f"ce_{arch}.json")))
    first = first or ce
    a = {p["prefix"]: p for p in by_sae[arch]["prefixes"]}
    for p in ce["prefixes"]:
        q = a.get(p["prefix"], {})
        rows.append(f"| {arch} | {p['prefix']} | {p['l0']:.1f} | {p['fvu']:.3f} | {p['ce_spliced']:.3f} | "
                    f"{p['ce_recovered']:.3f} | {q.get('mean_absorption_fraction', float('nan')):.3f} | "
                    f"{q.get('mean_full_absorption_rate', float('nan')):.3f} | {q.get('mean_num_split_features', float('nan')):.2f} |")
print(f"Model {first['model']}, hook blocks.{first['layer']}.hook_{first['site']}; "
      f"{first['tokens_scored']} held-out tokens scored: CE clean {first['ce_clean']:.3f}, "
      f"zero-ablated {first['ce_ablated']:.3f}.")
print(f"First-letter probes: held-out mean F1 {probe['mean_f1']:.3f}, 26-way accuracy {probe['top1_accuracy']:.3f} "
      f"(majority class {probe['majority_class_accuracy']:.3f}); {ab['test_words']} held-out words"
      + (" - too weak for the absorption figures to mean much." if probe["weak"] else "."))
print()
print("| SAE | prefix (latents) | L0 | FVU | CE spliced | CE recovered | absorption fraction | full absorption | split latents |")
print("|---|---|---|---|---|---|---|---|---|")
print("\n".join(rows))
