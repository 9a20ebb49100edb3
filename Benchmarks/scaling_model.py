#!/usr/bin/env python3
"""A performance model of kat-dist, fitted from the scaling suite's measurements.

    python3 Benchmarks/scaling_model.py simulate --input CONFIG.json     one simulated run (JSON out)
    python3 Benchmarks/scaling_model.py fit --input MEASUREMENTS.json    fitted parameters (JSON out)
    python3 Benchmarks/scaling_model.py project --input MEASUREMENTS.json [--quick]

Python standard library only. The parts (Docs/scaling.md states them with their sources):

- Compute: FLOPs counted as everywhere in kat-dist (forward plus backward: 6 x the layers'
  parameters per computed token, 6 V C per row whose next-token distribution is computed,
  12 (NH d) L per (query, key) pair) over kernel rates measured per part (linear, head,
  attention) at each width C, with the width dependence r(C) = r_inf C / (C + C_half).
- Communication: latency plus bytes over bandwidth per link type; a ring allreduce over p
  ranks costs 2 (p-1) alpha + 2 (p-1)/p n / B, within a node and then across nodes.
- Weight sync: trainer 0 writes its node's shared memory and sends one copy to each of
  at most two children in a binary tree of node leaders; each leader forwards after a
  whole message has arrived; every rank of a node then copies the node's weights.
- Generation: decode FLOPs per token (2 x layer parameters + 2 V C + 4 (NH d) L x context)
  at a decode efficiency measured against the training kernel, with a floor of one read
  of the weights per decode step from the node's memory; prompts prefilled once per group.
- A discrete-event simulation of the asynchronous run: trainers in lockstep (they agree
  on every batch), each taking groups from its rollout ranks only while it collects a
  batch or between micro-batches; rollout ranks decoding several groups at a time and
  handing each over with a synchronous send (a full buffer pushes back); staleness and
  dropped groups; multiplexing (a trainer that would wait generates a group itself);
  partial rollouts as a parameter; ranks sharing a node's cores when there are more busy
  ranks than cores.
"""
import argparse
import heapq
import json
import math
import sys

# ---------------------------------------------------------------------------------------
# Models and FLOPs


MODELS = {
    # GPT-2 small and XL (Hugging Face gpt2 and gpt2-xl shapes).
    "gpt2-124m": dict(family="gpt2", C=768, L=12, NH=12, V=50257, P=1024),
    "gpt2-1.5b": dict(family="gpt2", C=1600, L=48, NH=25, V=50257, P=1024),
    # A Llama-style 1B (the shape of Llama 3.2 1B: grouped-query attention, SwiGLU, tied head).
    "llama-1b": dict(family="llama", C=2048, L=16, NH=32, g=8, d=64, F=8192, V=128256, P=131072),
}


def layer_params(m):
    """Parameters of one layer's matrices (biases and norms not counted)."""
    C = m["C"]
    if m.get("family", "gpt2") == "gpt2":
        return 12 * C * C
    d, g, F, NH = m["d"], m["g"], m["F"], m["NH"]
    return 2 * C * NH * d + 2 * C * g * d + 3 * C * F


def query_width(m):
    return m["NH"] * m["d"] if m.get("family", "gpt2") != "gpt2" else m["C"]


def total_params(m):
    C, V = m["C"], m["V"]
    extra = m.get("P", 0) * C if m.get("family", "gpt2") == "gpt2" else 0
    return m["L"] * layer_params(m) + V * C + extra


def train_flops(m, rows, head_rows, pairs):
    """Forward plus backward FLOPs split into (layers, head, attention)."""
    return (6.0 * m["L"] * layer_params(m) * rows, 6.0 * m["V"] * m["C"] * head_rows,
            12.0 * query_width(m) * m["L"] * pairs)


def decode_flops(m, context):
    """Forward FLOPs of one sampled token at a given context length (KV cache)."""
    return 2.0 * m["L"] * layer_params(m) + 2.0 * m["V"] * m["C"] + 4.0 * query_width(m) * m["L"] * context


def group_shape(tokens_per_traj, group, trie_ratio):
    """Prompt and answer lengths of a group whose trie ratio (flat / trie tokens) is given:
    G trajectories of S tokens sharing a prompt of p tokens have ratio G S / (p + G (S - p)),
    so p = G S (ratio - 1) / (ratio (G - 1))."""
    S, G = tokens_per_traj, group
    if G <= 1:
        return 0.0, float(S)
    p = G * S * (trie_ratio - 1) / (trie_ratio * (G - 1))
    p = min(max(p, 0.0), float(S))
    return p, S - p


