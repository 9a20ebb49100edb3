#!/usr/bin/env python3
"""Writes the malformed-input corpus of kat-dist's tests (run by hand; its output is committed).

    python3 Tests/CLITests/Malformed/make_corpus.py

Each case is a file (or directory) under corpus/ plus a line of cases.tsv:
    name <TAB> command arguments (with {c} for corpus/ and {t} for a fresh temporary directory;
    arguments are separated by spaces, and U+2423 stands for a space inside one) <TAB> expected message fragment
Every case must end with a non-zero exit, one clear message containing the fragment, no
crash trace, and no damage to existing files.
"""
import hashlib, json, os, shutil, struct

here = os.path.dirname(os.path.abspath(__file__))
corpus = os.path.join(here, "corpus")
shutil.rmtree(corpus, ignore_errors=True)
os.makedirs(corpus)
cases = []

def write(name, text, mode="w"):
    path = os.path.join(corpus, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, mode) as f:
        f.write(text)
    return name

# --- configs (kat-dist train --config) ---
configs = [
    ("unknown-key", '{"optimizer": {"lrr": 0.1}}', "key optimizer.lrr: unknown key"),
    ("unknown-top", '{"stepz": 3}', "key stepz: unknown key"),
    ("not-json", '{"steps": 3', "not valid JSON"),
    ("array", '[1, 2]', "must be a JSON object"),
    ("steps-zero", '{"steps": 0}', "key steps: must be in"),
    ("steps-string", '{"steps": "ten"}', "key steps: must be an integer"),
    ("lr-negative", '{"optimizer": {"lr": -1}}', "key optimizer.lr: must be in"),
    ("betas-short", '{"optimizer": {"betas": [0.9]}}', "key optimizer.betas: must be two numbers"),
    ("mode-bad", '{"loss": {"mode": "mean"}}', "key loss.mode: must be one of"),
    ("bool-bad", '{"data": {"shuffle": "yes"}}', "key data.shuffle: must be true or false"),
    ("heads", '{"model": {"n_embd": 10, "n_head": 4}}', "key model.n_head: must divide model.n_embd"),
    ("two-sources", '{"data": {"task": "code", "trajectories": "x.jsonl"}}', "only one of data.task"),
    ("task-unknown", '{"data": {"task": "chess"}}', "not a built-in task"),
    ("entropy-bounds", '{"advantage": {"entropy_min": 3, "entropy_max": 1}}', "must not exceed advantage.entropy_max"),
    ("branch-points", '{"rollout": {"branch_points": [4, "x"]}}', "key rollout.branch_points: entries must be integers"),
    ("duplicate-key", '{"steps": 3, "steps": 4}', "duplicate key"),
]
for name, text, frag in configs:
    f = write(f"config/{name}.json", text)
    cases.append((f"config {name}", f"train --config {{c}}/{f} --run-dir {{t}}/run", frag))

# --- --set values ---
sets = [
    ("no-equals", "steps", "expected key=value"),
    ("unknown", "lr=0.1", "did you mean optimizer.lr"),
    ("range", "optimizer.grad_clip=-2", "key optimizer.grad_clip: must be in"),
    ("type", "batch.prompts=many", "key batch.prompts: must be an integer"),
    ("choice", "data.packing=zip", "key data.packing: must be one of"),
    ("seed", "seed=-1", "key seed: must be in"),
    ("ranks", "ranks.trainers=0", "key ranks.trainers: must be in"),
    ("temperature", "rollout.temperature=0", "key rollout.temperature: must be in"),
    ("rloo-alone", "advantage.estimator=rloo --set rollout.group_size=1", "key rollout.group_size: advantage.estimator rloo compares"),
    ("grpo-alone", "rollout.group_size=1", "key rollout.group_size: advantage.estimator grpo compares"),
    ("given-online", "advantage.estimator=given", "key advantage.estimator: given reads each trajectory's advantage field"),
]
for name, value, frag in sets:
    cases.append((f"--set {name}", f"train --set {value} --run-dir {{t}}/run", frag))

