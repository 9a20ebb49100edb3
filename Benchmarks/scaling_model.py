#!/usr/bin/env python3
"""A performance model of kat-dist, fitted from the scaling suite's measurements.

    python3 Benchmarks/scaling_model.py simulate --input CONFIG.json     one simulated run (JSON out)
    python3 Benchmarks/scaling_model.py fit-compute --input ROWS.json    kernel rates from `kat-bench compute` rows
    python3 Benchmarks/scaling_model.py fit --input MEASUREMENTS.json    fitted parameters (JSON out)
    python3 Benchmarks/scaling_model.py project --input MEASUREMENTS.json [--quick]

Python standard library only. The parts (Docs/scaling.md states them with their sources):

- Compute: FLOPs counted as everywhere in kat-dist (forward plus backward: 6 x the layers'
  parameters per computed token, 6 V C per row whose next-token distribution is computed,
  12 (NH d) L per (query, key) pair) over kernel rates measured per part (linear, head,
  attention) at each width C, with the width dependence r(C) = r_inf C / (C + C_half).
- Communication: latency plus bytes over bandwidth per link type. kat-dist's in-place
  allreduce runs Open MPI's binomial algorithm: ceil(log2 p) rounds up a tree and as many
  down, each moving the whole message, 2 ceil(log2 p) (alpha + n / B) + ceil(log2 p) n / S
  (S the in-place sum); the rounds within a node use shared memory, the rest the network.
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


for _name, _m in MODELS.items():
    _m["name"] = _name


def ranks_cores(w, m):
    """Cores (BLAS threads) per rank of model m in projection settings w."""
    c = w["cores_per_rank"]
    return c.get(m.get("name"), 1) if isinstance(c, dict) else c


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


def binomial_allreduce(nbytes, p, alpha, bandwidth, op_bw):
    """Seconds of kat-dist's allreduce of nbytes over p ranks on one kind of link. kat-dist
    sums in place with MPI_Iallreduce, which Open MPI runs in its libnbc component, and libnbc
    takes its binomial algorithm for every in-place call (and for any call on fewer than 4
    ranks): ceil(log2 p) rounds up a binomial tree, each moving the whole message and then
    summing it, and ceil(log2 p) rounds down. So 2 ceil(log2 p) (alpha + n / B) + ceil(log2 p)
    n / op_bw, against the ring's 2 (p-1) alpha + 2 (p-1)/p n / B."""
    if p <= 1:
        return 0.0
    r = math.ceil(math.log2(p))
    return 2 * r * (alpha + nbytes / bandwidth) + r * nbytes / op_bw


def binomial_hierarchical(nbytes, ranks_per_node, nodes, shm, net, op_bw, node_memory_bw=None):
    """The binomial allreduce over nodes x ranks_per_node ranks placed node by node: its first
    log2(ranks per node) rounds pair ranks of one node (shared memory; the pairs of a round
    share the node's memory bandwidth), the rest pair nodes over the network."""
    k = max(1, ranks_per_node)
    r_in = math.ceil(math.log2(k)) if k > 1 else 0
    r_out = math.ceil(math.log2(nodes)) if nodes > 1 else 0
    t = 0.0
    for r in range(r_in):
        pairs = k / 2 ** (r + 1)
        step = shm["alpha"] + nbytes / shm["bandwidth"]
        if node_memory_bw:
            step = max(step, pairs * nbytes * 2 / node_memory_bw)
        t += 2 * step
    t += 2 * r_out * (net["alpha"] + nbytes / net["bandwidth"])
    return t + (r_in + r_out) * nbytes / op_bw


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
    per_batch=4,             # groups a rollout rank (or a multiplexing trainer) decodes at a time
    in_flight=None,          # groups a rollout rank may have sent and not yet taken (None: kat-dist's rule,
                             # its share of a batch, at most buffer_groups)
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
    admission=True,          # rollout ranks start groups only within their share (kat-dist's rollout.admission)
    multiplex=False,
    partial=False,           # rollout ranks take new weights mid-batch
    partial_recompute_s=0.0, # core-seconds to recompute the KV cache when they do
    steps=40,
    warmup_steps=5,
    seed=1,
)


# Settings that must be at least 1, whole numbers, and those that may be null.
SIM_AT_LEAST_ONE = {"trainers", "prompts", "per_batch", "micro_batches", "buffer_groups", "steps", "in_flight"}
SIM_WHOLE = {"trainers", "rollouts", "prompts", "per_batch", "in_flight", "micro_batches", "buffer_groups", "max_staleness",
             "steps", "warmup_steps", "seed"}
SIM_NULLABLE = {"cores", "in_flight", "mux_s_per_token"}
# A simulated run is event by event: more steps than this take minutes.
SIM_MAX_STEPS = 10000


def check_sim_settings(cfg):
    """Raises ValueError naming the first setting of a user's simulation (the `simulate`
    command) of the wrong type or range."""
    for k, v in cfg.items():
        d = DEFAULT_SIM[k]
        if v is None and k in SIM_NULLABLE:
            continue
        if isinstance(d, bool):
            if not isinstance(v, bool):
                raise ValueError(f"{k} must be true or false, got {v!r}")
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (math.inf, -math.inf):
            raise ValueError(f"{k} must be a number, got {v!r}")
        if k in SIM_WHOLE and v != int(v):
            raise ValueError(f"{k} must be a whole number, got {v!r}")
        if k in SIM_AT_LEAST_ONE and v < 1:
            raise ValueError(f"{k} must be at least 1, got {v!r}")
        if k == "cores" and v <= 0:
            raise ValueError(f"cores must be above 0 (or null: one each), got {v!r}")
        if v < 0:
            raise ValueError(f"{k} must not be negative, got {v!r}")
    c = dict(DEFAULT_SIM, **cfg)
    if c["steps"] > SIM_MAX_STEPS:
        raise ValueError(f"steps must be at most {SIM_MAX_STEPS}, got {c['steps']}")
    if c["train_s"] + c["optimizer_s"] + c["publish_s"] + c["step_overhead_s"] + c["allreduce_s"] <= 0:
        raise ValueError("a step must take some time: train_s, optimizer_s, publish_s, step_overhead_s and allreduce_s are all 0")
    if c["gen_s_per_token"] <= 0 and c["gen_fixed_s"] <= 0 and c["env_latency_s"] <= 0:
        raise ValueError("generating a group must take some time: gen_s_per_token, gen_fixed_s and env_latency_s are all 0")
    if c["warmup_steps"] >= c["steps"]:
        raise ValueError(f"steps ({c['steps']}) must exceed warmup_steps ({c['warmup_steps']})")
    if c["rollouts"] < 1 and not c["multiplex"]:
        raise ValueError("with no rollout ranks the trainers must generate: set multiplex true")


