#!/usr/bin/env bash
# Makes the report screenshots in Docs/ and the README's learning curve from three runs:
#   1. the default run under mpirun (bash Launch/run.sh): Docs/report-online.png and
#      Docs/learning-curve.svg;
#   2. offline training on a reversal data set: Docs/report-offline.png;
#   3. a run with evaluation off, killed in the middle and resumed: Docs/report-resumed.png.
# Needs Debian's chromium (apt-get install chromium) for the headless screenshots.
#   bash Benchmarks/report-screenshots.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-/tmp/kat-report-runs}"
rm -rf "$OUT"; mkdir -p "$OUT"
K=.build/release/kat-dist

bash Launch/run.sh --run-dir "$OUT/online" | tee "$OUT/online.log"
.build/release/kat-bench curve "$OUT/online" Docs/learning-curve.svg "Default run (bash Launch/run.sh), 1 trainer + 1 rollout rank"

python3 - "$OUT/reversal.jsonl" <<'PY'
import json, random, sys
r = random.Random(1)
with open(sys.argv[1], "w") as f:
    for i in range(2048):
        w = [97 + r.randrange(6) for _ in range(5)]
        toks = [256] + w + [258] + w[::-1] + [257]
        f.write(json.dumps({"id": f"r{i}", "group": f"g{i // 4}", "tokens": toks, "prompt_len": 7, "advantage": 1.0}) + "\n")
PY
"$K" train --run-dir "$OUT/offline" --set data.trajectories="$OUT/reversal.jsonl" --set advantage.estimator=given \
    --set model.n_positions=64 --set model.n_embd=64 --set model.n_layer=2 --set model.n_head=4 \
    --set optimizer.lr=3e-3 --set optimizer.warmup_steps=10 --set steps=150 --set check.flat_every=10 | tee "$OUT/offline.log"

RESUMED=(--run-dir "$OUT/resumed" --set warmstart.steps=150 --set steps=150 --set eval.every=0 --set checkpoint.every=25)
KAT_FAULT_KILL_AT=240:0 bash Launch/run.sh "${RESUMED[@]}" > "$OUT/resumed-killed.log" 2>&1 || true
bash Launch/run.sh "${RESUMED[@]}" --resume auto | tee "$OUT/resumed.log"

for run in online offline resumed; do
    chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1200,2400 \
        --screenshot="Docs/report-$run.png" "file://$OUT/$run/report.html" 2>/dev/null
done
echo "report-screenshots: Docs/report-{online,offline,resumed}.png and Docs/learning-curve.svg from $OUT"
