#!/usr/bin/env python3
"""Distributed benchmarks of kat-dist, each number measured in this run.

    swift build -c release && python3 Benchmarks/distributed.py [--sections abcdef]

(a) synchronous against asynchronous at the same total rank count: trainer idle fraction
    (t_wait_data / step time), throughput, generation and training rates; then more
    rollout ranks, to find the smallest R at which asynchronous idle is at most 5%.
(b) offline training throughput: 2 trainer ranks x 1 BLAS thread against 1 x 1 and 1 x 2.
(c) gradient allreduce bus bandwidth against point-to-point bandwidth (kat-bench), and the
    share of step time spent in allreduce.
(d) generated tokens/s with 1 and 2 rollout ranks.
(e) multiplexing: asynchronous T=1 R=1 with and without trainers generating while they
    would wait, where generation is the bottleneck: answers of up to 450 tokens, 2 samples
    a prompt (decoding 8 samples at a time runs far below the training kernel's rate, and
    long answers make attention over the cache the larger part).
(f) weight sync: the trainers' time publishing each update and the bytes trainer 0 sends,
    with R = 1, 2, 3 rollout ranks on one node.
Ranks beyond the machine's cores are oversubscribed: they share cores, which the printed
core count makes plain.
"""
import json, os, random, shutil, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KAT = os.path.join(ROOT, ".build/release/kat-dist")
BENCH = os.path.join(ROOT, ".build/release/kat-bench")
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
TMP = tempfile.mkdtemp(prefix="kat-dist-bench-")


def mpirun(np, args, threads=1):
    cmd = ["mpirun", "-np", str(np), "--oversubscribe", "--mca", "mpi_yield_when_idle", "1",
           "-x", f"OPENBLAS_NUM_THREADS={threads}"] + args
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r


def metrics(run):
    return [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]


def online(t, r, steps=20):
    run = os.path.join(TMP, f"online-t{t}-r{r}")
    mpirun(t + r, [KAT, "train", "--run-dir", run, "--set", f"ranks.trainers={t}", "--set", "warmstart.steps=0",
                   "--set", "eval.every=0", "--set", f"steps={steps}"])
    rows = [m for m in metrics(run) if m.get("phase") == "rl"][3:]  # skip the first steps (start-up)
    step = sum(m["t_wait_data"] + m["t_forward_backward"] + m["t_allreduce"] + m["t_optimizer"] for m in rows)
    wall = rows[-1]["time"] - rows[0]["time"] + (rows[0]["t_wait_data"] + rows[0]["t_forward_backward"] + rows[0]["t_optimizer"])
    trained = sum(m["tokens_flat"] for m in rows)
    gen = sum(m.get("generated_tokens", m["tokens_flat"]) for m in rows)
    compute = sum(m["t_forward_backward"] + m["t_allreduce"] + m["t_optimizer"] for m in rows)
    return dict(idle=sum(m["t_wait_data"] for m in rows) / step, throughput=trained / wall, gen=gen / wall,
                train=trained / compute, trajs=sum(m["trajectories"] for m in rows) / wall)


MULTIPLEX_SETTINGS = ["rollout.max_new_tokens=450", "model.n_positions=512", "rollout.group_size=2", "batch.prompts=16",
                      "buffer.max_groups=64", "max_staleness=8"]


def multiplexed(flag, steps=60, attempt=0):
    run = os.path.join(TMP, f"multiplex-{flag}-{attempt}")
    mpirun(2, [KAT, "train", "--run-dir", run, "--set", "ranks.trainers=1", "--set", "warmstart.steps=0",
               "--set", "eval.every=0", "--set", f"steps={steps}", "--set", f"ranks.multiplex={flag}"]
           + [a for s in MULTIPLEX_SETTINGS for a in ("--set", s)])
    rows = [m for m in metrics(run) if m.get("phase") == "rl"][5:]
    wall = rows[-1]["time"] - rows[0]["time"]
    trained = sum(m["tokens_flat"] for m in rows[1:])
    return dict(idle=sum(m["trainer_idle"] for m in rows) / len(rows), throughput=trained / wall,
                generate=sum(m["t_generate_trainers"] for m in rows) / len(rows),
                groups=sum(m["groups_trainers"] for m in rows) / len(rows),
                staleness=sum(m["staleness_mean"] for m in rows) / len(rows))


