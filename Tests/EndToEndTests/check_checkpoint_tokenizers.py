#!/usr/bin/env python3
"""Checks that kat-dist checkpoints carry a tokenizer transformers reads with kat-dist's ids
(run by hand, not in CI).

    pip install numpy safetensors transformers tokenizers
    swift build -c release
    python3 Tests/EndToEndTests/check_checkpoint_tokenizers.py [path/to/kat-dist]

Trains three tiny runs with kat-dist: one from scratch (the byte tokenizer), and two from
GPT-2 directories of random weights with the BPE tokenizers of Tests/KATEnvTests/Fixtures
(GPT-2's split pattern; a Qwen2-style Split pattern with NFC). For the last checkpoint of
each, `transformers.AutoTokenizer.from_pretrained(checkpoint)` must encode every line of the
awkward corpus to the ids of the tokenizer the run trained with (`kat-dist tokenize` on the
directory the run started from), decode them to the same text, and name the same special ids.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from safetensors.numpy import save_file
from transformers import AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "Tests", "KATEnvTests", "Fixtures", "tokenizers")
KAT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, ".build", "release", "kat-dist")
SMALL = ["--set", "model.n_embd=32", "--set", "model.n_layer=1", "--set", "model.n_head=2", "--set", "warmstart.steps=2",
         "--set", "steps=1", "--set", "eval.every=0", "--set", "batch.prompts=2", "--set", "rollout.group_size=2",
         "--set", "rollout.max_new_tokens=6"]


def gpt2_directory(path, tokenizer):
    """Random GPT-2 weights (V from the tokenizer's config, P=64, C=32, L=1) and the fixture's files."""
    src = os.path.join(FIXTURES, tokenizer)
    cfg = json.load(open(os.path.join(src, "config.json")))
    V, P, C = cfg["vocab_size"], 64, 32
    cfg.update({"n_positions": P, "n_embd": C, "n_layer": 1, "n_head": 2, "architectures": ["GPT2LMHeadModel"],
                "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True})
    os.makedirs(path)
    json.dump(cfg, open(os.path.join(path, "config.json"), "w"))
    for f in os.listdir(src):
        if f != "config.json":
            open(os.path.join(path, f), "wb").write(open(os.path.join(src, f), "rb").read())
    r = np.random.default_rng(0)
    h = "transformer.h.0."
    t = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (P, C), "transformer.ln_f.weight": (C,),
         "transformer.ln_f.bias": (C,), h + "ln_1.weight": (C,), h + "ln_1.bias": (C,), h + "ln_2.weight": (C,),
         h + "ln_2.bias": (C,), h + "attn.c_attn.weight": (C, 3 * C), h + "attn.c_attn.bias": (3 * C,),
         h + "attn.c_proj.weight": (C, C), h + "attn.c_proj.bias": (C,), h + "mlp.c_fc.weight": (C, 4 * C),
         h + "mlp.c_fc.bias": (4 * C,), h + "mlp.c_proj.weight": (4 * C, C), h + "mlp.c_proj.bias": (C,)}
    save_file({k: r.normal(0, 0.02, s).astype(np.float32) for k, s in t.items()}, os.path.join(path, "model.safetensors"),
              metadata={"format": "pt"})


def train(run, extra):
    subprocess.run([KAT, "train", "--run-dir", run] + SMALL + extra, check=True, stdout=subprocess.DEVNULL)
    names = sorted(n for n in os.listdir(os.path.join(run, "checkpoints")) if n.startswith("step-"))
    return os.path.join(run, "checkpoints", names[-1])


def kat_tokenize(model, lines, decode=False):
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for l in lines:
            f.write(json.dumps(l) + "\n")
    out = subprocess.run([KAT, "tokenize", "--model", model, "--input", f.name] + (["--decode"] if decode else []),
                         check=True, capture_output=True, text=True).stdout
    os.unlink(f.name)
    return [json.loads(l) for l in out.split("\n") if l]  # not splitlines: U+0085 and U+2028 are raw in JSON


def check(ckpt, source, corpus, specials):
    """The checkpoint's tokenizer, read by transformers and by kat-dist, gives the ids and text
    of the tokenizer the run trained with (that of `source`, the model directory it started from)."""
    auto = AutoTokenizer.from_pretrained(ckpt)
    ours = [l["tokens"] for l in kat_tokenize(source, [{"text": t} for t in corpus])]
    texts = [l["text"] for l in kat_tokenize(source, [{"tokens": ids} for ids in ours], decode=True)]
    again = [l["tokens"] for l in kat_tokenize(ckpt, [{"text": t} for t in corpus])]
    for text, ids, back, ids2 in zip(corpus, ours, texts, again):
        got = auto.encode(text, add_special_tokens=False)
        assert got == ids, (ckpt, text, got, ids)
        assert ids2 == ids, (ckpt, text, ids2, ids)
        assert auto.decode(ids) == back, (ckpt, text, auto.decode(ids), back)
    for name, want in specials.items():
        got = getattr(auto, name + "_token_id")
        assert got == want, (ckpt, name, got, want)
    print(f"{ckpt}: {type(auto).__name__}, {len(auto)} ids, {len(corpus)} lines encode and decode as the run's tokenizer; "
          f"specials {specials}")


def main():
    corpus = [json.loads(l)["text"] for l in open(os.path.join(FIXTURES, "corpus.jsonl"))]
    corpus += ["<|bos|><|eos|><|sep|><|pad|> are text to the byte tokenizer", "\x00\x01\x7f\u00ff"]
    with tempfile.TemporaryDirectory() as tmp:
        byte = train(os.path.join(tmp, "byte"), [])
        # A directory without tokenizer files: kat-dist's byte tokenizer, as the run used.
        plain = os.path.join(tmp, "plain")
        os.makedirs(plain)
        json.dump({"vocab_size": 260}, open(os.path.join(plain, "config.json"), "w"))
        check(byte, plain, corpus, {"bos": 256, "eos": 257, "sep": 258, "pad": 259})
        for name in ("task", "qwen2"):
            model = os.path.join(tmp, name + "-model")
            gpt2_directory(model, name)
            ckpt = train(os.path.join(tmp, name), ["--set", "model.init=" + model])
            # GPT-2 style: <|endoftext|> (id 0) is BOS and EOS. Qwen2 style: the tokenizer's
            # eos_token is <|im_end|>, config.json's eos_token_id (which kat-dist uses) <|endoftext|>.
            check(ckpt, model, corpus, {"bos": 0, "eos": 0} if name == "task" else {"eos": 2, "pad": 0})
    print("every checkpoint's tokenizer agrees with kat-dist")


if __name__ == "__main__":
    main()
