#!/usr/bin/env python3
"""kat-dist beside PyTorch/transformers on the same model, batch and thread count, in one run.

Not run in CI. Needs torch and transformers (`--install` installs the CPU wheels with pip)
and a release build of kat-bench (`swift build -c release`). Every section interleaves the
two sides (kat-dist, then PyTorch, repeated `--rounds` times) and keeps the best of each, so
the machine's load reaches both alike; it prints the load average beside the numbers. Both
sides time their one thread's CPU time (time.thread_time, CLOCK_THREAD_CPUTIME_ID), which
leaves out waits for a core on a shared machine; KAT_BENCH_CLOCK=wall times wall clock.

Sections (`--only` picks some, comma-separated):
  decode-small   GPT-2 C=128 L=4 NH=4 V=260: 64 samples of one 193-token prompt, 48 new
                 tokens each. transformers `generate` (sampling, num_return_sequences=64,
                 KV cache, no stop token) against `kat-bench sampler` with the prompt's cache
                 shared by the group and with one copy per sample.
  decode-124m    the same batch on GPT-2 124M (C=768 L=12 NH=12 V=50257).
  train-124m     GPT-2 124M on a group workload: 2 prompts x 8 samples, 128-token prompts,
                 32-token answers, one update of all 16. PyTorch's flat forward+backward (the
                 logits of the answer positions only, `logits_to_keep`, as TRL's GRPO trainer
                 computes them; a policy-gradient loss) against `kat-bench group` (flat and
                 trie packing, forward + policy loss + backward); then the peak memory of one
                 whole training step with SGD on each side, each in a fresh process.

Usage:
  python3 Benchmarks/peer_compare.py [--install] [--threads 1] [--rounds 2] [--only ...]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KAT_BENCH = os.path.join(ROOT, ".build", "release", "kat-bench")


def load():
    return os.getloadavg()[0]


def kat(args, threads):
    """Runs kat-bench with `args`; returns its stdout lines."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads))
    out = subprocess.run([KAT_BENCH] + args, env=env, check=True, capture_output=True, text=True).stdout
    return out.splitlines()


def number(lines, label):
    for line in lines:
        if line.startswith(label):
            m = re.search(r"[-+]?\d+(\.\d+)?", line[len(label):])
            if m:
                return float(m.group(0))
    raise ValueError("no line starting with %r in:\n%s" % (label, "\n".join(lines)))


# MARK: - PyTorch side (run in a child process, so each measurement starts clean)

def clock():
    """The child's clock: this thread's CPU time (PyTorch runs its maths on the calling thread
    with one intra-op thread), as kat-bench's; the wall clock with KAT_BENCH_CLOCK=wall."""
    return time.perf_counter() if os.environ.get("KAT_BENCH_CLOCK") == "wall" else time.thread_time()


