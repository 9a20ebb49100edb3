#!/usr/bin/env bash
# Entropy-aware advantage scaling on vs off on the default run, several seeds.
# Prints the held-out success after the warm start and at every evaluation of the RL phase.
#   bash Benchmarks/entropy-ablation.sh [seeds...]
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release >/dev/null
out=${OUT:-/tmp/kat-ablation}
rm -rf "$out"; mkdir -p "$out"
seeds=("${@:-1 2 3}")
for seed in ${seeds[@]}; do
  for scaling in true false; do
    .build/release/kat-dist train --run-dir "$out/seed$seed-$scaling" --set seed=$seed \
        --set advantage.entropy_scaling=$scaling --set steps=120 --set eval.every=20 > "$out/seed$seed-$scaling.log" 2>&1
    python3 - "$out/seed$seed-$scaling/metrics.jsonl" "$seed" "$scaling" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
ev = [(r["step"], r["eval_success"], r.get("phase")) for r in rows if "eval_success" in r]
warm = [e for s, e, p in ev if p == "warmstart"]
rl = [f"{e:.3f}" for s, e, p in ev if p == "rl"]
print(f"seed {sys.argv[2]} scaling {sys.argv[3]:5}: warm start {warm[0]:.3f} -> RL " + " ".join(rl))
PY
  done
done
