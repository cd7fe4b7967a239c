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
# The absorption figures restricted to letters whose probe reaches --min-probe-f1 (SAEBench's min_GT_probe_f1).
print()
print("| SAE | prefix | letters with a good probe | absorption fraction (good probes) | full absorption (good probes) |")
print("|---|---|---|---|---|")
fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
for arch in ("matryoshka", "batchtopk"):
    for q in by_sae[arch]["prefixes"]:
        print(f"| {arch} | {q['prefix']} | {q['letters_with_good_probe']} | {fmt(q['mean_absorption_fraction_good_probe'])} | "
              f"{fmt(q['mean_full_absorption_rate_good_probe'])} |")
# The probes, per letter (held-out words).
print()
print("| letter | held-out positives | F1 | precision | recall | accuracy |")
print("|---|---|---|---|---|---|")
for q in probe["per_letter"]:
    print(f"| {q['letter']} | {q['test_positives']} | {q['f1']:.3f} | {q['precision']:.3f} | {q['recall']:.3f} | {q['accuracy']:.3f} |")