def torch_child(spec):
    import resource
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=spec["vocab"], n_positions=spec["positions"], n_embd=spec["n_embd"], n_layer=spec["n_layer"],
                     n_head=spec["n_head"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg)
    g = torch.Generator().manual_seed(1)
    high = min(spec["vocab"], 50000)
    result = {"torch": torch.__version__, "attn": getattr(model.config, "_attn_implementation", "?")}
    # torch's own single-thread matmul rate, for its bound.
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best = 1e9
    for _ in range(3):
        t0 = clock(); torch.mm(a, b); best = min(best, clock() - t0)
    result["matmul_gflops"] = 2 * 1024 ** 3 / best / 1e9
    if spec["kind"] == "decode":
        model.eval()
        prompt = torch.randint(0, high, (1, spec["prompt"]), generator=g)
        times = []
        with torch.inference_mode():
            for _ in range(spec["repeats"]):
                t0 = clock()
                out = model.generate(prompt, do_sample=True, num_return_sequences=spec["group"], max_new_tokens=spec["new"],
                                     min_new_tokens=spec["new"], top_k=0, top_p=1.0, temperature=1.0, pad_token_id=0,
                                     eos_token_id=None, use_cache=True)
                times.append(clock() - t0)
                assert out.shape == (spec["group"], spec["prompt"] + spec["new"]), out.shape
        result["seconds"] = min(times)
        result["tokens_per_s"] = spec["group"] * spec["new"] / min(times)
    elif spec["kind"] == "train":
        model.train()
        P, A, S, G = spec["prompt"], spec["answer"], spec["samples"], spec["prompts"]
        rows = []
        for _ in range(G):
            p = torch.randint(0, high, (P,), generator=g)
            for _ in range(S):
                rows.append(torch.cat([p, torch.randint(0, high, (A,), generator=g)]))
        ids = torch.stack(rows)
        adv = torch.where(torch.rand(ids.shape[0], generator=g) < 0.5, 1.0, -1.0)
        opt = torch.optim.SGD(model.parameters(), lr=1e-4) if spec["memory"] else None

        def forward_backward():
            # Logits of the positions that predict answer tokens only (A + 1 kept, last dropped).
            logits = model(ids, logits_to_keep=A + 1).logits[:, :-1, :]
            logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, P:].unsqueeze(-1)).squeeze(-1)
            loss = -(adv[:, None] * logp).sum() / logp.numel()
            loss.backward()
            return loss

        if spec["memory"]:
            t0 = clock()
            opt.zero_grad(set_to_none=False)
            forward_backward()
            opt.step()
            result["seconds"] = clock() - t0
            result["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        else:
            times = []
            for r in range(spec["repeats"] + 1):  # the first pass allocates
                model.zero_grad(set_to_none=False)
                t0 = clock()
                forward_backward()
                if r > 0:
                    times.append(clock() - t0)
            result["seconds"] = min(times)
    print(json.dumps(result))


def torch_run(spec, threads):
    spec = dict(spec, threads=threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# MARK: - Sections

def decode(name, size_args, shape, threads, rounds, repeats):
    print("\n## %s: %d samples of a %d-token prompt, %d new tokens, %d thread(s)" % (name, 64, 193, 48, threads))
    print("load average at start: %.2f" % load())
    spec = dict(shape, kind="decode", prompt=193, new=48, group=64, repeats=repeats)
    best = {}
    kat_lines = None
    for r in range(rounds):
        lines = kat(["sampler"] + size_args + ["--prompt", "193", "--new", "48", "--group", "64", "--repeat", str(repeats)], threads)
        for key, label in [("shared", "generated tokens/s, shared prompt cache"), ("unshared", "generated tokens/s, one copy per sample")]:
            best[key] = max(best.get(key, 0), number(lines, label))
        if kat_lines is None or number(lines, "sgemm 1024^3 GFLOP/s") > number(kat_lines, "sgemm 1024^3 GFLOP/s"):
            kat_lines = lines
        t = torch_run(spec, threads)
        if "torch" not in best or t["tokens_per_s"] > best["torch"]["tokens_per_s"]:
            best["torch"] = t
        print("round %d: kat shared %.0f, kat unshared %.0f, transformers %.0f tokens/s (load %.2f)" %
              (r + 1, number(lines, "generated tokens/s, shared prompt cache"), number(lines, "generated tokens/s, one copy per sample"),
               t["tokens_per_s"], load()))
    t = best["torch"]
    sg = number(kat_lines, "sgemm 1024^3 GFLOP/s")
    bound_shared = number(kat_lines, "sgemm bound tokens/s, shared")
    bound_unshared = number(kat_lines, "sgemm bound tokens/s, one copy per sample")
    print("| side | tokens/s | sgemm bound tokens/s | share of bound |")
    print("|---|---|---|---|")
    print("| transformers generate (torch %s, %s attention) | %.0f | %.0f | %.2f |" % (t["torch"], t["attn"], t["tokens_per_s"], bound_unshared,
                                                                                   t["tokens_per_s"] / bound_unshared))
    print("| kat-dist, one copy per sample | %.0f | %.0f | %.2f |" % (best["unshared"], bound_unshared, best["unshared"] / bound_unshared))
    print("| kat-dist, shared prompt cache | %.0f | %.0f | %.2f |" % (best["shared"], bound_shared, best["shared"] / bound_shared))
    print("sgemm 1024^3 GFLOP/s: OpenBLAS %.1f, torch.mm %.1f (bounds use OpenBLAS's)" % (sg, t["matmul_gflops"]))
    print("ratio kat unshared / transformers  %.2f" % (best["unshared"] / t["tokens_per_s"]))
    print("ratio kat shared / transformers    %.2f" % (best["shared"] / t["tokens_per_s"]))
    print("load average at end: %.2f" % load())


def train(threads, rounds, repeats):
    print("\n## train-124m: GPT-2 124M, 2 prompts x 8 samples, 128 + 32 tokens, %d thread(s)" % threads)
    print("load average at start: %.2f" % load())
    shape = dict(vocab=50257, positions=1024, n_embd=768, n_layer=12, n_head=12)
    spec = dict(shape, kind="train", prompts=2, samples=8, prompt=128, answer=32, repeats=repeats, memory=False)
    best_flat = best_trie = best_torch = 1e9
    lines_best = None
    for r in range(rounds):
        lines = kat(["group", "--size", "124m", "--repeat", str(repeats)], threads)
        flat = float(re.search(r"forward\+backward \(s\) ([\d.]+)", next(l for l in lines if l.startswith("flat"))).group(1))
        trie = float(re.search(r"forward\+backward \(s\) ([\d.]+)", next(l for l in lines if l.startswith("trie"))).group(1))
        t = torch_run(spec, threads)
        print("round %d: kat flat %.3f s, kat trie %.3f s, PyTorch flat %.3f s (load %.2f)" % (r + 1, flat, trie, t["seconds"], load()))
        if flat < best_flat:
            lines_best = lines
        best_flat, best_trie, best_torch = min(best_flat, flat), min(best_trie, trie), min(best_torch, t["seconds"])
    flop_ratio = number(lines_best, "FLOP ratio flat/trie")
    print("| side | forward+backward (s) |")
    print("|---|---|")
    print("| PyTorch flat (torch %s, %s attention, logits_to_keep) | %.3f |" % (t["torch"], t["attn"], best_torch))
    print("| kat-dist flat | %.3f |" % best_flat)
    print("| kat-dist trie | %.3f |" % best_trie)
    print("ratio kat flat / PyTorch flat (speed-up)   %.2f" % (best_torch / best_flat))
    print("FLOP ratio flat/trie                       %.2f" % flop_ratio)
    print("kat trie speed-up over kat flat            %.2f  (%.2f of the FLOP ratio)" % (best_flat / best_trie,
                                                                                    best_flat / best_trie / flop_ratio))
    # Peak memory of one whole step (SGD), each side in a fresh process.
    tm = torch_run(dict(spec, memory=True), threads)
    km = kat(["group", "--size", "124m", "--memory", "trie"], threads)
    kf = kat(["group", "--size", "124m", "--memory", "flat"], threads)
    print("| one training step, SGD | peak memory (MiB) |")
    print("|---|---|")
    print("| PyTorch flat | %.0f |" % tm["peak_mib"])
    print("| kat-dist flat | %.0f |" % number(kf, "peak memory (MiB)"))
    print("| kat-dist trie | %.0f |" % number(km, "peak memory (MiB)"))
    print("ratio kat trie / PyTorch flat peak memory  %.2f" % (number(km, "peak memory (MiB)") / tm["peak_mib"]))
    print("load average at end: %.2f" % load())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--install", action="store_true", help="pip install CPU torch and transformers first")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", default="decode-small,decode-124m,train-124m")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        torch_child(json.loads(a.child))
        return
    if a.install:
        subprocess.run([sys.executable, "-m", "pip", "install", "torch", "--index-url", "https://download.pytorch.org/whl/cpu"], check=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "transformers"], check=True)
    if not os.path.exists(KAT_BENCH):
        sys.exit("build kat-bench first: swift build -c release")
    print("# %s; %d thread(s) each side; times are %s" % (" ".join(os.uname()[0:3:2]), a.threads,
          "wall time" if os.environ.get("KAT_BENCH_CLOCK") == "wall" else "each side's thread CPU time"))
    only = a.only.split(",")
    if "decode-small" in only:
        decode("decode-small", [], dict(vocab=260, positions=512, n_embd=128, n_layer=4, n_head=4), a.threads, a.rounds, 3)
    if "decode-124m" in only:
        decode("decode-124m", ["--size", "124m"], dict(vocab=50257, positions=1024, n_embd=768, n_layer=12, n_head=12),
               a.threads, a.rounds, 1)
    if "train-124m" in only:
        train(a.threads, a.rounds, 2)


if __name__ == "__main__":
    main()
