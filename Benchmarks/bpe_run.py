#!/usr/bin/env python3
"""An RL run from a GPT-2 directory with a byte-level BPE tokenizer (run by hand).

    pip install numpy safetensors
    swift build -c release
    python3 Benchmarks/bpe_run.py [--seed N] [--set key=value ...]

Makes a GPT-2 directory of randomly initialised weights (normal 0.02, residual projections
scaled by 1/sqrt(2 L), as GPT-2's initialisation) whose tokenizer is the 300-id BPE of
Tests/KATEnvTests/Fixtures/tokenizers/task (trained by Hugging Face `tokenizers` on the built-in
tasks' text), then runs `kat-dist train` from it on the code task in one process, in the
default run's shape (n_embd 128, 4 layers, 4 heads, 128 positions) and settings, and prints
the held-out success of every evaluation and the wall time. Extra --set options go to kat-dist.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from safetensors.numpy import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(ROOT, "Tests", "KATEnvTests", "Fixtures", "tokenizers", "task")
KAT = os.path.join(ROOT, ".build", "release", "kat-dist")


def gpt2_directory(path, V=300, P=128, C=128, L=4, NH=4, seed=0):
    os.makedirs(path)
    cfg = json.load(open(os.path.join(TOKENIZER, "config.json")))
    cfg.update({"architectures": ["GPT2LMHeadModel"], "vocab_size": V, "n_positions": P, "n_embd": C, "n_layer": L,
                "n_head": NH, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True})
    json.dump(cfg, open(os.path.join(path, "config.json"), "w"), indent=2)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(TOKENIZER, f), path)
    r = np.random.default_rng(seed)
    n = lambda *s: r.normal(0, 0.02, s)
    t = {"transformer.wte.weight": n(V, C), "transformer.wpe.weight": r.normal(0, 0.01, (P, C)),
         "transformer.ln_f.weight": np.ones(C), "transformer.ln_f.bias": np.zeros(C)}
    for i in range(L):
        h = f"transformer.h.{i}."
        t.update({h + "ln_1.weight": np.ones(C), h + "ln_1.bias": np.zeros(C), h + "ln_2.weight": np.ones(C),
                  h + "ln_2.bias": np.zeros(C), h + "attn.c_attn.weight": n(C, 3 * C), h + "attn.c_attn.bias": np.zeros(3 * C),
                  h + "attn.c_proj.weight": n(C, C) / np.sqrt(2 * L), h + "attn.c_proj.bias": np.zeros(C),
                  h + "mlp.c_fc.weight": n(C, 4 * C), h + "mlp.c_fc.bias": np.zeros(4 * C),
                  h + "mlp.c_proj.weight": n(4 * C, C) / np.sqrt(2 * L), h + "mlp.c_proj.bias": np.zeros(C)})
    save_file({k: v.astype(np.float32) for k, v in t.items()}, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})


def main():
    args = sys.argv[1:]
    seed = 0
    if "--seed" in args:
        k = args.index("--seed")
        seed = int(args[k + 1])
        del args[k:k + 2]
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "gpt2-bpe")
        gpt2_directory(model, seed=seed)
        run = os.path.join(tmp, "run")
        t0 = time.time()
        subprocess.run([KAT, "train", "--run-dir", run, "--set", "model.init=" + model, "--set", f"seed={seed + 1}"] + args,
                       check=True, stdout=subprocess.DEVNULL)
        wall = time.time() - t0
        evals = [(m["step"], m["phase"], m["eval_success"]) for m in map(json.loads, open(os.path.join(run, "metrics.jsonl")))
                 if "eval_success" in m]
        for step, phase, e in evals:
            print(f"step {step:4d}  {phase:9s}  held-out success {e:.3f}")
        print(f"wall time {wall:.0f} s")


if __name__ == "__main__":
    main()