def weight_sync(r, steps=10):
    run = os.path.join(TMP, f"sync-r{r}")
    mpirun(1 + r, [KAT, "train", "--run-dir", run, "--set", "ranks.trainers=1", "--set", "warmstart.steps=0",
                   "--set", "eval.every=0", "--set", f"steps={steps}", "--set", "ranks.multiplex=false"])
    rows = [m for m in metrics(run) if m.get("phase") == "rl"][2:]
    return dict(t=sorted(m["t_weight_sync"] for m in rows)[len(rows) // 2], bytes=max(m["weight_bytes_root"] for m in rows))


def offline(t, threads, data):
    run = os.path.join(TMP, f"offline-t{t}-x{threads}")
    mpirun(t, [KAT, "train", "--run-dir", run, "--set", f"ranks.trainers={t}", "--set", f"data.trajectories={data}",
               "--set", "advantage.estimator=given", "--set", "steps=12", "--set", "model.n_embd=256",
               "--set", "model.n_positions=512", "--set", "batch.trajectories=64"], threads=threads)
    rows = metrics(run)[2:]
    t_step = sum(m["t_forward_backward"] + m["t_allreduce"] + m["t_optimizer"] for m in rows)
    return dict(tps=sum(m["tokens_flat"] for m in rows) / t_step, allreduce=sum(m["t_allreduce"] for m in rows) / t_step)


def main():
    import argparse
    ap = argparse.ArgumentParser(description="kat-dist distributed benchmarks")
    ap.add_argument("--sections", default="abcdef", help="which sections to run, e.g. ef")
    ap.add_argument("--repeat", type=int, default=2, help="alternating repeats of (e), medians reported")
    args = ap.parse_args()
    sections = set(args.sections)
    print(f"# {os.cpu_count()} cores; load average {open('/proc/loadavg').read().split()[0]} at start; results under {TMP}")
    if "a" in sections or "d" in sections:
        section_a(sections)
    if "b" in sections or "c" in sections:
        section_bc(sections)
    if "e" in sections:
        section_e(args.repeat)
    if "f" in sections:
        section_f()
    shutil.rmtree(TMP, ignore_errors=True)


def section_a(sections):
    print("\n(a) synchronous vs asynchronous, 2 ranks in all (default model and task, no warm start)")
    print("layout          trainer idle  trained tok/s  generated tok/s  train rate tok/s  trajectories/s")
    res = {}
    for t, r in [(2, 0), (1, 1), (1, 2), (1, 3)]:
        x = online(t, r)
        res[(t, r)] = x
        name = f"T={t} R={r}" + (" sync" if r == 0 else " async") + ("" if t + r <= os.cpu_count() else " (over)")
        print(f"{name:<16}{x['idle']:>12.3f}{x['throughput']:>15.0f}{x['gen']:>17.0f}{x['train']:>18.0f}{x['trajs']:>16.1f}")
    ok = [r for (t, r), x in res.items() if r > 0 and x["idle"] <= 0.05]
    print("smallest R with asynchronous idle <= 5%:", min(ok) if ok else "none of R = 1..3 on this machine")
    if "d" in sections:
        print("\n(d) generated tokens/s")
        print(f"1 rollout rank   {res[(1, 1)]['gen']:.0f}")
        print(f"2 rollout ranks  {res[(1, 2)]['gen']:.0f}  ({res[(1, 2)]['gen'] / res[(1, 1)]['gen']:.2f}x; 3 ranks on {os.cpu_count()} cores)")


def section_bc(sections):
    print("\n(b) offline training throughput (C=256 L=4, W1-like groups: 256-token prompts, 64-token answers)")
    data = os.path.join(TMP, "w1.jsonl")
    rng = random.Random(1)
    with open(data, "w") as f:
        for g in range(64):
            prompt = [256] + [rng.randrange(256) for _ in range(255)]
            for k in range(8):
                toks = prompt + [rng.randrange(256) for _ in range(64)]
                f.write(json.dumps({"id": f"g{g}-{k}", "group": f"g{g}", "tokens": toks, "prompt_len": 256, "advantage": 1.0}) + "\n")
    one = offline(1, 1, data)
    two_threads = offline(1, 2, data)
    two_ranks = offline(2, 1, data)
    print(f"1 rank x 1 thread    {one['tps']:>8.0f} flat tok/s")
    print(f"1 rank x 2 threads   {two_threads['tps']:>8.0f} flat tok/s  ({two_threads['tps'] / one['tps']:.2f}x)")
    print(f"2 ranks x 1 thread   {two_ranks['tps']:>8.0f} flat tok/s  ({two_ranks['tps'] / one['tps']:.2f}x; "
          f"{two_ranks['tps'] / two_threads['tps']:.2f}x of 1 x 2)")

    print("\n(c) gradient allreduce")
    r = mpirun(2, [BENCH, "allreduce", "--mib", "16"])
    print(r.stdout.strip())
    print(f"share of step time in allreduce (2 ranks, (b)): {two_ranks['allreduce']:.3f}")



def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def section_e(repeat):
    print(f"\n(e) multiplexing, T=1 R=1 (--set {' --set '.join(MULTIPLEX_SETTINGS)}; "
          f"{repeat} alternating runs each, medians)")
    runs = {"false": [], "true": []}
    for attempt in range(repeat):
        for flag in ("false", "true"):
            runs[flag].append(multiplexed(flag, attempt=attempt))
    off, on = ({k: median([x[k] for x in runs[f]]) for k in runs[f][0]} for f in ("false", "true"))
    print("multiplex   trainer idle  trained tok/s  trainer generating s/step  trainers' groups/step  staleness")
    for name, x in [("off", off), ("on", on)]:
        print(f"{name:<12}{x['idle']:>12.3f}{x['throughput']:>15.0f}{x['generate']:>27.3f}{x['groups']:>23.2f}{x['staleness']:>11.2f}")
    gain = on["throughput"] / off["throughput"] - 1
    print(f"speed-up with multiplexing {gain:+.2f} (target: at least a third of the idle share without it, {off['idle'] / 3:.2f}); "
          f"idle with it {on['idle']:.3f} (target at most 0.05)")


def section_f():
    print("\n(f) weight sync on one node (median time trainers spend publishing an update)")
    print("rollout ranks  t_weight_sync s  bytes sent by trainer 0")
    for r in [1, 2, 3]:
        x = weight_sync(r)
        print(f"{r:>13}{x['t']:>17.4f}{x['bytes']:>25}" + ("" if 1 + r <= os.cpu_count() else "  (oversubscribed)"))


if __name__ == "__main__":
    main()