# --- trajectories JSONL (offline) ---
good = '{"id": "ok", "group": "g", "tokens": [256, 1, 2, 3], "prompt_len": 2, "advantage": 1.0}'
lines = [
    ("not-json", "{id: 1}", "not valid JSON"),
    ("not-object", "[256, 1]", "a line must be a JSON object"),
    ("no-id", '{"tokens": [256, 1], "prompt_len": 1, "advantage": 1}', "field id: missing"),
    ("id-type", '{"id": [1], "tokens": [256, 1], "prompt_len": 1, "advantage": 1}', "field id: must be a string or an integer"),
    ("no-tokens", '{"id": "a", "prompt_len": 1, "advantage": 1}', "field tokens: missing"),
    ("token-big", '{"id": "a", "tokens": [256, 999], "prompt_len": 1, "advantage": 1}', "field tokens: entry 1 = 999 is outside the vocabulary"),
    ("token-negative", '{"id": "a", "tokens": [-1, 2], "prompt_len": 1, "advantage": 1}', "field tokens: entry 0 = -1"),
    ("token-float", '{"id": "a", "tokens": [256, 1.5], "prompt_len": 1, "advantage": 1}', "field tokens: entry 1 must be an integer"),
    ("mask-length", '{"id": "a", "tokens": [256, 1, 2], "loss_mask": [0, 1], "advantage": 1}', "field loss_mask: has 2 entries but tokens has 3"),
    ("mask-first", '{"id": "a", "tokens": [256, 1], "loss_mask": [1, 1], "advantage": 1}', "field loss_mask: entry 0 must be 0"),
    ("mask-value", '{"id": "a", "tokens": [256, 1], "loss_mask": [0, 3], "advantage": 1}', "field loss_mask: entry 1 must be 0 or 1"),
    ("mask-and-prompt", '{"id": "a", "tokens": [256, 1], "loss_mask": [0, 1], "prompt_len": 1, "advantage": 1}', "field loss_mask: give either loss_mask or prompt_len"),
    ("too-long", '{"id": "a", "tokens": [' + ", ".join(["1"] * 200) + '], "prompt_len": 1, "advantage": 1}', "field tokens: has 200 tokens, more than n_positions"),
    ("logprob-positive", '{"id": "a", "tokens": [256, 1], "prompt_len": 1, "logprobs": [null, 0.3], "advantage": 1}', "field logprobs: entry 1 = 0.3 is above 0"),
    ("logprob-null", '{"id": "a", "tokens": [256, 1], "prompt_len": 1, "logprobs": [null, null], "advantage": 1}', "field logprobs: entry 1 is null"),
    ("logprob-length", '{"id": "a", "tokens": [256, 1, 2], "prompt_len": 1, "logprobs": [null, -1], "advantage": 1}', "field logprobs: has 2 entries"),
    ("infinite", '{"id": "a", "tokens": [256, 1], "prompt_len": 1, "advantage": 1e999}', "field advantage: must be finite"),
    ("advantage-missing", '{"id": "a", "tokens": [256, 1], "prompt_len": 1, "reward": 1}', "field advantage: missing"),
    ("duplicate-id", '{"id": "ok", "tokens": [256, 1], "prompt_len": 1, "advantage": 1}', "field id: \"ok\" appears on an earlier line"),
    ("empty-tokens", '{"id": "a", "tokens": [], "prompt_len": 1, "advantage": 1}', "field tokens: is empty"),
]
for name, line, frag in lines:
    f = write(f"trajectories/{name}.jsonl", good + "\n" + line + "\n")
    cases.append((f"trajectories {name}", f"train --set data.trajectories={{c}}/{f} --set advantage.estimator=given --set model.n_positions=64 --run-dir {{t}}/run", f":2: " + frag if name != "duplicate-id" else frag))
