#!/usr/bin/env python3
"""Checks that a kat-dist model directory opens in transformers unchanged and gives the
log-probs kat-dist gives (run by hand; needs torch and transformers).

    python3 Tests/KATModelTests/Fixtures/check_transformers_load.py MODEL_DIR LOGPROBS_IN.jsonl LOGPROBS_OUT.jsonl

LOGPROBS_OUT is `kat-dist logprobs --model MODEL_DIR --input LOGPROBS_IN` at temperature 1.
"""
import json, sys
import torch
from transformers import GPT2LMHeadModel

model_dir, inp, out = sys.argv[1:4]
model = GPT2LMHeadModel.from_pretrained(model_dir).eval()
worst = 0.0
with open(inp) as fi, open(out) as fo:
    for a, b in zip(fi, fo):
        toks = json.loads(a)["tokens"]
        ours = json.loads(b)["logprobs"]
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([toks])).logits[0], -1)
        for t in range(1, len(toks)):
            worst = max(worst, abs(lp[t - 1, toks[t]].item() - ours[t]))
print(f"loaded {model_dir} in transformers; largest log-prob difference {worst:.2e}")
sys.exit(0 if worst < 1e-3 else 1)