def group_counts(prompt, answer, group):
    """Rows, head rows and attention pairs of one group packed as a trie, and flat tokens."""
    p, a, G = prompt, answer, group
    rows = p + G * a
    pairs = p * (p + 1) / 2 + G * (a * p + a * (a + 1) / 2)
    return dict(rows=rows, head_rows=max(rows - G, 0), pairs=pairs, flat=G * (p + a))


# ---------------------------------------------------------------------------------------
# Small numerical helpers (no numpy)


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    if n == 0:
        return float("nan")
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def solve(a, b):
    """Solves the square system a x = b by Gaussian elimination with partial pivoting."""
    n = len(b)
    m = [list(map(float, row)) + [float(v)] for row, v in zip(a, b)]
    for c in range(n):
        piv = max(range(c, n), key=lambda r: abs(m[r][c]))
        m[c], m[piv] = m[piv], m[c]
        if abs(m[c][c]) < 1e-300:
            raise ValueError("singular system")
        for r in range(n):
            if r != c:
                f = m[r][c] / m[c][c]
                m[r] = [x - f * y for x, y in zip(m[r], m[c])]
    return [m[i][n] / m[i][i] for i in range(n)]


def least_squares(rows, ys, weights=None):
    """Weighted linear least squares: minimises sum w (row . x - y)^2."""
    k = len(rows[0])
    w = weights or [1.0] * len(ys)
    ata = [[sum(wi * r[i] * r[j] for r, wi in zip(rows, w)) for j in range(k)] for i in range(k)]
    aty = [sum(wi * r[i] * y for r, y, wi in zip(rows, ys, w)) for i in range(k)]
    return solve(ata, aty)


class SplitMix64:
    """The same seeded generator kat-dist uses, so simulations repeat exactly."""

    def __init__(self, seed):
        self.s = seed & 0xFFFFFFFFFFFFFFFF

    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        return z ^ (z >> 31)

    def uniform(self):
        return (self.next() >> 11) / float(1 << 53)


# ---------------------------------------------------------------------------------------
# Communication


def ring_allreduce(nbytes, p, alpha, bandwidth):
    """Seconds of a ring allreduce of nbytes over p ranks: 2 (p-1) latency steps and
    2 (p-1)/p of the bytes through each rank's link (the bus bandwidth bound)."""
    if p <= 1:
        return 0.0
    return 2 * (p - 1) * alpha + 2.0 * (p - 1) / p * nbytes / bandwidth


def hierarchical_allreduce(nbytes, ranks_per_node, nodes, shm, net, node_memory_bw=None):
    """Within each node over shared memory, then across nodes (one rank per node), then
    back within the node. A node's ranks share its memory bandwidth: a ring step moves
    each rank's share through memory, so with k ranks per node the shared-memory part
    takes at least 2 (k-1)/k x k x nbytes x 2 (read and write) / node bandwidth."""
    k = max(1, ranks_per_node)
    t_in = ring_allreduce(nbytes, k, shm["alpha"], shm["bandwidth"])
    if node_memory_bw and k > 1:
        t_in = max(t_in, 2.0 * (k - 1) / k * k * nbytes * 2 / node_memory_bw)
    t_out = ring_allreduce(nbytes, nodes, net["alpha"], net["bandwidth"])
    return t_in + t_out


def weight_tree_times(nbytes, leaders, link, copy_bw, ranks_per_node=1, node_memory_bw=None):
    """When each leader of the binary tree holds new weights (seconds after trainer 0
    starts publishing), and when the last rank has copied them.

    Trainer 0 writes its node's memory (nbytes / copy_bw), then sends to children 2i+1 and
    2i+2 at once: both share its link, so both arrive after 2 x nbytes / B + alpha (one child:
    nbytes / B + alpha). A leader forwards only a whole message. Every rank of a node then
    copies the weights; the node's ranks share its memory bandwidth."""
    ready = [0.0] * leaders
    ready[0] = nbytes / copy_bw
    for i in range(leaders):
        kids = [c for c in (2 * i + 1, 2 * i + 2) if c < leaders]
        for c in kids:
            ready[c] = ready[i] + link["alpha"] + len(kids) * nbytes / link["bandwidth"]
            if c > 0:
                ready[c] += nbytes / copy_bw  # the leader writes what it received into its node
    per_rank_copy = nbytes / copy_bw
    if node_memory_bw:
        per_rank_copy = max(per_rank_copy, ranks_per_node * nbytes / node_memory_bw)
    return ready, max(ready) + per_rank_copy