f = write("trajectories/empty.jsonl", "\n\n")
cases.append(("trajectories empty file", f"train --set data.trajectories={{c}}/{f} --set advantage.estimator=given --run-dir {{t}}/run", "no trajectories in the file"))
f = write("trajectories/rloo-alone.jsonl", '{"id": "a", "tokens": [256, 1], "prompt_len": 1, "reward": 1, "entropy": 1}\n')
cases.append(("trajectories rloo alone", f"train --set data.trajectories={{c}}/{f} --set advantage.estimator=rloo --run-dir {{t}}/run", "RLOO needs at least two"))
f = write("trajectories/entropy-missing.jsonl", '{"id": "a", "group": "g", "tokens": [256, 1], "prompt_len": 1, "reward": 1}\n')
cases.append(("trajectories entropy missing", f"train --set data.trajectories={{c}}/{f} --run-dir {{t}}/run", "field entropy: missing"))

# --- model directories (kat-dist logprobs) ---
write("ok.jsonl", '{"id": "a", "tokens": [256, 1, 2]}\n')
# A trajectory that trains: checkpoint cases resume an offline run on it, so that their
# fault is the first thing found.
write("ok-given.jsonl", '{"id": "a", "tokens": [256, 1, 2], "loss_mask": [0, 1, 1], "advantage": 1.0}\n')
cfg = {"model_type": "gpt2", "vocab_size": 260, "n_positions": 8, "n_embd": 4, "n_layer": 1, "n_head": 2}
def tensors(cfg):
    c, v, p = cfg["n_embd"], cfg["vocab_size"], cfg["n_positions"]
    out = [("transformer.wte.weight", [v, c]), ("transformer.wpe.weight", [p, c])]
    for i in range(cfg["n_layer"]):
        h = f"transformer.h.{i}."
        out += [(h + "ln_1.weight", [c]), (h + "ln_1.bias", [c]), (h + "attn.c_attn.weight", [c, 3 * c]), (h + "attn.c_attn.bias", [3 * c]),
                (h + "attn.c_proj.weight", [c, c]), (h + "attn.c_proj.bias", [c]), (h + "ln_2.weight", [c]), (h + "ln_2.bias", [c]),
                (h + "mlp.c_fc.weight", [c, 4 * c]), (h + "mlp.c_fc.bias", [4 * c]), (h + "mlp.c_proj.weight", [4 * c, c]), (h + "mlp.c_proj.bias", [c])]
    return out + [("transformer.ln_f.weight", [c]), ("transformer.ln_f.bias", [c])]
def safetensors(ts, drop=None, shape_fix=None, dtype="F32", trailing=b"", truncate=0, nan=False):
    header, data, off = {"__metadata__": {"format": "pt"}}, b"", 0
    for name, shape in ts:
        if name == drop: continue
        if shape_fix and name == shape_fix[0]: shape = shape_fix[1]
        n = 1
        for d in shape: n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + 4 * n]}
        vals = [float("nan") if nan else 0.01] * n
        data += struct.pack(f"<{n}f", *vals)
        off += 4 * n
    h = json.dumps(header).encode()
    blob = struct.pack("<Q", len(h)) + h + data + trailing
    return blob[:len(blob) - truncate] if truncate else blob
def model_dir(name, config=cfg, blob=None, frag="", raw_config=None):
    d = os.path.join(corpus, "models", name)
    os.makedirs(d)
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write(raw_config if raw_config is not None else json.dumps(config))
    if blob is not None:
        with open(os.path.join(d, "model.safetensors"), "wb") as f:
            f.write(blob)
    cases.append((f"model {name}", f"logprobs --model {{c}}/models/{name} --input {{c}}/ok.jsonl --output {{t}}/out.jsonl", frag))