class Simulation:
    """One run, event by event. CPU work (training, generation, copies) is a job on a pool
    of `cores` cores shared equally by the busy jobs (processor sharing, as the kernel's
    scheduler roughly does for ranks that never block). Waiting (a rendezvous send, the
    gradient sum, the environment) takes no CPU."""

    def __init__(self, cfg):
        self.c = dict(DEFAULT_SIM)
        if not isinstance(cfg, dict):
            raise ValueError("simulation settings must be a JSON object")
        unknown = set(cfg) - set(DEFAULT_SIM)
        if unknown:
            raise ValueError(f"unknown simulation settings: {sorted(unknown)}")
        self.c.update(cfg)
        c = self.c
        self.rng = SplitMix64(c["seed"])
        self.now = 0.0
        self.jobs = {}          # job id -> [remaining core-seconds per rank, callback, ranks]
        self.next_job = 0
        self.timers = []        # heap of (time, seq, callback)
        self.seq = 0
        self.version = 0
        self.published = [(0.0, 0, 0)]  # (time the rollout ranks' nodes hold it, version, groups the trainers made by then)
        self.buffer = []        # (version, source, sequence, tokens, token_versions)
        self.waiting_sends = []  # (rank state, versions, tokens): groups sent and not yet taken, in order
        rollouts = max(1, int(c["rollouts"]))
        self.in_flight = c["in_flight"] or max(1, min(c["buffer_groups"], -(-int(c["prompts"]) // rollouts)))
        self.parked = None       # the trainers' own decoding, parked while they train (multiplexing)
        self.mux_job = None
        self.steps = []
        self.capacity = c["buffer_groups"] * max(1, round(c["trainers"]))
        if self.capacity < c["prompts"] and not c["multiplex"]:
            # kat-dist would wait for ever too: the trainers' buffers cannot hold one batch.
            raise ValueError(f"buffers of {self.capacity} groups cannot hold a batch of {c['prompts']} (raise buffer_groups)")
        self.dropped = 0
        self.generated_tokens = 0.0
        self.mux_groups = 0
        self.trainer_state = None
        self.waiter = None
        self.cpu = 0.0          # core-seconds the simulated ranks ran
        self.throttled = []     # rollout ranks waiting for newer weights (admission control)
        self.throttled_s = 0.0  # rank-seconds spent so

    # --- CPU as processor sharing
    def speed(self):
        busy = sum(j[2] for j in self.jobs.values()) + self.c["background"]
        cores = self.c["cores"]
        if cores is None or busy <= 0:
            return 1.0
        return min(1.0, cores / busy)

    def add_job(self, work, callback, ranks=1):
        """CPU work of `ranks` ranks that each do `work` core-seconds in step (the trainers
        of a lockstep step); `callback` when they are done."""
        jid = self.next_job
        self.next_job += 1
        self.jobs[jid] = [max(work, 0.0), callback, ranks]
        return jid

    def at(self, t, callback):
        self.seq += 1
        heapq.heappush(self.timers, (t, self.seq, callback))

    def run_until(self, stop):
        while not stop():
            s = self.speed()
            t_job, jid = math.inf, None
            for k, (rem, _, _) in self.jobs.items():
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
            self.cpu += dt * s * sum(j[2] for j in self.jobs.values())
            self.now = t
            if t_job <= t_timer:
                _, cb, _ = self.jobs.pop(jid)
                cb()
            else:
                _, _, cb = heapq.heappop(self.timers)
                cb()

    # --- weights
    def newest_version_at_nodes(self):
        return self.newest_at_nodes()[0]

    def newest_at_nodes(self):
        """The newest publication the rollout ranks' nodes hold: (version, groups the
        trainers had made themselves when it was published)."""
        v, made = 0, 0
        for t, ver, mux in self.published:
            if t <= self.now + 1e-12 and ver >= v:
                v, made = ver, mux
        return v, made

    def admitted(self, st):
        """kat-dist's admission control: the groups a rollout rank may have started,
        `publications` steps after it first held weights, are its share of
        (publications + max_staleness + 1) x prompts less the groups the trainers made
        themselves meanwhile (one update per step, so max_staleness steps ahead)."""
        c = self.c
        if not c["admission"]:
            return math.inf
        v, made = self.newest_at_nodes()
        total = max(0, (v + c["max_staleness"] + 1) * int(c["prompts"]) - made)
        ranks = int(c["rollouts"])
        return total // ranks + (1 if st["rank"] < total % ranks else 0)

    def release_throttled(self):
        """New weights reached the nodes: throttled ranks look again."""
        waiting, self.throttled = self.throttled, []
        for st in waiting:
            self.throttled_s += self.now - st["throttled_since"]
            st["throttled"] = False
            self.begin_batch(st)

    # --- rollout ranks
    def start_rollouts(self):
        c = self.c
        self.rollout = []
        for r in range(int(c["rollouts"])):
            st = dict(rank=r, version=0, sequence=0, ready=[], batch_start_version=0, started=0, pending=0,
                      busy=False, throttled=False)
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
        allowed = self.admitted(st)
        if st["started"] >= allowed:
            # Wait for newer weights rather than make groups that would be stale.
            st["throttled_since"] = self.now
            st["throttled"] = True
            self.throttled.append(st)
            if work > 0:
                self.add_job(work, lambda: None)
            return
        n = int(min(c["per_batch"], allowed - st["started"]))
        st["started"] += n
        work += sum(self.group_work(c["gen_s_per_token"]) for _ in range(n)) + c["gen_fixed_s"]
        st["batch_start_version"] = st["version"]
        st["batch_start_time"] = self.now
        st["busy"] = True

        def done():
            st["busy"] = False
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

    def send_next(self, st, intake=True):
        """A rollout rank's loop: it sends its ready groups while fewer than `in_flight`
        wait to be taken, and decodes its next batch once none is ready (and it may)."""
        while st["ready"] and st["pending"] < self.in_flight:
            versions, tokens = st["ready"].pop(0)
            self.waiting_sends.append((st, versions, tokens))
            st["pending"] += 1
        if not st["ready"] and not st["busy"] and not st["throttled"] and st["pending"] < self.in_flight:
            self.begin_batch(st)
        if intake and self.trainer_state in ("collect", "generating"):
            # A collecting trainer polls every millisecond; a generating one between decode steps.
            self.intake()

    def intake(self):
        """The trainers take the groups sent to them while their buffers have room."""
        took = False
        while self.waiting_sends and len(self.buffer) < self.capacity:
            st, versions, tokens = self.waiting_sends.pop(0)
            self.buffer.append((min(versions), st["rank"], st["sequence"], tokens, versions))
            st["sequence"] += 1
            st["pending"] -= 1
            self.generated_tokens += tokens
            took = True
            # That rank sends its next group, or starts its next batch.
            self.send_next(st, intake=False)
        if self.waiter is not None and len(self.buffer) >= self.c["prompts"]:
            w, self.waiter = self.waiter, None
            # The trainer sees it at its next poll (it sleeps 1 ms between polls).
            self.at(self.now + 0.5e-3, w)
        if self.trainer_state == "generating" and took and (
                len(self.buffer) >= self.c["prompts"] or round(self.c["trainers"]) > 1):
            # A multiplexing trainer parks its decoding as soon as waiting would not be
            # idle: one trainer when the batch is there, several when a group came.
            self.park()

    # --- trainers
    def start_trainers(self):
        self.step_start = self.now
        self.idle = 0.0
        self.generating = 0.0
        self.collect()

    def collect(self):
        c = self.c
        self.trainer_state = "collect"
        while True:
            self.intake()
            # Drop stale groups (which frees room for more), then take the oldest ones.
            keep = []
            for g in self.buffer:
                if self.version - g[0] > c["max_staleness"]:
                    self.dropped += 1
                else:
                    keep.append(g)
            freed = len(keep) < len(self.buffer)
            self.buffer = sorted(keep, key=lambda g: (g[0], g[1], g[2]))
            if len(self.buffer) >= c["prompts"] or not (freed and self.waiting_sends):
                break
        if len(self.buffer) >= c["prompts"]:
            batch = self.buffer[:int(c["prompts"])]
            self.buffer = self.buffer[int(c["prompts"]):]
            self.train(batch)
            return
        if c["multiplex"]:
            self.generate_while_waiting()
        else:
            # Wait (polling) until a rollout rank hands a group over.
            t0 = self.now
            self.trainer_state = "collect"

            def arrived():
                self.waiter = None
                self.idle += self.now - t0
                self.collect()
            self.waiter = arrived

    def generate_while_waiting(self):
        """Multiplexing: each trainer decodes per_batch groups of its own, or continues its
        parked decoding (with a KV-cache recompute when the weights changed since, or given
        up without partial rollouts or when its first tokens would be stale)."""
        c = self.c
        n = max(1, round(c["trainers"]))
        m = max(1, min(c["per_batch"], c["buffer_groups"], int(c["prompts"])))
        p = self.parked
        if p is not None and p["version"] != self.version:
            if c["partial"] and self.version - p["versions"][0] <= c["max_staleness"]:
                p["remaining"] += c["partial_recompute_s"]
                p["versions"].append(self.version)
                p["version"] = self.version
            else:
                p = None
        if p is None:
            per_token = c["mux_s_per_token"] or c["gen_s_per_token"]
            p = dict(remaining=sum(self.group_work(per_token) for _ in range(m)) + c["gen_fixed_s"],
                     version=self.version, versions=[self.version], groups=m)
        self.parked = None
        t0 = self.now

        def made():
            self.mux_job = None
            self.generating += self.now - t0
            for k in range(n):
                for _ in range(p["groups"]):
                    self.buffer.append((p["versions"][0], 10 ** 12 + k, self.mux_groups, c["group_tokens"], list(p["versions"])))
                    self.mux_groups += 1
                    self.generated_tokens += c["group_tokens"]
            self.collect()
        self.trainer_state = "generating"
        self.mux_job = (self.add_job(p["remaining"], made), p, t0)

    def park(self):
        jid, p, t0 = self.mux_job
        self.mux_job = None
        p["remaining"] = self.jobs.pop(jid)[0]
        self.parked = p
        self.generating += self.now - t0
        self.trainer_state = "collect"
        self.at(self.now + 1e-6, self.collect)

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
            self.add_job(c["train_s"] / n_mb, lambda: micro(k + 1), ranks=max(1, round(c["trainers"])))

        def after_allreduce():
            self.add_job(c["optimizer_s"] + c["publish_s"] + c["step_overhead_s"], finished, ranks=max(1, round(c["trainers"])))

        def finished():
            self.version += 1
            self.published.append((self.now + c["sync_delay_s"], self.version, self.mux_groups))
            self.at(self.now + c["sync_delay_s"], self.release_throttled)
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
            throttled_share=self.throttled_s / max(1, int(self.c["rollouts"])) / max(self.now, 1e-12),
            multiplexed_groups=self.mux_groups,
            cores_used=self.cpu / self.now,
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
# The suite's runs, as the model sees them

# kat-dist's default model (the online runs) and the trainer-scaling runs' model.
DEFAULT_MODEL = dict(family="gpt2", C=128, L=4, NH=4, V=260, P=128)
OFFLINE_MODEL = dict(family="gpt2", C=128, L=4, NH=4, V=260, P=256)
FRAMING = 1448.0 / 1514.0  # TCP payload per Ethernet frame at MTU 1500: what a rate-limited link carries
HEADER = 64                # bytes of a weights message before the parameters


def available(cores, background):
    """Cores left to the suite's ranks while other processes used `background` of them."""
    return max(0.1, cores - background)


def speed(cores, background, busy):
    """Share of a core each of `busy` ranks gets (processor sharing)."""
    return min(1.0, available(cores, background) / max(busy, 1e-9))


def offline_shards(run, workload):
    """Rows, head rows and attention pairs of each trainer's shard of an offline step, as
    kat-dist splits a trie (`Trie.shards`): groups of G answers to one prompt are units of
    cost sum(depth + 1); while a unit costs more than a fair share (total / T) it is cut
    below its prompt into G answers that each repeat the prompt; then units go, largest
    first, to the least loaded trainer."""
    g, P, A = workload["group"], workload["prompt"], workload["answer"]
    T = run["trainers"]
    groups = run["trajectories_per_step"] // g
    prompt_cost = P * (P + 1) // 2
    answer_cost = A * P + A * (A + 1) // 2
    # A unit: (cost, repeated prefix rows, rows, head rows, pairs, cuttable).
    whole = group_counts(P, A, g)
    units = [(prompt_cost + g * answer_cost, 0, whole["rows"], whole["head_rows"], whole["pairs"], g > 1) for _ in range(groups)]
    fair = max(1, sum(u[0] for u in units) // T)
    while True:
        cands = [i for i, u in enumerate(units) if u[5] and u[0] > fair and len(units) < 64 * T]
        if not cands:
            break
        i = max(cands, key=lambda j: units[j][0])
        units.pop(i)
        units += [(answer_cost, P, P + A, P + A - 1, prompt_cost + answer_cost, False) for _ in range(g)]
    load = [0] * T
    shards = [dict(rows=0, head_rows=0, pairs=0) for _ in range(T)]
    for u in sorted(units, key=lambda u: -u[0]):
        k = min(range(T), key=lambda j: (load[j], j))
        load[k] += u[0] + u[1]
        for key, v in zip(("rows", "head_rows", "pairs"), u[2:5]):
            shards[k][key] += v
    return shards


def shared_finish(works, cores):
    """When the last of several ranks finishes, each with `works` CPU seconds, sharing
    `cores` cores equally among those still working (processor sharing): a rank that has
    finished its shard waits in the allreduce and yields its core (mpi_yield_when_idle)."""
    t, done, ws = 0.0, 0.0, sorted(works)
    for i, w in enumerate(ws):
        t += (w - done) / min(1.0, cores / (len(ws) - i))
        done = w
    return t


def online_groups(run):
    """Prompt and answer lengths of an online run's groups, from its metrics: G trajectories
    of prompt p and answer a give G (p + a) flat and p + G a trie tokens per group."""
    g = 8
    groups = run["trajectories"] / g
    f, t = run["tokens_flat"] / groups, run["tokens_trie"] / groups
    a = max((t - f / g) / (g - 1), 1.0)
    return groups, max(f / g - a, 1.0), a


def fit_offline(runs, compute, workload):
    """CPU seconds of one trainer's step = kappa x (FLOP-model seconds of its shard) + c0,
    fitted on the one-trainer runs (strong and weak batch sizes). kappa holds what the
    FLOP count leaves out (the loss, planning); c0 the per-step work beside the model
    (metrics, the report). Also the optimizer's CPU seconds per parameter."""
    ones = [r for r in runs if r["trainers"] == 1]
    xs, ys = [], []
    for r in ones:
        sh = offline_shards(r, workload)[0]
        xs.append(compute_seconds(compute, OFFLINE_MODEL, sh["rows"], sh["head_rows"], sh["pairs"]))
        ys.append(r["step_wall_s"] * speed(r["cores"], r["background_cores"], 1))
    kappa, c0 = median([y / x for x, y in zip(xs, ys)]), 0.0
    if len(ones) >= 2 and abs(xs[0] - xs[-1]) > 0.2 * max(xs):
        k2, c2 = least_squares([[x, 1.0] for x in xs], ys)
        if k2 > 0 and c2 >= 0:
            kappa, c0 = k2, c2
    opt = median([r["t_optimizer"] * speed(r["cores"], r["background_cores"], 1) for r in ones]) / total_params(OFFLINE_MODEL)
    return dict(kappa=kappa, c0=max(c0, 0.0), optimizer_s_per_param=opt, oversubscription_efficiency=1.0)


def fit_oversubscription(runs, p):
    """Oversubscribed trainers share cores less well than processor sharing says: a rank
    that reaches the allreduce first still polls now and then (it yields between polls)
    while the others compute, and ranks switch cores. One efficiency factor on their
    speed: the median of predicted over
    measured step time on the oversubscribed layouts other than the largest (which stays
    held out). Sets p["offline"]["oversubscription_efficiency"] (1 when no such layout)."""
    over = [r for r in runs if r["trainers"] > r["cores"]]
    if not over:
        return
    largest = max(r["trainers"] for r in over)
    fitted = [r for r in over if r["trainers"] < largest]
    if fitted:
        p["offline"]["oversubscription_efficiency"] = 1.0
        p["offline"]["oversubscription_efficiency"] = median([predict_offline_step(r, p) / r["step_wall_s"] for r in fitted])
        p["offline"]["oversubscription_fitted_on"] = sorted({r["trainers"] for r in fitted})


def offline_works(run, p):
    """CPU seconds of each trainer's step work in the model: kappa x FLOP-model seconds of
    its shard + c0."""
    o = p["offline"]
    return [o["kappa"] * compute_seconds(p["compute"], OFFLINE_MODEL, sh["rows"], sh["head_rows"], sh["pairs"]) + o["c0"]
            for sh in offline_shards(run, p["offline_workload"])]


def offline_cpu_per_step(run, p):
    """CPU seconds all T trainers of an offline run do per step in the model (their FLOP-model
    work and c0; waiting in the allreduce is not counted)."""
    return sum(offline_works(run, p))


def predict_offline_step(run, p, link=None):
    """Step wall time of an offline run with T trainers on this machine: the trainers' CPU
    work shared over the cores left by other processes (a trainer done with its shard
    yields its core), plus the gradient allreduce (shared memory, or `link` between hosts).
    Oversubscribed trainers run at `oversubscription_efficiency` of that sharing."""
    o = p["offline"]
    cores = available(run["cores"], run["background_cores"])
    t = shared_finish(offline_works(run, p), cores)
    if run["trainers"] > run["cores"]:
        t /= o.get("oversubscription_efficiency", 1.0)
    nbytes = 4 * total_params(OFFLINE_MODEL)
    lk = link or p["links"]["shm"]["p2p"]
    return t + binomial_allreduce(nbytes, run["trainers"], lk["alpha"], lk["bandwidth"], p["op_bw"])


def online_sim_config(run, p, gen_s_per_token, sync_delay_s=0.0, steps=30, background=None):
    """Simulation settings of an online run (T=1, R rollout ranks on this machine's cores,
    shared with `background` other busy processes)."""
    groups, pr, a = online_groups(run)
    c = group_counts(pr, a, 8)
    o = p["offline"]
    kappa = p.get("online_kappa", o["kappa"])
    train = kappa * compute_seconds(p["compute"], DEFAULT_MODEL, c["rows"] * groups, c["head_rows"] * groups, c["pairs"] * groups)
    if background is None:
        background = background_jobs(run, p, gen_s_per_token, sync_delay_s)
    return dict(trainers=1, rollouts=run["rollouts"], cores=run["cores"], background=background, prompts=round(groups),
                group_tokens=c["flat"], per_batch=4, gen_s_per_token=gen_s_per_token, train_s=train,
                optimizer_s=o["optimizer_s_per_param"] * total_params(DEFAULT_MODEL), step_overhead_s=o["c0"],
                publish_s=4 * total_params(DEFAULT_MODEL) / p["copy_bw"], multiplex=bool(run["multiplex"]),
                sync_delay_s=sync_delay_s, steps=steps, warmup_steps=5)


def background_jobs(run, p, gen_s_per_token, sync_delay_s=0.0):
    """The number of other busy processes that leaves the simulated run the CPU share the
    measured run had (its `our_cores`), under processor sharing (bisection)."""
    target = run.get("our_cores")
    if not target:
        return 0.0
    lo, hi = 0.0, 64.0
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        used = simulate(online_sim_config(run, p, gen_s_per_token, sync_delay_s, steps=20, background=mid))["cores_used"]
        if used > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def calibrate_generation(run, p):
    """Core-seconds per generated token of a rollout rank. When the run reports the rollout
    ranks' waits (admission control, back-pressure), from the time they were not waiting:
    its share of the run's wall time, at the core share each rank had, over the generated
    tokens. Otherwise the value for which the simulated run generates as many tokens per
    second as the measured one (bisection), which holds only when generation is the
    bottleneck."""
    if run.get("backpressure_share") is not None:
        busy = max(0.0, 1.0 - run.get("throttled_share", 0.0) - run["backpressure_share"])
        ranks = 1 + run["rollouts"]
        core = speed(run["cores"], run.get("background_cores", 0.0), ranks)
        return busy * core / run["rollouts"] / max(run["generated_tokens_per_s"], 1e-9)
    g = 1e-4
    for _ in range(3):
        # The background for the current estimate, then the rate for that background.
        bg = background_jobs(run, p, g)
        lo, hi = 1e-7, 1e-2
        for _ in range(40):
            mid = math.sqrt(lo * hi)
            got = simulate(online_sim_config(run, p, mid, background=bg))["generated_tokens_per_s"]
            if got > run["generated_tokens_per_s"]:
                lo = mid
            else:
                hi = mid
        g = math.sqrt(lo * hi)
    return g


def shaped_link(rate, latency_s):
    """A rate-limited link: its rate (tc tbf, bits/s) times the TCP payload share, and the
    latency measured on it (half the round trip of the smallest message)."""
    return dict(alpha=latency_s, bandwidth=parse_rate(rate) / 8 * FRAMING)


def parse_rate(rate):
    m = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
    for suffix, f in m.items():
        if rate.endswith(suffix):
            return float(rate[:-len(suffix)]) * f
    return float(rate)


def fit(res):
    """Every parameter of the model from the suite's measurements (`res`), using only the
    points marked for fitting: the held-out ones are predicted in `held_out`."""
    cores = res.get("run", {}).get("cores", 2)
    for key in ("trainers", "rollouts"):
        for r in res.get(key, []):
            r.setdefault("cores", cores)
            r.setdefault("background_cores", 0.0)
    p = dict(cores=cores)
    calib = [dict(r, best_s=r["cpu_s"]) for r in res["compute"] if r["batch"] in ("short", "long", "head") and r.get("cpu_s") is not None]
    sg = None
    p["compute"] = fit_compute(calib, sg)
    p["offline_workload"] = res.get("offline_workload", dict(prompt=128, answer=32, group=8))
    p["offline"] = fit_offline(res["trainers"], p["compute"], p["offline_workload"])
    # Links: point-to-point and allreduce latency and bandwidth per link type.
    links = {}
    for a in res.get("allreduce", []):
        if a.get("ranks", 2) == 2 and a.get("hosts", 1) == 1:
            links[a["link"]] = fit_link([r for r in a["rows"]])
    hosts = res.get("hosts") or {}
    unshaped = [a for a in hosts.get("allreduce", []) if a.get("rate") is None]
    if unshaped:
        links["veth"] = fit_link(min_rows(unshaped))
    p["links"] = links
    # Network latency of the projections: MPI over TCP between hosts, as measured here.
    p["net_alpha"] = (links.get("veth") or links.get("tcp") or links["shm"])["p2p"]["alpha"]
    # The sum of the binomial allreduce: what an allreduce over shared memory takes beyond
    # its two whole-message transfers (the in-place copy and the reduction), per byte.
    shm_rows = [r for a in res.get("allreduce", []) if a["link"] == "shm" and a.get("ranks", 2) == 2 for r in a["rows"]]
    ops = [r["bytes"] / (r["allreduce_best_s"] - 2 * r["oneway_best_s"]) for r in shm_rows
           if r["bytes"] >= 1 << 20 and r["allreduce_best_s"] > 2 * r["oneway_best_s"]]
    p["op_bw"] = median(ops) if ops else 5e9
    fit_oversubscription(res["trainers"], p)
    # How well the binomial model holds on each measured link (ratio measured / model at the
    # largest messages); the rate-limited links are held out.
    check = {}
    for a in res.get("allreduce", []) + unshaped:
        lk = links.get(a["link"])
        if lk and a.get("ranks", 2) == 2:
            big = [r for r in a["rows"] if r["bytes"] >= 4 << 20]
            check[a["link"]] = median([r["allreduce_best_s"] / binomial_allreduce(r["bytes"], 2, lk["p2p"]["alpha"], lk["p2p"]["bandwidth"], p["op_bw"])
                                       for r in big]) if big else None
    p["binomial_check"] = check
    # Weights: a rank's copy rate, from one host with one rollout rank (trainer 0 writes the
    # node's memory, the rollout rank copies it: two copies).
    ws1 = [w for w in res.get("weightsync", []) if w["hosts"] == 1 and w["rollouts"] == 1]
    if ws1:
        w = ws1[0]
        p["copy_bw"] = 2 * w["bytes"] / w["latency_best_s"]
    else:
        p["copy_bw"] = 10e9
    # Generation: calibrated on the one-rollout-rank run without multiplexing.
    r1 = [r for r in res.get("rollouts", []) if r["rollouts"] == 1 and r["mode"] == "off"]
    if r1:
        groups, pr, a = online_groups(r1[0])
        # The trainer's compute of an online step: its measured forward and backward at the
        # core share it had, over the kernel model's time for the step's tokens (the
        # offline fit's kappa is for another model and batch shape).
        c1 = group_counts(pr, a, 8)
        model_s = compute_seconds(p["compute"], DEFAULT_MODEL, c1["rows"] * groups, c1["head_rows"] * groups, c1["pairs"] * groups)
        share = speed(r1[0]["cores"], r1[0].get("background_cores", 0.0), 1 + r1[0]["rollouts"])
        p["online_kappa"] = r1[0]["t_forward_backward"] * share / max(model_s, 1e-12)
        p["gen_s_per_token"] = calibrate_generation(r1[0], p)
        # Decode efficiency: the FLOPs of generating a group (prefill of its prompt, then
        # G answers token by token) over its CPU time, against the training kernel's rate.
        gw = p["gen_s_per_token"] * group_counts(pr, a, 8)["flat"]
        prefill = 2.0 * DEFAULT_MODEL["L"] * layer_params(DEFAULT_MODEL) * pr / rate(p["compute"], "lin", DEFAULT_MODEL["C"])
        decode = 8 * sum(decode_flops(DEFAULT_MODEL, pr + k) for k in range(int(round(a))))
        p["decode_efficiency"] = decode / max(gw - prefill, 1e-9) / rate(p["compute"], "lin", DEFAULT_MODEL["C"])
        p["online_groups"] = dict(groups=groups, prompt=pr, answer=a)
    env = res.get("env")
    p["env_latency_s"] = env["episode_round_trip_s"] if env else 0.0
    return p


def min_rows(sweeps):
    """Row by row, the best times over several sweeps of one link."""
    out = []
    for i, r in enumerate(sweeps[0]["rows"]):
        rows = [s["rows"][i] for s in sweeps]
        out.append(dict(r, allreduce_best_s=min(x["allreduce_best_s"] for x in rows), oneway_best_s=min(x["oneway_best_s"] for x in rows)))
    return out


def held_out(res, p):
    """Predictions of the points the model was not fitted on, against the measurements.
    Each item: point, unit, measured, predicted, error (%), and its printed line."""
    out = []

    def add(point, unit, measured, predicted):
        err = 100.0 * (predicted - measured) / measured
        line = f"held-out {point}: measured {fmt(measured)} {unit}, predicted {fmt(predicted)} {unit}, error {err:+.1f}%"
        out.append(dict(point=point, unit=unit, measured=measured, predicted=predicted, error=err, line=line))

    # Compute: the trie benchmark's batches (W1-W3, flat and trie), CPU seconds.
    for r in res["compute"]:
        if r["batch"].startswith("W") and r.get("cpu_s") is not None:
            m = dict(family="gpt2", C=r["C"], L=r["L"], NH=4, V=r["V"])
            pred = compute_seconds(p["compute"], m, r["rows"], r["head_rows"], r["pairs"])
            add(f"{r['batch']} forward+backward (C=256, CPU time)", "s", r["cpu_s"], pred)
    # The largest oversubscribed trainer layout, strong and weak.
    tr = res.get("trainers", [])
    if tr:
        tmax = max(r["trainers"] for r in tr)
        for r in tr:
            if r["trainers"] == tmax:
                add(f"offline step, T={tmax} trainers on {r['cores']} cores{' (oversubscribed)' if r['oversubscribed'] else ''}, {r['mode']} scaling",
                    "s", r["step_wall_s"], predict_offline_step(r, p))
    # The largest oversubscribed rollout layout, with and without multiplexing.
    ro = res.get("rollouts", [])
    if ro and "gen_s_per_token" in p:
        rmax = max(r["rollouts"] for r in ro)
        for r in ro:
            if r["rollouts"] == rmax and r["mode"] in ("off", "on"):
                sim = simulate(online_sim_config(r, p, p["gen_s_per_token"]))
                tag = f"online T=1 R={rmax}{' (oversubscribed)' if r['oversubscribed'] else ''} multiplex {r['mode']}"
                add(f"{tag}, step time", "s", r["step_wall_s"], sim["step_s"])
                add(f"{tag}, generated tokens/s", "tok/s", r["generated_tokens_per_s"], sim["generated_tokens_per_s"])
    hosts = res.get("hosts") or {}
    shaped = [a for a in hosts.get("allreduce", []) if a.get("rate")]
    for rate in sorted({a["rate"] for a in shaped}):
        sw = [a for a in shaped if a["rate"] == rate]
        rows = min_rows(sw)
        link = shaped_link(rate, min(r["oneway_best_s"] for r in rows))
        for r in rows:
            if r["bytes"] in (4 << 20, 16 << 20, 64 << 20):
                pred = binomial_allreduce(r["bytes"], 2, link["alpha"], link["bandwidth"], p["op_bw"])
                add(f"allreduce {r['bytes'] >> 20} MiB, two hosts, {rate}", "s", r["allreduce_best_s"], pred)
        for w in hosts.get("weightsync", []):
            if w.get("rate") == rate and w["hosts"] >= 2 and w.get("round", 0) == 0:
                pred = predict_weightsync(p, w, link)
                add(f"weight sync {w['bytes'] >> 20} MiB, {w['hosts']} hosts {w['slots']}, {rate}", "s", w["latency_s"], pred)
        for t in hosts.get("train", []):
            if t.get("rate") == rate and t.get("round", 0) == 0:
                run = dict(t, trajectories_per_step=64, trainers=2, cores=p["cores"])
                pred = predict_offline_step(run, p, link)
                add(f"offline step, T=2 on two hosts, {rate}", "s", t["step_wall_s"], pred)
        for t in hosts.get("online", []):
            if t.get("rate") == rate and t.get("round", 0) == 0 and "gen_s_per_token" in p:
                run = dict(t, multiplex=False, cores=p["cores"])
                nbytes = 4 * total_params(DEFAULT_MODEL) + HEADER
                _, last = weight_tree_times(nbytes, 2, link, p["copy_bw"], 2)
                sim = simulate(online_sim_config(run, p, p["gen_s_per_token"], sync_delay_s=last))
                add(f"online T=1 R=2 across two hosts, {rate}, step time", "s", t["step_wall_s"], sim["step_s"])
    return out


def predict_weightsync(p, w, link):
    """Latency of the weightsync benchmark's layout: the tree over its hosts, then every
    rank of a host copying its node's weights (the copies of all hosts sharing this
    machine's cores)."""
    ready, _ = weight_tree_times(w["bytes"], w["hosts"], link, p["copy_bw"])
    slots = w.get("slots") or [1 + w["rollouts"]]
    last = 0.0
    for i, s in enumerate(slots):
        readers = s if i > 0 else s - 1
        copy = readers * w["bytes"] / p["copy_bw"] / min(max(readers, 1), p["cores"])
        last = max(last, ready[i] + (copy if readers > 0 else 0.0))
    return last


def fmt(x):
    if x == 0:
        return "0"
    a = abs(x)
    if a >= 1000:
        return f"{x:.0f}"
    if a >= 1:
        return f"{x:.3g}" if a < 100 else f"{x:.0f}"
    return f"{x:.3g}"


# ---------------------------------------------------------------------------------------
# Projections


PROJECTION = dict(
    nodes=[8, 64, 512],
    cores_per_node=64,
    cores_per_rank={"gpt2-124m": 1, "gpt2-1.5b": 8, "llama-1b": 8},  # BLAS threads per rank
    thread_efficiency=0.8,       # a rank's k threads run at k x this x one thread's rate (assumed)
    link_gbit=100.0,             # each node's network link
    node_memory_GBps=200.0,      # a node's memory bandwidth (assumed: not measurable here)
    prompts=1024,                # groups per step (fixed global batch)
    group=16,                    # samples per prompt
    tokens_per_trajectory=1024,  # prompt plus answer
    trie_ratio=3.2,              # flat / trie tokens (W1 of the trie benchmark)
    max_staleness=4,
    buffer_groups=16,
    per_batch=4,
    max_tokens=4096,             # trie tokens per micro-batch
    optimizer_shard=True,
    env_turns=1,
)


def step_parts(p, m, nodes, trainers, rollouts, w):
    """Per-step costs of a layout (seconds): one trainer's compute (its shard, the prefix
    repeated when a group is cut), the exposed gradient allreduce, the sharded optimizer,
    trainer 0's publishing, and the time for new weights to reach the last node."""
    cpr = ranks_cores(w, m)
    cpn = w["cores_per_node"] // cpr          # ranks per node
    speedup = cpr * (w["thread_efficiency"] if cpr > 1 else 1.0)
    prompt, answer = group_shape(w["tokens_per_trajectory"], w["group"], w["trie_ratio"])
    g = group_counts(prompt, answer, w["group"])
    P, T = w["prompts"], trainers
    if T <= P:
        # Shards balanced by estimated cost (kat-dist cuts the trie at subtrees).
        share = P / T
        rows, head, pairs = g["rows"] * share, g["head_rows"] * share, g["pairs"] * share
        repeat = 0.0
    else:
        # A group cut over T/P trainers: each computes the prompt and its share of answers.
        f = P / T
        rows = prompt + w["group"] * answer * f
        head = max(rows - w["group"] * f, 0)
        pairs = prompt * (prompt + 1) / 2 + w["group"] * f * (answer * prompt + answer * (answer + 1) / 2)
        repeat = prompt / rows
    o = p["offline"]
    compute = o["kappa"] * compute_seconds(p["compute"], m, rows, head, pairs) / speedup
    params = total_params(m)
    nbytes = 4 * params
    trainer_nodes = max(1, math.ceil(T / cpn))
    per_node = min(T, cpn)
    net = dict(alpha=p["net_alpha"], bandwidth=w["link_gbit"] * 1e9 / 8 * FRAMING)
    shm = p["links"]["shm"]["p2p"]
    ar = binomial_hierarchical(nbytes, per_node, trainer_nodes, shm, net, p["op_bw"], w["node_memory_GBps"] * 1e9)
    # Overlap: buckets start as backward finishes them, so the allreduce hides behind the
    # last micro-batch's backward (two thirds of its compute) except for the last bucket.
    micro = max(1, math.ceil(rows / w["max_tokens"]))
    backward_last = compute / micro * 2 / 3
    bucket = min(nbytes, 4 * 1048576)
    ar_exposed = max(ar - backward_last, ar * bucket / nbytes)
    opt = o["optimizer_s_per_param"] * params / (T if w["optimizer_shard"] else 1) / speedup
    publish = (nbytes + HEADER) / p["copy_bw"]
    rollout_nodes = max(1, math.ceil(rollouts / cpn))
    link = dict(alpha=p["net_alpha"], bandwidth=w["link_gbit"] * 1e9 / 8 * FRAMING)
    _, sync = weight_tree_times(nbytes + HEADER, rollout_nodes + 1, link, p["copy_bw"], cpn, w["node_memory_GBps"] * 1e9)
    # Generation: core-seconds per group (prefill of the prompt once, then the answers token
    # by token at the measured decode efficiency; at least one read of the weights per decode
    # step from memory shared by the node's ranks), and the environment's replies.
    r_lin = rate(p["compute"], "lin", m["C"])
    prefill = 2.0 * m["L"] * layer_params(m) * prompt / r_lin
    steps = int(round(answer))
    streams = w["group"] * w["per_batch"]
    decode = 0.0
    for k in range(0, steps, max(1, steps // 32)):
        stride = min(max(1, steps // 32), steps - k)
        flops = w["group"] * decode_flops(m, prompt + k) / (p["decode_efficiency"] * r_lin)
        floor = nbytes / (w["node_memory_GBps"] * 1e9 / cpn) / w["per_batch"]
        decode += stride * max(flops, floor)
    gen_group = (prefill + decode) / speedup
    mem = dict(trainer_GB=(4 + 4 + 8 / (T if w["optimizer_shard"] else 1)) * params / 1e9
               + rows / micro * m["C"] * m["L"] * 67 / 1e9,
               rollout_GB=4 * params / 1e9)
    return dict(ranks_per_node=cpn, cores_per_rank=cpr, compute=compute, allreduce=ar, allreduce_exposed=ar_exposed, optimizer=opt, publish=publish, sync=sync,
                gen_group=gen_group, group_flat=g["flat"], repeat=repeat, rows=rows, micro=micro, memory=mem,
                prompt=prompt, answer=answer)


def simulate_layout(p, m, nodes, ratio, multiplex, w, steps):
    """Simulated run of `nodes` nodes with R/T = ratio: a cell of the layout (a few trainers
    and their rollout ranks, per-step costs of the full layout)."""
    total = nodes * (w["cores_per_node"] // ranks_cores(w, m))
    T = max(1, int(round(total / (1 + ratio))))
    R = max(1, total - T)
    parts = step_parts(p, m, nodes, T, R, w)
    P = w["prompts"]
    if T <= P:
        tc = min(T, 4)
        pc = max(1, round(P * tc / T))
    else:
        pc = min(P, 4)
        tc = T * pc / P
    rc = max(1, int(round(R * tc / T)))
    cfg = dict(trainers=tc, rollouts=rc, cores=None, prompts=pc, group_tokens=parts["group_flat"], per_batch=w["per_batch"],
               gen_s_per_token=parts["gen_group"] / parts["group_flat"], env_latency_s=p["env_latency_s"] * w["group"] * w["env_turns"],
               train_s=parts["compute"], micro_batches=parts["micro"], allreduce_s=parts["allreduce_exposed"],
               optimizer_s=parts["optimizer"], publish_s=parts["publish"], step_overhead_s=p["offline"]["c0"],
               sync_delay_s=parts["sync"], install_s=(4 * total_params(m)) / p["copy_bw"],
               # buffer.max_groups large enough that the trainers' buffers hold two batches.
               buffer_groups=max(w["buffer_groups"], math.ceil(2 * pc / max(1, round(tc)))),
               max_staleness=w["max_staleness"], multiplex=multiplex, steps=steps, warmup_steps=max(3, steps // 5))
    sim = simulate(cfg)
    flat_per_step = P * parts["group_flat"]
    return dict(T=T, R=R, ratio=R / T, parts=parts, sim=sim, tokens_per_s=flat_per_step / sim["step_s"])


RATIOS = [0.125, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]


def bottleneck(x):
    """The largest part of a step, by name."""
    pt, sim = x["parts"], x["sim"]
    parts = {"trainer compute": pt["compute"], "gradient allreduce": pt["allreduce_exposed"], "optimizer": pt["optimizer"],
             "weight publishing": pt["publish"], "waiting for rollouts (generation)": sim["trainer_idle"] * sim["step_s"]}
    name = max(parts, key=parts.get)
    if sim["dropped_groups"] > 0 and sim["trainer_idle"] >= 0.05:
        name = ("stale rollouts: a rollout rank takes longer to decode its groups than max_staleness steps, "
                "so groups are dropped and trainers wait")
    elif name == "trainer compute" and pt["repeat"] > 0.3:
        name = f"trainer compute, {100 * pt['repeat']:.0f}% of it the prompt repeated in every shard of a cut group"
    return name


def project(p, quick=False, w=None):
    """For each model and node count: the smallest rollout-to-trainer ratio that keeps trainer
    idle under 5% without multiplexing, the run at that ratio (step time, idle, staleness,
    efficiency: throughput per node against the smallest node count, bottleneck), and trainer
    idle with multiplexing at it."""
    w = dict(PROJECTION, **(w or {}))
    steps = 24 if quick else 40
    out = dict(workload=w, models={}, rows=[])
    for name, m in MODELS.items():
        out["models"][name] = dict(params=total_params(m), layer_params=layer_params(m) * m["L"])
        base = None
        for nodes in w["nodes"]:
            chosen, tried = None, []
            for ratio in RATIOS:
                x = simulate_layout(p, m, nodes, ratio, False, w, steps)
                tried.append(x)
                if x["sim"]["trainer_idle"] < 0.05:
                    chosen = x
                    break
            found = chosen is not None
            if chosen is None:
                # No ratio keeps idle under 5%: the one with the highest throughput.
                chosen = max(tried, key=lambda t: t["tokens_per_s"])
            on = simulate_layout(p, m, nodes, chosen["ratio"], True, w, steps)
            if base is None:
                base = (nodes, chosen)
            eff = (chosen["tokens_per_s"] / nodes) / (base[1]["tokens_per_s"] / base[0])
            out["rows"].append(dict(model=name, nodes=nodes, T=chosen["T"], R=chosen["R"], ratio=chosen["ratio"],
                                    step_s=chosen["sim"]["step_s"], idle_off=chosen["sim"]["trainer_idle"],
                                    idle_on=on["sim"]["trainer_idle"], step_on_s=on["sim"]["step_s"],
                                    throttled=chosen["sim"]["throttled_share"], smallest=found and chosen is tried[0],
                                    staleness_mean=chosen["sim"]["staleness_mean"], tokens_per_s=chosen["tokens_per_s"],
                                    dropped=chosen["sim"]["dropped_groups"], efficiency=eff, bottleneck=bottleneck(chosen),
                                    parts=chosen["parts"], found=found))
            if nodes == w["nodes"][-1]:
                # The largest layout again at slower links (same ratio), to show where the
                # bottleneck goes when the network is the scarce part.
                for gbit in sorted({10.0, 25.0, float(w["link_gbit"])}):
                    x = chosen if gbit == w["link_gbit"] else simulate_layout(p, m, nodes, chosen["ratio"], False, dict(w, link_gbit=gbit), steps)
                    out.setdefault("links", []).append(dict(model=name, nodes=nodes, link_gbit=gbit, ratio=x["ratio"],
                                                            step_s=x["sim"]["step_s"], allreduce=x["parts"]["allreduce"],
                                                            exposed=x["parts"]["allreduce_exposed"], sync=x["parts"]["sync"],
                                                            idle=x["sim"]["trainer_idle"], staleness=x["sim"]["staleness_mean"],
                                                            bottleneck=bottleneck(x)))
    return out


def ratio_sensitivity(p, quick=False, factors=(0.8, 1.25), w=None):
    """The projection's ratios again with generation `factor` times as costly (the decode
    efficiency divided by it): how much the answer rests on the one calibrated rate."""
    out = {}
    for k in factors:
        q = dict(p, decode_efficiency=p["decode_efficiency"] / k)
        out[k] = {(r["model"], r["nodes"]): (r["ratio"], r["found"], r.get("smallest", False)) for r in project(q, quick, w)["rows"]}
    return out


# ---------------------------------------------------------------------------------------
# CLI


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("simulate", help="one simulated asynchronous run")
    s.add_argument("--input", required=True, help="JSON object of simulation settings (others default)")
    fc = sub.add_parser("fit-compute", help="kernel rates from `kat-bench compute` rows (JSON list; times in best_s)")
    fc.add_argument("--input", required=True)
    f = sub.add_parser("fit", help="fitted parameters from the suite's measurements")
    f.add_argument("--input", required=True)
    p = sub.add_parser("project", help="projections at 8, 64 and 512 nodes")
    p.add_argument("--input", required=True)
    p.add_argument("--quick", action="store_true")
    sh = sub.add_parser("shards", help="each trainer's shard of an offline step (JSON: trainers, trajectories_per_step, group, prompt, answer)")
    sh.add_argument("--input", required=True)
    args = ap.parse_args(argv)
    try:
        with open(args.input) as fh:
            data = json.load(fh)
    except (OSError, ValueError) as e:
        print(f"scaling_model: cannot read {args.input}: {e}", file=sys.stderr)
        return 2
    if args.cmd == "simulate":
        try:
            if not isinstance(data, dict):
                raise ValueError("simulation settings must be a JSON object")
            unknown = set(data) - set(DEFAULT_SIM)
            if unknown:
                raise ValueError(f"unknown simulation settings: {sorted(unknown)}")
            # A user's settings; the model's own projections may use fractional rank counts.
            check_sim_settings(data)
            print(json.dumps(simulate(data), sort_keys=True))
        except (ValueError, RuntimeError, ZeroDivisionError, TypeError) as e:
            print(f"scaling_model: {args.input}: {e}", file=sys.stderr)
            return 2
        return 0
    if args.cmd == "fit-compute":
        try:
            if not isinstance(data, list) or not data:
                raise ValueError("expected a non-empty list of rows")
            for i, r in enumerate(data):
                for k, v in r.items():
                    if k.endswith(("_s", "flop", "rows", "pairs")) and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (k.endswith("_s") and v == 0)):
                        raise ValueError(f"row {i}: {k} is {v!r}")
            print(json.dumps(fit_compute(data), sort_keys=True))
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, ZeroDivisionError) as e:
            print(f"scaling_model: {args.input} is not a list of kat-bench compute rows ({type(e).__name__}: {e})", file=sys.stderr)
            return 2
        return 0
    try:
        if args.cmd == "shards":
            for k in ("trainers", "trajectories_per_step", "group", "prompt", "answer"):
                v = data.get(k)
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise ValueError(f"{k} must be a whole number of at least 1, got {v!r}")
            if data["trajectories_per_step"] % data["group"]:
                raise ValueError(f"trajectories_per_step ({data['trajectories_per_step']}) must be a multiple of group ({data['group']}): whole groups")
            print(json.dumps(offline_shards(data, data), sort_keys=True))
        elif args.cmd == "fit":
            print(json.dumps(fit(data), indent=1, sort_keys=True))
        else:
            print(json.dumps(project(fit(data), quick=args.quick), indent=1))
    except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError, AttributeError, RuntimeError) as e:
        print(f"scaling_model: {args.input} is incomplete or was edited ({type(e).__name__}: {e})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