# ---------------------------------------------------------------------------------------
# Discrete-event simulation of an asynchronous run


DEFAULT_SIM = dict(
    trainers=1,              # trainer ranks (all in lockstep: they agree on every batch)
    rollouts=1,              # rollout ranks
    cores=2,                 # cores shared by the simulated ranks (processor sharing); None = one each
    background=0.0,          # other busy processes on those cores
    prompts=16,              # groups per step
    group_tokens=272.0,      # flat tokens of one group
    per_batch=4,             # groups a rollout rank decodes at a time
    gen_s_per_token=4e-5,    # core-seconds per generated flat token on a rollout rank
    gen_fixed_s=0.0,         # core-seconds per decode batch besides its tokens
    mux_s_per_token=None,    # core-seconds per token when a trainer generates (None: the same)
    gen_jitter=0.15,         # relative spread (uniform +-) of a group's generation work
    env_latency_s=0.0,       # seconds per group waiting for the environment (no CPU)
    train_s=0.3,             # core-seconds of forward+backward per step (one trainer's share)
    micro_batches=1,         # micro-batches per step; intake happens between them
    allreduce_s=0.0,         # gradient sum (waiting, no CPU)
    optimizer_s=0.005,       # core-seconds
    publish_s=0.001,         # core-seconds trainer 0 spends publishing weights
    step_overhead_s=0.0,     # core-seconds per step besides the above (metrics, report)
    sync_delay_s=0.0,        # seconds from publishing until the rollout ranks' nodes hold the weights
    install_s=0.0,           # core-seconds a rollout rank spends copying new weights
    buffer_groups=16,        # groups each trainer buffers
    max_staleness=4,
    multiplex=False,
    partial=False,           # rollout ranks take new weights mid-batch
    partial_recompute_s=0.0, # core-seconds to recompute the KV cache when they do
    steps=40,
    warmup_steps=5,
    seed=1,
)


