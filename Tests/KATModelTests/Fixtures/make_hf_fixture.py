#!/usr/bin/env python3
"""Makes the Hugging Face agreement fixture for KATModelTests (run by hand, not in CI).

    pip install torch transformers safetensors
    python3 Tests/KATModelTests/Fixtures/make_hf_fixture.py

Writes hf-gpt2/ (a model directory saved by transformers itself, in the published
GPT-2 name forms: lm_head tied, attn.bias buffers when transformers writes them) and
hf-expected.safetensors with, for three token sequences packed flat:
  tokens_<k>, logits_<k>        logits of every position (float32)
  logprobs_<k>, entropies_<k>   next-token log-prob and entropy at temperature 0.8
                                (index t scores token t from position t-1; index 0 unused)
  grad.<tensor name>            gradient of the stated loss below, per parameter tensor

Stated loss: L = -(1/N) sum over sequences and positions t >= 1 of w_t * log p_0.8(x_t | x_<t),
with w_t = 1 + (t mod 3) / 2 (so the weighting is not uniform), N the number of such t.
"""
import json, os, sys
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from safetensors.torch import save_file

here = os.path.dirname(os.path.abspath(__file__))
torch.manual_seed(1234)
cfg = GPT2Config(vocab_size=260, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                 activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                 layer_norm_epsilon=1e-5, bos_token_id=256, eos_token_id=257, tie_word_embeddings=True)
model = GPT2LMHeadModel(cfg).float()
# Larger weights than the default init so attention and LayerNorm are far from trivial.
with torch.no_grad():
    for name, p in model.named_parameters():
        if "ln" in name and name.endswith("weight"):
            p.copy_(1 + 0.3 * torch.randn_like(p))
        else:
            p.copy_(0.15 * torch.randn_like(p))
model.eval()
out_dir = os.path.join(here, "hf-gpt2")
model.save_pretrained(out_dir, safe_serialization=True)

gen = torch.Generator().manual_seed(99)
seqs = [torch.randint(0, 260, (n,), generator=gen) for n in (17, 9, 30)]
tau = 0.8
expected = {}
total = 0.0
count = 0
model.zero_grad()
for k, s in enumerate(seqs):
    logits = model(s.unsqueeze(0)).logits[0]          # (T, V)
    z = logits / tau
    logp = torch.log_softmax(z, dim=-1)
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
for name, p in model.named_parameters():
    if name == "lm_head.weight":
        continue
    expected["grad." + name] = p.grad.detach().clone()
save_file({k: v.contiguous() for k, v in expected.items()}, os.path.join(here, "hf-expected.safetensors"),
          metadata={"format": "pt", "temperature": str(tau)})
print("wrote", out_dir, "and hf-expected.safetensors; loss", float(loss))