ts = tensors(cfg)
model_dir("missing-tensor", blob=safetensors(ts, drop="transformer.h.0.mlp.c_fc.bias"), frag="missing tensor transformer.h.0.mlp.c_fc.bias")
model_dir("shape-mismatch", blob=safetensors(ts, shape_fix=("transformer.wpe.weight", [16, 4])), frag="transformer.wpe.weight has shape [16, 4], the config needs [8, 4]")
model_dir("truncated", blob=safetensors(ts, truncate=10), frag="truncated")
model_dir("trailing", blob=safetensors(ts, trailing=b"xx"), frag="after the last tensor")
model_dir("dtype", blob=safetensors(ts, dtype="Q4"), frag="unknown dtype Q4")
model_dir("short", blob=b"\x01\x02", frag="shorter than the 8-byte header length")
model_dir("no-weights", blob=None, frag="no such file")
model_dir("nan-weights", blob=safetensors(ts, nan=True), frag="non-finite value")
model_dir("config-not-json", raw_config="{", blob=safetensors(ts), frag="config.json: not valid JSON")
model_dir("config-activation", config=dict(cfg, activation_function="relu"), blob=safetensors(ts), frag="key activation_function")
model_dir("config-heads", config=dict(cfg, n_head=3), blob=safetensors(ts), frag="key n_head")
# Llama family: what kat-dist does not compute exactly is refused naming the key.
lcfg = {"model_type": "llama", "vocab_size": 260, "max_position_embeddings": 8, "hidden_size": 8, "intermediate_size": 12,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "tie_word_embeddings": True}
def llama_tensors(cfg):
    c, v, f, d = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"], cfg["hidden_size"] // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    out = [("model.embed_tokens.weight", [v, c])]
    for i in range(cfg["num_hidden_layers"]):
        h = f"model.layers.{i}."
        out += [(h + "input_layernorm.weight", [c]), (h + "self_attn.q_proj.weight", [q, c]), (h + "self_attn.k_proj.weight", [kv, c]),
                (h + "self_attn.v_proj.weight", [kv, c]), (h + "self_attn.o_proj.weight", [c, q]), (h + "post_attention_layernorm.weight", [c]),
                (h + "mlp.gate_proj.weight", [f, c]), (h + "mlp.up_proj.weight", [f, c]), (h + "mlp.down_proj.weight", [c, f])]
    return out + [("model.norm.weight", [c])]
lts = llama_tensors(lcfg)
model_dir("model-type", config=dict(lcfg, model_type="mistral"), blob=safetensors(lts), frag="key model_type: must be one of gpt2, llama, qwen2")
model_dir("llama-rope-scaling", config=dict(lcfg, rope_scaling={"rope_type": "llama3", "factor": 8.0}), blob=safetensors(lts), frag="key rope_scaling: rotary scaling")
model_dir("qwen2-sliding-window", config=dict(lcfg, model_type="qwen2", use_sliding_window=True), blob=safetensors(lts), frag="key use_sliding_window")
model_dir("llama-kv-heads", config=dict(lcfg, num_key_value_heads=3), blob=safetensors(lts), frag="key num_key_value_heads: must divide")
model_dir("llama-missing-tensor", config=lcfg, blob=safetensors(lts, drop="model.layers.0.mlp.up_proj.weight"), frag="missing tensor model.layers.0.mlp.up_proj.weight")
model_dir("llama-untied-no-head", config=dict(lcfg, tie_word_embeddings=False), blob=safetensors(lts), frag="missing tensor lm_head.weight")
cases.append(("config family key", "train --set model.n_kv_head=2 --run-dir {t}/run", "key model.n_kv_head: applies to model.family llama or qwen2 only"))

# sharded, BF16 and PyTorch-only weights
def extra_model(name, files, frag):
    d = os.path.join(corpus, "models", name)
    os.makedirs(d)
    for fname, blob in dict({"config.json": json.dumps(cfg).encode()}, **files).items():
        with open(os.path.join(d, fname), "wb") as f:
            f.write(blob)
    cases.append((f"model {name}", f"logprobs --model {{c}}/models/{name} --input {{c}}/ok.jsonl --output {{t}}/out.jsonl", frag))