class Simulation:
    """One run, event by event. CPU work (training, generation, copies) is a job on a pool
    of `cores` cores shared equally by the busy jobs (processor sharing, as the kernel's
    scheduler roughly does for ranks that never block). Waiting (a rendezvous send, the
    gradient sum, the environment) takes no CPU."""

    def __init__(self, cfg):
        self.c = dict(DEFAULT_SIM)
        unknown = set(cfg) - set(DEFAULT_SIM)
        if unknown:
            raise ValueError(f"unknown simulation settings: {sorted(unknown)}")
        self.c.update(cfg)
        c = self.c
        self.rng = SplitMix64(c["seed"])
        self.now = 0.0
        self.jobs = {}          # job id -> [remaining core-seconds, callback]
        self.next_job = 0
        self.timers = []        # heap of (time, seq, callback)
        self.seq = 0
        self.version = 0
        self.published = [(0.0, 0)]  # (time the rollout ranks' nodes hold it, version)
        self.buffer = []        # (version, source, sequence, tokens, token_versions)
        self.waiting_sends = []  # rollout ranks blocked in a synchronous send, in order
        self.steps = []
        self.capacity = c["buffer_groups"] * max(1, round(c["trainers"]))
        self.dropped = 0
        self.generated_tokens = 0.0
        self.mux_groups = 0
        self.trainer_state = None
        self.waiter = None

    # --- CPU as processor sharing
    def speed(self):
        busy = len(self.jobs) + self.c["background"]
        cores = self.c["cores"]
        if cores is None or busy <= 0:
            return 1.0
        return min(1.0, cores / busy)

    def add_job(self, work, callback):
        jid = self.next_job
        self.next_job += 1
        self.jobs[jid] = [max(work, 0.0), callback]
        return jid

    def at(self, t, callback):
        self.seq += 1
        heapq.heappush(self.timers, (t, self.seq, callback))

    def run_until(self, stop):
        while not stop():
            s = self.speed()
            t_job, jid = math.inf, None
            for k, (rem, _) in self.jobs.items():
                t = self.now + rem / s
                if t < t_job:
                    t_job, jid = t, k
            t_timer = self.timers[0][0] if self.timers else math.inf
            t = min(t_job, t_timer)
            if t == math.inf:
                raise RuntimeError("simulation stalled: nothing left to happen")
            dt = t - self.now
            for k in self.jobs:
                self.jobs[k][0] -= dt * s
            self.now = t
            if t_job <= t_timer:
                _, cb = self.jobs.pop(jid)
                cb()
            else:
                _, _, cb = heapq.heappop(self.timers)
                cb()

    # --- weights
    def newest_version_at_nodes(self):
        v = 0
        for t, ver in self.published:
            if t <= self.now + 1e-12:
                v = max(v, ver)
        return v

    # --- rollout ranks
    def start_rollouts(self):
        c = self.c
        self.rollout = []
        for r in range(int(c["rollouts"])):
            st = dict(rank=r, version=0, sequence=0, ready=[], batch_start_version=0)
            self.rollout.append(st)
            self.begin_batch(st)

    def group_work(self, per_token):
        c = self.c
        j = 1.0 + c["gen_jitter"] * (2 * self.rng.uniform() - 1)
        return c["group_tokens"] * per_token * j

    def begin_batch(self, st):
        c = self.c
        v = self.newest_version_at_nodes()
        work = 0.0
        if v > st["version"]:
            st["version"] = v
            work += c["install_s"]
        n = int(c["per_batch"])
        work += sum(self.group_work(c["gen_s_per_token"]) for _ in range(n)) + c["gen_fixed_s"]
        st["batch_start_version"] = st["version"]
        st["batch_start_time"] = self.now

        def done():
            versions = [st["batch_start_version"]]
            if c["partial"]:
                # Weights published while the batch decoded were taken between decode steps.
                newest = self.newest_version_at_nodes()
                if newest > st["version"]:
                    versions.append(newest)
                    st["version"] = newest
            st["ready"] = [(versions, c["group_tokens"]) for _ in range(n)]
            if c["env_latency_s"] > 0:
                self.at(self.now + c["env_latency_s"] * n, lambda: self.send_next(st))
            else:
                self.send_next(st)

        extra = 0.0
        if c["partial"]:
            # One KV-cache recompute per update that lands within the batch (estimated by
            # the updates published in the previous batch's time).
            extra = c["partial_recompute_s"] * self.updates_during(work)
        self.add_job(work + extra, done)

    def updates_during(self, work):
        if len(self.steps) < 2:
            return 0
        per_step = (self.steps[-1]["end"] - self.steps[0]["end"]) / max(1, len(self.steps) - 1)
        return work / max(per_step, 1e-9)

    def send_next(self, st):
        if not st["ready"]:
            self.begin_batch(st)
            return
        self.waiting_sends.append(st)
        if self.trainer_state in ("collect",):
            self.intake()

    def intake(self):
        """The trainers take groups from the rendezvous sends while their buffers have room."""
        moved = True
        while moved and self.waiting_sends and len(self.buffer) < self.capacity:
            moved = False
            st = self.waiting_sends.pop(0)
            versions, tokens = st["ready"].pop(0)
            self.buffer.append((min(versions), st["rank"], st["sequence"], tokens, versions))
            st["sequence"] += 1
            self.generated_tokens += tokens
            moved = True
            # The next send of that rank starts right away (or its next batch).
            self.send_next(st)
        if self.waiter is not None and len(self.buffer) >= self.c["prompts"]:
            w, self.waiter = self.waiter, None
            # The trainer sees it at its next poll (it sleeps 1 ms between polls).
            self.at(self.now + 0.5e-3, w)

    # --- trainers
    def start_trainers(self):
        self.step_start = self.now
        self.idle = 0.0
        self.generating = 0.0
        self.collect()

    def collect(self):
        c = self.c
        self.trainer_state = "collect"
        self.intake()
        # Drop stale groups, then take the oldest ones.
        keep = []
        for g in self.buffer:
            if self.version - g[0] > c["max_staleness"]:
                self.dropped += 1
            else:
                keep.append(g)
        self.buffer = sorted(keep, key=lambda g: (g[0], g[1], g[2]))
        if len(self.buffer) >= c["prompts"]:
            batch = self.buffer[:int(c["prompts"])]
            self.buffer = self.buffer[int(c["prompts"]):]
            self.train(batch)
            return
        if c["multiplex"]:
            t0 = self.now
            per_token = c["mux_s_per_token"] or c["gen_s_per_token"]
            n = max(1, round(c["trainers"]))
            work = self.group_work(per_token)

            def made():
                self.generating += self.now - t0
                for k in range(n):
                    self.buffer.append((self.version, -1 - k, self.mux_groups, c["group_tokens"], [self.version]))
                    self.mux_groups += 1
                self.collect()
            self.trainer_state = "generating"
            self.add_job(work, made)
        else:
            # Wait (polling) until a rollout rank hands a group over.
            t0 = self.now
            self.trainer_state = "collect"

            def arrived():
                self.waiter = None
                self.idle += self.now - t0
                self.collect()
            self.waiter = arrived

    def train(self, batch):
        c = self.c
        self.trainer_state = "train"
        lags = [self.version - g[0] for g in batch]
        token_lags = [self.version - sum(g[4]) / len(g[4]) for g in batch]
        wait = self.now - self.step_start
        t_train0 = self.now
        n_mb = max(1, int(c["micro_batches"]))

        def micro(k):
            if k == n_mb:
                self.at(self.now + c["allreduce_s"], after_allreduce)
                return
            if k > 0:
                # The trainer serves its rollout ranks before each micro-batch.
                self.trainer_state = "collect"
                self.intake()
                self.trainer_state = "train"
            self.add_job(c["train_s"] / n_mb, lambda: micro(k + 1))

        def after_allreduce():
            self.add_job(c["optimizer_s"] + c["publish_s"] + c["step_overhead_s"], finished)

        def finished():
            self.version += 1
            self.published.append((self.now + c["sync_delay_s"], self.version))
            hist = [0] * (c["max_staleness"] + 1)
            for lag in lags:
                hist[min(lag, c["max_staleness"])] += 1
            self.steps.append(dict(end=self.now, wall=self.now - self.step_start, wait=wait, idle=self.idle,
                                   generating=self.generating, train=self.now - t_train0, lags=lags,
                                   token_lag=sum(token_lags) / len(token_lags), hist=hist,
                                   trained_tokens=sum(g[3] for g in batch)))
            self.step_start = self.now
            self.idle = 0.0
            self.generating = 0.0
            if len(self.steps) < c["steps"]:
                self.collect()
            else:
                self.trainer_state = "done"
        micro(0)

    def run(self):
        self.start_rollouts()
        self.start_trainers()
        self.run_until(lambda: self.trainer_state == "done")
        return self.summary()

    def summary(self):
        c = self.c
        s = self.steps[c["warmup_steps"]:]
        wall = s[-1]["end"] - self.steps[c["warmup_steps"] - 1]["end"] if c["warmup_steps"] > 0 else s[-1]["end"]
        hist = [sum(x["hist"][k] for x in s) for k in range(c["max_staleness"] + 1)]
        n = sum(hist)
        return dict(
            step_s=wall / len(s),
            trainer_idle=sum(x["idle"] for x in s) / wall,
            trainer_generating=sum(x["generating"] for x in s) / wall,
            wait_s=sum(x["wait"] for x in s) / len(s),
            train_s=sum(x["train"] for x in s) / len(s),
            trained_tokens_per_s=sum(x["trained_tokens"] for x in s) / wall,
            generated_tokens_per_s=self.generated_tokens / self.now,
            staleness_hist=[h / n for h in hist],
            staleness_mean=sum(k * h for k, h in enumerate(hist)) / n,
            token_lag_mean=sum(x["token_lag"] for x in s) / len(s),
            dropped_groups=self.dropped,
            multiplexed_groups=self.mux_groups,
        )


