#!/usr/bin/env python3
"""Makes the dtype and sharding fixtures of KATModelTests (run by hand, not in CI).

    pip install numpy safetensors ml_dtypes
    python3 Tests/KATModelTests/Fixtures/make_dtype_fixture.py

Writes into Tests/KATModelTests/Fixtures/dtypes/ a tiny GPT-2 (V=20, P=8, C=8, L=2, NH=2)
with random float32 weights w, in the forms other programs write:
  f32/        model.safetensors, F32: w
  bf16/       model.safetensors, BF16: w rounded to bfloat16 by ml_dtypes (to nearest, ties to even)
  f16/        model.safetensors, F16: w rounded to float16 by numpy
  sharded/    model-0000k-of-00003.safetensors + model.safetensors.index.json, F32: w,
              split as transformers' save_pretrained(max_shard_size=...) splits (whole tensors)
  expected.safetensors   float32 values the BF16 and F16 files stand for (bf16.<name>, f16.<name>),
              widened by numpy
  rounding.safetensors   `x` (F32): ties, subnormals, the largest floats, infinities, zeros and
              NaN; `x_bf16` (BF16): x rounded by ml_dtypes
"""
import json
import os
import shutil

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dtypes")
V, P, C, L, NH = 20, 8, 8, 2, 2


def tensors(rng):
    t = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (P, C)}
    for i in range(L):
        h = f"transformer.h.{i}."
        t.update({h + "ln_1.weight": (C,), h + "ln_1.bias": (C,), h + "attn.c_attn.weight": (C, 3 * C),
                  h + "attn.c_attn.bias": (3 * C,), h + "attn.c_proj.weight": (C, C), h + "attn.c_proj.bias": (C,),
                  h + "ln_2.weight": (C,), h + "ln_2.bias": (C,), h + "mlp.c_fc.weight": (C, 4 * C),
                  h + "mlp.c_fc.bias": (4 * C,), h + "mlp.c_proj.weight": (4 * C, C), h + "mlp.c_proj.bias": (C,)})
    t.update({"transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,)})
    return {k: rng.normal(0, 0.3, s).astype(np.float32) for k, s in t.items()}


def write_raw(path, arrays, dtypes):
    """safetensors by hand, for dtypes the numpy API does not write (BF16)."""
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, a in arrays.items():
        b = a.tobytes()
        header[name] = {"dtype": dtypes[name], "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h + b"".join(blobs))


def main():
    shutil.rmtree(HERE, ignore_errors=True)
    os.makedirs(HERE)
    w = tensors(np.random.default_rng(11))
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": V, "n_positions": P, "n_embd": C,
              "n_layer": L, "n_head": NH, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
              "tie_word_embeddings": True}
    for name in ("f32", "bf16", "f16", "sharded"):
        os.makedirs(os.path.join(HERE, name))
        with open(os.path.join(HERE, name, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
    save_file(w, os.path.join(HERE, "f32", "model.safetensors"), metadata={"format": "pt"})
    bf = {k: v.astype(ml_dtypes.bfloat16) for k, v in w.items()}
    write_raw(os.path.join(HERE, "bf16", "model.safetensors"), {k: v.view(np.uint16) for k, v in bf.items()},
              {k: "BF16" for k in bf})
    f16 = {k: v.astype(np.float16) for k, v in w.items()}
    save_file(f16, os.path.join(HERE, "f16", "model.safetensors"), metadata={"format": "pt"})
    expected = {"bf16." + k: v.astype(np.float32) for k, v in bf.items()}
    expected.update({"f16." + k: v.astype(np.float32) for k, v in f16.items()})
    save_file(expected, os.path.join(HERE, "expected.safetensors"), metadata={"format": "pt"})

    names = list(w)
    cuts = [0, len(names) // 3, 2 * len(names) // 3, len(names)]
    weight_map, total = {}, 0
    for k in range(3):
        shard = f"model-{k + 1:05d}-of-00003.safetensors"
        part = {n: w[n] for n in names[cuts[k]:cuts[k + 1]]}
        save_file(part, os.path.join(HERE, "sharded", shard), metadata={"format": "pt"})
        for n, a in part.items():
            weight_map[n] = shard
            total += a.nbytes
    with open(os.path.join(HERE, "sharded", "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)

    tiny = np.float32(np.finfo(np.float32).tiny)
    x = np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, -(1 + 2 ** -8), 3.3895e38, 3.39e38, 3.4e38,
                  np.finfo(np.float32).max, tiny, tiny * 0.75, 1e-45, -1e-45, 0.0, -0.0, np.inf, -np.inf, np.nan,
                  0.1, -0.3, 123.456, 1e-3, 65504.0], dtype=np.float32)
    x = np.concatenate([x, np.random.default_rng(3).normal(0, 10, 200).astype(np.float32)])
    write_raw(os.path.join(HERE, "rounding.safetensors"),
              {"x": x, "x_bf16": x.astype(ml_dtypes.bfloat16).view(np.uint16)}, {"x": "F32", "x_bf16": "BF16"})


if __name__ == "__main__":
    main()