index = {"weight_map": {n: "model-00001-of-00002.safetensors" for n, _ in ts[:2]}}
index["weight_map"].update({n: "model-00002-of-00002.safetensors" for n, _ in ts[2:]})
extra_model("sharded-missing-shard", {"model.safetensors.index.json": json.dumps(index).encode(),
                                      "model-00001-of-00002.safetensors": safetensors(ts[:2])},
            "model-00002-of-00002.safetensors: no such file (named by model.safetensors.index.json)")
extra_model("sharded-index-not-json", {"model.safetensors.index.json": b"{"}, "model.safetensors.index.json: not valid JSON")
extra_model("bf16-span", {"model.safetensors": safetensors(ts, dtype="BF16")}, "of BF16 needs")
extra_model("torch-only", {"pytorch_model.bin": b"PK"}, "safe_serialization=True")

# --- tokenizers (kat-dist tokenize) ---
write("text.jsonl", '{"text": "hi"}\n')
def tokenizer_dir(name, files, frag, config=None):
    d = os.path.join(corpus, "tokenizers", name)
    os.makedirs(d)
    for fname, text in dict({"config.json": json.dumps(config or cfg)}, **files).items():
        with open(os.path.join(d, fname), "w") as f:
            f.write(text)
    cases.append((f"tokenizer {name}", f"tokenize --model {{c}}/tokenizers/{name} --input {{c}}/text.jsonl", frag))
byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
small_vocab = {"a": 0, "b": 1, "ab": 2, "Ġ": 3, "h": 4, "i": 5, "hi": 6}
def tokenizer_json(model_type="BPE", pre=byte_level, merges=("a b", "h i")):
    return json.dumps({"version": "1.0", "added_tokens": [], "normalizer": None, "pre_tokenizer": pre, "post_processor": None,
                       "decoder": byte_level, "model": {"type": model_type, "vocab": small_vocab, "merges": list(merges)}})
tokenizer_dir("not-json", {"tokenizer.json": "{"}, "tokenizer.json: not valid JSON")
tokenizer_dir("unigram", {"tokenizer.json": tokenizer_json("Unigram")}, "model type Unigram")
tokenizer_dir("metaspace", {"tokenizer.json": tokenizer_json(pre={"type": "Metaspace"})}, "pre_tokenizer Metaspace")
tokenizer_dir("bad-merge", {"tokenizer.json": tokenizer_json(merges=("a c",))}, "not in the vocabulary")
tokenizer_dir("merges-only", {"merges.txt": "#version: 0.2\na b\n"}, "vocab.json: missing")
tokenizer_dir("vocab-too-small", {"tokenizer.json": tokenizer_json()}, "has vocab_size 3", config=dict(cfg, vocab_size=3))
tokenizer_dir("foreign-specials", {}, "eos_token_id: is 50256, but the directory has no tokenizer files",
              config=dict(cfg, eos_token_id=50256))

# --- checkpoints (kat-dist train --resume PATH) ---
def checkpoint(name, files, frag):
    d = os.path.join(corpus, "checkpoints", name)
    os.makedirs(d)
    manifest = ""
    for fname, blob in files.items():
        with open(os.path.join(d, fname), "wb") as f:
            f.write(blob)
        manifest += hashlib.sha256(blob).hexdigest() + "  " + fname + "\n"
    if name != "no-manifest":
        with open(os.path.join(d, "MANIFEST"), "w") as f:
            f.write(manifest)
    cases.append((f"checkpoint {name}", f"train --set data.trajectories={{c}}/ok-given.jsonl --set advantage.estimator=given --set model.n_positions=8 --set model.n_embd=4 --set model.n_layer=1 --set model.n_head=2 --run-dir {{t}}/run --resume {{c}}/checkpoints/{name}", frag))