def simulate(cfg):
    return Simulation(cfg).run()


# ---------------------------------------------------------------------------------------
# Fitting


def fit_compute(rows, sgemm=None):
    """Kernel rates (FLOP/s) per width from `kat-bench compute` rows: time = layers/r_lin +
    head/r_head + attention/r_attn, solved per width (the head rate only where a head-heavy
    batch was measured; elsewhere the same share of r_lin), then r(C) = r_inf C/(C + C_half)
    through the widths."""
    timed = [r for r in rows if r.get("best_s") is not None]
    widths = sorted({r["C"] for r in timed})
    per = {}
    head_share = None
    for C in widths:
        rs = [r for r in timed if r["C"] == C]
        has_head = any(r["head_gflop"] > r["layer_gflop"] * 0.5 for r in rs)
        if has_head:
            a = [[r["layer_gflop"] * 1e9, r["head_gflop"] * 1e9, r["attn_gflop"] * 1e9] for r in rs]
            x = least_squares(a, [r["best_s"] for r in rs], [1 / r["best_s"] ** 2 for r in rs])
            per[C] = dict(lin=1 / x[0], head=1 / x[1], attn=1 / x[2])
            head_share = per[C]["head"] / per[C]["lin"]
        else:
            a = [[(r["layer_gflop"] + r["head_gflop"]) * 1e9, r["attn_gflop"] * 1e9] for r in rs]
            x = least_squares(a, [r["best_s"] for r in rs], [1 / r["best_s"] ** 2 for r in rs])
            per[C] = dict(lin=1 / x[0], attn=1 / x[1])
    for C in per:
        per[C].setdefault("head", per[C]["lin"] * (head_share or 1.0))

    def saturating(part):
        pts = [(C, per[C][part]) for C in widths]
        if len(pts) == 1:
            return dict(r_inf=pts[0][1], c_half=0.0)
        # Fit 1/r = (1/r_inf) + (c_half/r_inf) / C: linear in 1/C.
        a = [[1.0, 1.0 / C] for C, _ in pts]
        x = least_squares(a, [1 / r for _, r in pts])
        r_inf = 1 / x[0] if x[0] > 0 else max(r for _, r in pts)
        c_half = max(0.0, x[1] * r_inf)
        if sgemm:
            r_inf = min(r_inf, sgemm * 1e9)
        return dict(r_inf=r_inf, c_half=c_half)
    return dict(per_width={str(C): v for C, v in per.items()}, lin=saturating("lin"), head=saturating("head"),
                attn=saturating("attn"), sgemm=sgemm)


