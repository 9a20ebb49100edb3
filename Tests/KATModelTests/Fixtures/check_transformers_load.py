#!/usr/bin/env python3
"""Checks that a kat-dist model directory (GPT-2, Llama or Qwen2) opens in transformers
unchanged and gives the log-probs kat-dist gives (run by hand; needs torch and transformers).

    python3 Tests/KATModelTests/Fixtures/check_transformers_load.py MODEL_DIR LOGPROBS_IN.jsonl LOGPROBS_OUT.jsonl

LOGPROBS_OUT is `kat-dist logprobs --model MODEL_DIR --input LOGPROBS_IN` at temperature 1.
The model is opened with AutoModelForCausalLM, so config.json's model_type and
architectures decide the class, as for any Hugging Face checkpoint.
"""
import json, sys
import torch
from transformers import AutoModelForCausalLM

model_dir, inp, out = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
worst = 0.0
lines = 0
with open(inp) as fi, open(out) as fo:
    for a, b in zip(fi, fo):
        toks = json.loads(a)["tokens"]
        ours = json.loads(b)["logprobs"]
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([toks])).logits[0].float(), -1)
        for t in range(1, len(toks)):
            worst = max(worst, abs(lp[t - 1, toks[t]].item() - ours[t]))
        lines += 1
print(f"loaded {model_dir} in transformers as {type(model).__name__} ({model.dtype}); "
      f"{lines} sequences; largest log-prob difference {worst:.2e}")
sys.exit(0 if worst < 1e-3 and lines > 0 else 1)