hf = dict(cfg, activation_function="gelu_new", layer_norm_epsilon=1e-5, tie_word_embeddings=True)
base = {"config.json": json.dumps(hf).encode(), "model.safetensors": safetensors(ts), "state.json": b'{"step": 1}'}
opt_header = {"__metadata__": {"format": "pt", "t": "1", "optimizer": "adamw"}}
nparams = sum(eval("*".join(map(str, s))) for _, s in ts)
def opt(kind="adamw", n=nparams):
    h = dict(opt_header); h["__metadata__"] = dict(opt_header["__metadata__"], optimizer=kind)
    h["adam.m"] = {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}
    h["adam.v"] = {"dtype": "F32", "shape": [n], "data_offsets": [4 * n, 8 * n]}
    b = json.dumps(h).encode()
    return struct.pack("<Q", len(b)) + b + b"\0" * (8 * n)
checkpoint("no-manifest", dict(base, **{"optimizer.safetensors": opt()}), "does not verify: no MANIFEST")
checkpoint("model-mismatch", dict(base, **{"config.json": json.dumps(dict(hf, n_positions=16)).encode(), "optimizer.safetensors": opt()}), "does not match the configured one")
checkpoint("wrong-optimizer", dict(base, **{"optimizer.safetensors": opt("sgd")}), "holds sgd state but the config asks for adamw")
checkpoint("moments-size", dict(base, **{"optimizer.safetensors": opt(n=7)}), "tensor adam.m is missing or has the wrong size")
checkpoint("state-not-json", dict(base, **{"optimizer.safetensors": opt(), "state.json": b"{oops"}), "state.json: not valid JSON")
checkpoint("missing-optimizer", dict(base), "MANIFEST does not list optimizer.safetensors")
cases.append(("checkpoint missing dir", "train --run-dir {t}/run --resume {c}/checkpoints/none", "no such checkpoint"))
cases.append(("resume without run-dir", "train --resume auto", "--resume needs --run-dir"))

# --- external environment replies ---
envs = [
    ("garbage", "while read l; do echo 'hello'; done", "reply is not JSON: hello"),
    ("no-prompt", "while read l; do echo '{\"p\": 1}'; done", "lacks a string \"prompt\""),
    # These two answer every reset (a process runs many episodes) and break the step reply.
    ("bad-reward", "while read l; do case \"$l\" in *reset*) echo '{\"prompt\": \"x\"}';; *) echo '{\"observation\": \"\", \"reward\": \"a lot\", \"done\": true}';; esac; done", "lacks a finite number \"reward\""),
    ("no-done", "while read l; do case \"$l\" in *reset*) echo '{\"prompt\": \"x\"}';; *) echo '{\"observation\": \"\", \"reward\": 1}';; esac; done", "lacks a boolean \"done\""),
    ("exits", "exit 0", "closed its"),
    ("silent", "sleep 30", "no reply within 0.3 s"),
]
for name, script, frag in envs:
    f = write(f"envs/{name}.sh", script + "\n")
    cases.append((f"environment {name}", f"train --set data.env_command=sh\u2423{{c}}/{f} --set env.timeout_s=0.3 --set eval.every=0 --set model.n_embd=16 --set model.n_layer=1 --run-dir {{t}}/run", frag))

# --- run directories ---
write("rundir/a-file", "not a directory\n")
write("rundir/ok-train.jsonl", good + "\n")
cases.append(("run dir is a file", "train --set data.trajectories={c}/rundir/ok-train.jsonl --set advantage.estimator=given --run-dir {c}/rundir/a-file", "exists and is not a directory"))

with open(os.path.join(here, "cases.tsv"), "w") as f:
    for name, args, frag in cases:
        f.write(f"{name}\t{args}\t{frag}\n")
print(len(cases), "cases")