def rate(compute, part, C):
    f = compute[part]
    return f["r_inf"] * C / (C + f["c_half"])


def compute_seconds(compute, m, rows, head_rows, pairs):
    lin, head, attn = train_flops(m, rows, head_rows, pairs)
    C = m["C"]
    return lin / rate(compute, "lin", C) + head / rate(compute, "head", C) + attn / rate(compute, "attn", C)


def fit_link(rows, ranks=2):
    """Latency and bandwidth of a link from `kat-bench allreduce --sweep` rows: the one-way
    times give the point-to-point (alpha, B); the allreduce times the ring's (alpha, B):
    t = 2 (p-1) alpha + 2 (p-1)/p n / B. Fitted to the best times, weighted by relative error."""
    def fit(xs, ys, lat_steps, byte_factor):
        a = [[lat_steps, byte_factor * x] for x in xs]
        sol = least_squares(a, ys, [1 / y ** 2 for y in ys])
        alpha = max(sol[0], 1e-7)
        bw = 1 / sol[1] if sol[1] > 0 else float("inf")
        return dict(alpha=alpha, bandwidth=bw)
    p = ranks
    xs = [r["bytes"] for r in rows]
    p2p = fit(xs, [r["oneway_best_s"] for r in rows], 1.0, 1.0)
    ar = fit(xs, [r["allreduce_best_s"] for r in rows], 2 * (p - 1), 2 * (p - 1) / p)
    return dict(p2p=p2p, allreduce=ar)


# ---------------------------------------------------------------------------------------
# CLI


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("simulate", help="one simulated asynchronous run")
    s.add_argument("--input", required=True, help="JSON object of simulation settings (others default)")
    f = sub.add_parser("fit", help="fitted parameters from the suite's measurements")
    f.add_argument("--input", required=True)
    p = sub.add_parser("project", help="projections at 8, 64 and 512 nodes")
    p.add_argument("--input", required=True)
    p.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    try:
        with open(args.input) as fh:
            data = json.load(fh)
    except (OSError, ValueError) as e:
        print(f"scaling_model: cannot read {args.input}: {e}", file=sys.stderr)
        return 2
    if args.cmd == "simulate":
        try:
            print(json.dumps(simulate(data), sort_keys=True))
        except ValueError as e:
            print(f"scaling_model: {args.input}: {e}", file=sys.stderr)
            return 2
        return 0
    import scaling_fit  # noqa: E402  (the fit and projections, beside this file)
    if args.cmd == "fit":
        print(json.dumps(scaling_fit.fit(data), indent=1, sort_keys=True))
    else:
        params = scaling_fit.fit(data)
        print(json.dumps(scaling_fit.project(params, quick=args.quick), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
