#!/usr/bin/env python3
"""Partial rollouts with admission control against whole-group staleness dropping.

    swift build -c release && python3 Benchmarks/partial.py [--steps 24] [--repeat 1]

Asynchronous training, 1 trainer and 3 rollout ranks (`--rollouts`; no multiplexing, so
that the trainer trains only what the rollout ranks make; generation outpaces training), on Benchmarks/envs/varied_turns_env.py: episodes
of 1 to 10 turns of up to 16 new tokens each, so that answer lengths vary tenfold, with
`max_staleness=1`. Two arms, run in turn:
  partial   rollout.partial=true, rollout.admission=true (the defaults): new weights are
            taken between decode steps, and a rank starts a group only within the
            staleness budget
  whole     rollout.partial=false, rollout.admission=false: weights change only between
            groups, ranks generate freely, and groups that come too late are dropped whole
Printed per arm, over the RL steps after the first two: generated tokens, the tokens
dropped as stale and their share, trained tokens per second of wall time, mixed-version
trajectories, and the largest staleness trained. (Episodes left unfinished when the run
stops are discarded in both arms alike, after the last step; the run's last lines count
them.)
"""
import argparse, json, os, shutil, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KAT = os.path.join(ROOT, ".build/release/kat-dist")
ENV_CMD = "python3 " + os.path.join(ROOT, "Benchmarks/envs/varied_turns_env.py")


def run(tmp, name, partial, steps, rollouts):
    rd = os.path.join(tmp, name)
    flag = "true" if partial else "false"
    cmd = ["mpirun", "-np", str(1 + rollouts), "--oversubscribe", "--bind-to", "none", "--mca", "mpi_yield_when_idle", "1",
           "-x", "OPENBLAS_NUM_THREADS=1", KAT, "train", "--run-dir", rd,
           "--set", "ranks.trainers=1", "--set", "ranks.multiplex=false", "--set", f"data.env_command={ENV_CMD}",
           "--set", "warmstart.steps=0", "--set", "eval.every=0", "--set", f"steps={steps}",
           "--set", "rollout.turns=10", "--set", "rollout.max_new_tokens=16", "--set", "model.n_positions=512",
           "--set", "rollout.group_size=4", "--set", "batch.prompts=4", "--set", "max_staleness=1",
           "--set", f"rollout.partial={flag}", "--set", f"rollout.admission={flag}"]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        sys.exit(f"{name} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    rows = [json.loads(l) for l in open(os.path.join(rd, "metrics.jsonl"))]
    rl = [m for m in rows if m.get("phase") == "rl"][2:]
    generated = sum(m.get("generated_tokens", 0) for m in rl)
    stale = sum(m.get("dropped_stale_tokens", 0) for m in rl)
    trained = sum(m["tokens_flat"] for m in rl[1:])
    wall = rl[-1]["time"] - rl[0]["time"]
    return dict(generated=generated, stale=stale, trained_per_s=trained / wall,
                mixed=sum(m.get("mixed_version_trajectories", 0) for m in rl), lag=max(m["staleness_max"] for m in rl))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--rollouts", type=int, default=3, help="rollout ranks")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="kat-partial-")
    try:
        print(f"# 1 trainer + {args.rollouts} rollout ranks on {os.cpu_count()} cores, episodes of 1-10 turns x up to 16 tokens, max_staleness 1, "
              f"{args.steps} steps; load average {open('/proc/loadavg').read().split()[0]} at start")
        print("arm      generated  dropped stale  share dropped  trained tok/s  mixed-version  max lag")
        res = {"partial": [], "whole": []}
        for k in range(args.repeat):
            for name, partial in [("whole", False), ("partial", True)]:
                x = run(tmp, f"{name}{k}", partial, args.steps, args.rollouts)
                res[name].append(x)
                waste = x["stale"] / max(1, x["generated"])
                print(f"{name:<9}{x['generated']:>9}{x['stale']:>15}{waste:>15.3f}{x['trained_per_s']:>15.0f}"
                      f"{x['mixed']:>15}{x['lag']:>9}")
        def mean(name, key):
            return sum(x[key] for x in res[name]) / len(res[name])
        print(f"trained tok/s partial / whole: {mean('partial', 'trained_per_s') / mean('whole', 'trained_per_s'):.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
