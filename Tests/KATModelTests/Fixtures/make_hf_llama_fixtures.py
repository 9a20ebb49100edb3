#!/usr/bin/env python3
"""Makes the Hugging Face agreement fixtures of the Llama family for KATModelTests (run by
hand, not in CI).

    pip install torch --index-url https://download.pytorch.org/whl/cpu
    pip install transformers safetensors
    python3 Tests/KATModelTests/Fixtures/make_hf_llama_fixtures.py

Writes two model directories saved by transformers itself, each with 4 query heads and
2 key-value heads (grouped-query attention):
  hf-llama/   LlamaForCausalLM, untied lm_head, attention_bias true (q, k, v and o biases),
              C=32, head_dim 8, F=48, rope_theta 10000
  hf-qwen2/   Qwen2ForCausalLM, tied head, q/k/v biases, C=32 but head_dim 12 (queries
              48 wide), F=40, rope_theta 1000
and for each, <name>-expected.safetensors with, for three token sequences packed flat:
  tokens_<k>, logits_<k>        logits of every position (float32)
  logprobs_<k>, entropies_<k>   next-token log-prob and entropy at temperature 0.8
                                (index t scores token t from position t-1; index 0 unused)
  grad.<tensor name>            gradient of the stated loss below, per parameter tensor

Stated loss: L = -(1/N) sum over sequences and positions t >= 1 of w_t * log p_0.8(x_t | x_<t),
with w_t = 1 + (t mod 3) / 2 (so the weighting is not uniform), N the number of such t.
"""
import os
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
from safetensors.torch import save_file

here = os.path.dirname(os.path.abspath(__file__))
common = dict(vocab_size=260, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=64, rms_norm_eps=1e-6, hidden_act="silu", attention_dropout=0.0,
              bos_token_id=256, eos_token_id=257, pad_token_id=259)
models = {
    "hf-llama": (LlamaForCausalLM, LlamaConfig(**common, intermediate_size=48, head_dim=8, rope_theta=10000.0,
                                               tie_word_embeddings=False, attention_bias=True, mlp_bias=False)),
    "hf-qwen2": (Qwen2ForCausalLM, Qwen2Config(**common, intermediate_size=40, head_dim=12, rope_theta=1000.0,
                                               tie_word_embeddings=True, use_sliding_window=False)),
}
tau = 0.8
for seed, (name, (cls, cfg)) in enumerate(models.items()):
    torch.manual_seed(1234 + seed)
    cfg._attn_implementation = "eager"
    model = cls(cfg).float()
    # Larger weights than the default init so attention and the norms are far from trivial.
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    model.eval()
    out_dir = os.path.join(here, name)
    model.save_pretrained(out_dir, safe_serialization=True)

    gen = torch.Generator().manual_seed(99 + seed)
    seqs = [torch.randint(0, 260, (n,), generator=gen) for n in (17, 9, 30)]
    expected = {}
    total, count = 0.0, 0
    model.zero_grad()
    for k, s in enumerate(seqs):
        logits = model(s.unsqueeze(0)).logits[0]          # (T, V)
        logp = torch.log_softmax(logits / tau, dim=-1)
        tgt = s[1:]
        lp = logp[:-1].gather(1, tgt.unsqueeze(1)).squeeze(1)  # scores token t from t-1
        ent = -(logp.exp() * logp).sum(-1)[:-1]
        w = torch.tensor([1 + ((t + 1) % 3) / 2 for t in range(len(tgt))])
        total = total + (w * lp).sum()
        count += len(tgt)
        expected[f"tokens_{k}"] = s.float()
        expected[f"logits_{k}"] = logits.detach().clone()
        expected[f"logprobs_{k}"] = torch.cat([torch.zeros(1), lp.detach()])
        expected[f"entropies_{k}"] = torch.cat([torch.zeros(1), ent.detach()])
    loss = -total / count
    loss.backward()
    expected["loss"] = loss.detach().reshape(1)
    for pname, p in model.named_parameters():
        expected["grad." + pname] = p.grad.detach().clone()
    save_file({k: v.contiguous() for k, v in expected.items()}, os.path.join(here, name + "-expected.safetensors"),
              metadata={"format": "pt", "temperature": str(tau)})
    print("wrote", out_dir, "and", name + "-expected.safetensors; loss", float(loss))
