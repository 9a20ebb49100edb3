#!/usr/bin/env python3
"""kat-dist's scaling suite: measures what this machine can measure, fits the performance
model (Benchmarks/scaling_model.py) to it, checks the model on points it was not fitted on,
projects to 8, 64 and 512 nodes, and writes Docs/scaling.md with its plots in Docs/scaling/.

    bash Benchmarks/scaling.sh [--quick]          (builds, then runs this)
    python3 Benchmarks/scaling.py [--quick] [--parts P,..] [--from-raw FILE] [--out DIR]
    python3 Benchmarks/scaling.py --check-parsing DIR     parse captured outputs, print JSON

Parts: compute (trie vs flat, memory, kernel rates, sampling), trainers (strong and weak
scaling), rollouts (rollout ranks, multiplexing, staleness), links (allreduce over shared
memory and TCP, weight sync on one host), hosts (network namespaces joined by veth links
through a bridge: allreduce, weight sync, training and an online run between hosts,
unshaped and rate-limited with tc tbf; needs root), env (environment round trip).
Timings on a shared machine are noisy: configurations are interleaved in rounds, each
repeated, and the best round (or the median step within a run) is kept; the load average
is recorded with every command.
"""
import argparse
import json
import os
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import scaling_model as model  # noqa: E402
import scaling_report as report  # noqa: E402

KAT = os.path.join(ROOT, ".build/release/kat-dist")
BENCH = os.path.join(ROOT, ".build/release/kat-bench")
MPI_ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
CORES = os.cpu_count() or 1
PARTS = ["compute", "trainers", "rollouts", "links", "hosts", "env"]
# Where a part's measurements go in the measurements file, when not under its own name.
PART_KEYS = {"links": "allreduce"}


# ---------------------------------------------------------------------------------------
# Parsing (pure functions: tested on captured output by --check-parsing)


def parse_rows(text):
    """Rows of a `kat-bench` table: the first line that is not a comment names the
    columns, each later line that is not a comment is a row (numbers become numbers,
    `-` becomes None)."""
    header, rows = None, []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        cells = line.split()
        if header is None:
            header = cells
            continue
        if len(cells) != len(header):
            raise ValueError(f"row of {len(cells)} cells under a header of {len(header)}: {line!r}")
        rows.append({h: _number(c) for h, c in zip(header, cells)})
    if header is None:
        raise ValueError("no table header in the output")
    return rows


def _number(cell):
    if cell == "-":
        return None
    try:
        return int(cell)
    except ValueError:
        pass
    try:
        return float(cell)
    except ValueError:
        return cell


def parse_comment(text, pattern):
    """The first number after `pattern` on a comment line (or None)."""
    m = re.search(re.escape(pattern) + r"\s*([0-9.eE+-]+)", text)
    return float(m.group(1)) if m else None


def parse_trie_memory(text):
    rows = []
    for line in text.splitlines():
        m = re.match(r"^\s*(\d+)x\s+(\d+)\s+(\d+)\s+([\d.]+)\s*$", line)
        if m:
            rows.append(dict(scale=int(m.group(1)), trie_tokens=int(m.group(2)), act_mib=int(m.group(3)), mib_per_1k=float(m.group(4))))
    if not rows:
        raise ValueError("no rows in kat-bench trie --memory output")
    return dict(rows=rows, peak_rss_mib=parse_comment(text, "peak RSS (MiB)"))


def parse_sampler(text):
    shared = parse_comment(text, "shared prompt cache")
    unshared = parse_comment(text, "one copy per sample")
    if shared is None or unshared is None:
        raise ValueError("kat-bench sampler output without its two rates")
    return dict(shared_tok_s=shared, unshared_tok_s=unshared, ratio=shared / unshared)


def parse_weightsync(text):
    rows = parse_rows(text)
    m = re.search(r"(\d+) ranks on (\d+) node\(s\), (\d+) leaders \(tree depth (\d+)\), (\d+) bytes", text)
    if not m:
        raise ValueError("kat-bench weightsync output without its layout line")
    ranks, nodes, leaders, depth, nbytes = map(int, m.groups())
    lat = [r["latency_s"] for r in rows]
    return dict(ranks=ranks, nodes=nodes, leaders=leaders, depth=depth, bytes=nbytes,
                latency_s=statistics.median(lat), latency_best_s=min(lat),
                publish_s=statistics.median(r["publish_s"] for r in rows), root_bytes=rows[-1]["root_bytes"],
                copy_GBps=parse_comment(text, "memory copy GB/s (one rank)"), updates=len(rows))


def metrics_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def summarize_training(lines, skip):
    """Per-step medians of a run's metrics after the first `skip` steps."""
    rows = lines[skip:]
    if len(rows) < 2:
        raise ValueError(f"only {len(rows)} steps after skipping {skip}")
    walls = [b["time"] - a["time"] for a, b in zip(rows, rows[1:])]
    med = lambda k: statistics.median(m[k] for m in rows)  # noqa: E731
    # The mean step (the run's wall time over its steps), as the model predicts it; the median too.
    out = dict(steps=len(rows), step_wall_s=(rows[-1]["time"] - rows[0]["time"]) / (len(rows) - 1), step_median_s=statistics.median(walls),
               step_parts_s=statistics.median(m["t_forward_backward"] + m["t_allreduce"] + m["t_optimizer"] for m in rows),
               t_forward_backward=med("t_forward_backward"), t_allreduce=med("t_allreduce"), t_optimizer=med("t_optimizer"),
               t_wait_data=med("t_wait_data"), t_weight_sync=med("t_weight_sync"),
               tokens_flat=med("tokens_flat"), tokens_trie=med("tokens_trie"), tokens_computed=med("tokens_computed"),
               trajectories=med("trajectories"))
    wall = rows[-1]["time"] - rows[0]["time"]
    out["flat_tokens_per_s"] = sum(m["tokens_flat"] for m in rows[1:]) / wall
    if "trainer_idle" in rows[0]:
        out["trainer_idle"] = statistics.mean(m["trainer_idle"] for m in rows)
        out["wait_share"] = sum(m["t_wait_data"] for m in rows[1:]) / wall
        out["t_generate_trainers"] = statistics.mean(m.get("t_generate_trainers", 0.0) for m in rows)
        out["generate_share"] = sum(m.get("t_generate_trainers", 0.0) for m in rows[1:]) / wall
        # Admission control: the rollout ranks' mean time waiting for newer weights.
        out["throttled_share"] = sum(m.get("throttled_s", 0.0) for m in rows[1:]) / wall
        # Back-pressure: their mean time with their share of a batch sent and not yet taken.
        out["backpressure_share"] = sum(m.get("backpressure_s", 0.0) for m in rows[1:]) / wall
        out["weight_bytes_root"] = max(m.get("weight_bytes_root", 0) for m in rows)
        hist = None
        for m in rows:
            h = m.get("staleness_hist") or []
            hist = [a + b for a, b in zip(hist, h)] if hist else list(h)
        out["staleness_hist"] = hist
        out["staleness_mean"] = statistics.mean(m["staleness_mean"] for m in rows)
        out["dropped_stale"] = sum(m.get("dropped_stale", 0) for m in rows)
        gen = sum(m.get("generated_tokens", 0) for m in rows[1:])
        out["generated_tokens_per_s"] = gen / wall
    return out


def check_parsing(directory):
    """Parses every captured output in `directory` (the names say which parser) and prints
    the parsed values as one JSON object."""
    out = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        text = open(path).read()
        if name.startswith("compute"):
            out[name] = parse_rows(text)
        elif name.startswith("trie-memory"):
            out[name] = parse_trie_memory(text)
        elif name.startswith("sampler"):
            out[name] = parse_sampler(text)
        elif name.startswith("allreduce"):
            out[name] = parse_rows(text)
        elif name.startswith("weightsync"):
            out[name] = parse_weightsync(text)
        elif name.startswith("metrics"):
            out[name] = summarize_training(metrics_lines(path), skip=2)
        elif name.startswith("keys"):
            out[name] = dict(partial="rollout.partial" in {l.split()[0] for l in text.splitlines() if l.strip()})
    print(json.dumps(out, indent=1, sort_keys=True))


# ---------------------------------------------------------------------------------------
# Running things


class Runner:
    def __init__(self, quick, workdir, raw_dir=None):
        self.quick = quick
        self.workdir = workdir
        self.raw_dir = raw_dir
        self.commands = []
        self.loads = []
        self.t0 = time.time()
        self.last = {}

    def log(self, msg):
        print(f"[{time.time() - self.t0:6.0f} s, load {os.getloadavg()[0]:.2f}] {msg}", flush=True)

    def run(self, cmd, label, timeout=1800, env=None, capture_name=None, tries=2, metrics=None, skip=2):
        """Runs a command; records it with the load average, its wall time, the CPU time of
        its processes and the CPU time every other process on the machine took meanwhile
        (`background_cores`: busy cores not ours, from /proc/stat). With `metrics` (a run's
        metrics.jsonl), the same over the steps after the first `skip` only, sampled while
        the run writes them (start-up and shutdown left out)."""
        load0 = os.getloadavg()[0]
        busy0, ours0, t = machine_busy_seconds(), children_cpu_seconds(), time.time()
        # A session of its own, so that everything it starts can be stopped with it.
        proc = subprocess.Popen(cmd, env=env or MPI_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        sampler = Sampler(proc.pid, metrics) if metrics else None
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_tree(proc)
            stdout, stderr = proc.communicate()
        except BaseException:
            # Interrupted (SIGINT, SIGTERM): no rank may outlive the suite.
            stop_tree(proc)
            raise
        finally:
            if sampler:
                sampler.stop()
        dt = time.time() - t
        busy, ours = machine_busy_seconds() - busy0, children_cpu_seconds() - ours0
        load1 = os.getloadavg()[0]
        self.loads.append((load0, load1))
        self.last = dict(wall_s=dt, our_cores=ours / dt, background_cores=max(0.0, busy - ours) / dt)
        if sampler:
            steady = sampler.steady(skip)
            if steady:
                self.last.update(steady)
        self.commands.append(dict(label=label, cmd=" ".join(shlex.quote(c) for c in cmd), seconds=round(dt, 1),
                                  load=[round(load0, 2), round(load1, 2)], our_cores=round(self.last["our_cores"], 2),
                                  background_cores=round(self.last["background_cores"], 2)))
        if proc.returncode != 0 and tries > 1 and "--run-dir" not in cmd:
            self.log(f"{label} failed ({proc.returncode}); once more")
            return self.run(cmd, label, timeout, env, capture_name, tries - 1)
        if proc.returncode != 0:
            raise RuntimeError(f"{label} failed ({proc.returncode}): {' '.join(cmd)}\n{stdout[-3000:]}\n{stderr[-3000:]}")
        if self.raw_dir and capture_name:
            with open(os.path.join(self.raw_dir, capture_name), "w") as f:
                f.write(stdout)
        return stdout


class Sampler:
    """Samples, four times a second, the machine's busy CPU seconds, the CPU seconds of a
    process tree and the lines of a metrics file, so that CPU use can be taken over the
    steps of a run only."""

    def __init__(self, pid, metrics):
        import threading
        self.pid, self.metrics = pid, metrics
        self.samples = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        while not self.done.wait(0.25):
            try:
                lines = sum(1 for _ in open(self.metrics)) if os.path.exists(self.metrics) else 0
            except OSError:
                lines = 0
            self.samples.append((time.time(), machine_busy_seconds(), tree_cpu_seconds(self.pid), lines))


    def stop(self):
        self.done.set()
        self.thread.join()

    def steady(self, skip):
        """Our cores and the background cores between the sample that first saw line
        skip + 1 and the last sample before the final line count stopped growing."""
        if not self.samples:
            return None
        final = self.samples[-1][3]
        i = next((k for k, s in enumerate(self.samples) if s[3] >= skip + 1), None)
        j = next((k for k, s in enumerate(self.samples) if s[3] >= final), None)
        if i is None or j is None or self.samples[j][0] - self.samples[i][0] < 0.5:
            return None
        first, last = self.samples[i], self.samples[j]
        dt = last[0] - first[0]
        # Per process, its last CPU time seen by then (a rank may exit before the last sample)
        # minus its CPU time at the first sample.
        seen = {}
        for s in self.samples[i:j + 1]:
            seen.update(s[2])
        ours = sum(v - first[2].get(pid, 0.0) for pid, v in seen.items())
        return dict(our_cores=ours / dt, background_cores=max(0.0, last[1] - first[1] - ours) / dt, sampled_s=dt)


def process_table():
    """Every live process's parent pid and CPU seconds (user + system), by pid, from /proc."""
    table = {}
    tick = os.sysconf("SC_CLK_TCK")
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                text = f.read()
        except OSError:
            continue
        rest = text[text.rindex(")") + 2:].split()
        table[int(d)] = (int(rest[1]), (int(rest[11]) + int(rest[12])) / tick)
    return table


def descendants(root, table=None):
    """`root` and the pids of its live descendants."""
    children = {}
    for pid, (pp, _) in (table or process_table()).items():
        children.setdefault(pp, []).append(pid)
    mine, frontier = {root}, [root]
    while frontier:
        frontier = [c for p in frontier for c in children.get(p, []) if c not in mine]
        mine.update(frontier)
    return mine


def stop_tree(proc, grace=2.0):
    """Stops a command started in a session of its own and everything it started: SIGTERM
    to its session's process group and each descendant, SIGKILL to what is left after
    `grace` seconds (mpirun forwards SIGTERM to its ranks and kills them a little later)."""
    pids = descendants(proc.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except OSError:
            pass
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        pids = {p for p in pids if os.path.exists(f"/proc/{p}")} | (descendants(proc.pid) if proc.poll() is None else set())


def tree_cpu_seconds(root):
    """CPU seconds (user + system) of `root` and each of its live descendants, by pid."""
    table = process_table()
    return {p: table[p][1] for p in descendants(root, table) if p in table}


def machine_busy_seconds():
    """CPU seconds all processes of the machine have run (the first line of /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    busy = v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)  # user nice system irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds():
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def mpirun(np_, args, over=True, extra=None):
    cmd = ["mpirun", "-np", str(np_), "--bind-to", "none", "--mca", "mpi_yield_when_idle", "1", "-x", "OPENBLAS_NUM_THREADS=1"]
    if over:
        cmd.insert(3, "--oversubscribe")
    return cmd + (extra or []) + args


def w1_like_data(path, groups, prompt, answer, group_size, seed=1):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for g in range(groups):
            p = [256] + [rng.randrange(256) for _ in range(prompt - 1)]
            for k in range(group_size):
                toks = p + [rng.randrange(256) for _ in range(answer)]
                f.write(json.dumps({"id": f"g{g}-{k}", "group": f"g{g}", "tokens": toks, "prompt_len": prompt, "advantage": 1.0}) + "\n")


# Offline workload of the trainer-scaling runs (the default model's width): groups of 8
# answers of 32 tokens to a 128-token prompt.
OFFLINE = dict(prompt=128, answer=32, group=8, n_embd=128, n_layer=4, n_head=4, positions=256)


def offline_args(run, data, t, trajectories, steps, extra=()):
    o = OFFLINE
    return [KAT, "train", "--run-dir", run, "--set", f"ranks.trainers={t}", "--set", f"data.trajectories={data}",
            "--set", "advantage.estimator=given", "--set", f"steps={steps}", "--set", f"batch.trajectories={trajectories}",
            "--set", f"model.n_embd={o['n_embd']}", "--set", f"model.n_layer={o['n_layer']}", "--set", f"model.n_head={o['n_head']}",
            "--set", f"model.n_positions={o['positions']}", "--set", "check.flat_every=0", "--progress", "off"] + list(extra)


def online_args(run, steps, multiplex, extra=()):
    return [KAT, "train", "--run-dir", run, "--set", "ranks.trainers=1", "--set", "warmstart.steps=0", "--set", "eval.every=0",
            "--set", f"steps={steps}", "--set", f"ranks.multiplex={'true' if multiplex else 'false'}", "--progress", "off"] + list(extra)


# ---------------------------------------------------------------------------------------
# Parts


def part_compute(rn, res):
    rounds = 1 if rn.quick else 2
    widths = "128,256" if rn.quick else "128,256,512"
    runs = []
    for k in range(rounds):
        rn.log(f"compute round {k + 1}/{rounds}: kernel rates and trie vs flat (W1-W3)")
        runs.append(parse_rows(rn.run([BENCH, "compute", "--widths", widths, "--repeat", "1" if rn.quick else "2", "--workloads"],
                                      "kat-bench compute", capture_name=f"compute-{k}.txt")))
        runs[-1][0]["background_cores"] = rn.last["background_cores"]
    rows = []
    for i, r in enumerate(runs[0]):
        best = min((run[i] for run in runs), key=lambda x: x["cpu_s"] if x["cpu_s"] is not None else 0)
        rows.append(dict(best))
    rows[0].pop("background_cores", None)
    res["compute"] = rows
    rn.log("trie memory curve")
    res["trie_memory"] = parse_trie_memory(rn.run([BENCH, "trie", "--memory"], "kat-bench trie --memory", capture_name="trie-memory.txt"))
    samples = []
    for k in range(1 if rn.quick else 3):
        samples.append(parse_sampler(rn.run([BENCH, "sampler"], "kat-bench sampler", capture_name=f"sampler-{k}.txt")))
    res["sampler"] = max(samples, key=lambda s: s["shared_tok_s"])


def part_trainers(rn, res):
    data = os.path.join(rn.workdir, "offline.jsonl")
    o = OFFLINE
    w1_like_data(data, 64, o["prompt"], o["answer"], o["group"])
    # The largest layout is held out; the smaller oversubscribed ones fit how well
    # oversubscribed ranks share cores.
    ts = [1, 2, 3, 4] if rn.quick else [1, 2, 3, 4, 6]
    steps = 7 if rn.quick else 10
    rounds = 2 if rn.quick else 3
    best = {}
    for k in range(rounds):
        for t in ts:
            for mode in ["strong", "weak"]:
                traj = 64 if mode == "strong" else 32 * t
                run = os.path.join(rn.workdir, f"offline-{mode}-t{t}-{k}")
                rn.log(f"trainers round {k + 1}/{rounds}: T={t} {mode} ({traj} trajectories a step)")
                rn.run(mpirun(t, offline_args(run, data, t, traj, steps)), f"offline T={t} {mode}",
                       metrics=os.path.join(run, "metrics.jsonl"), skip=2)
                s = summarize_training(metrics_lines(os.path.join(run, "metrics.jsonl")), skip=2)
                s.update(trainers=t, mode=mode, trajectories_per_step=traj, oversubscribed=t > CORES, **rn.last)
                key = (t, mode)
                if key not in best or s["step_wall_s"] < best[key]["step_wall_s"]:
                    best[key] = s
                shutil.rmtree(run, ignore_errors=True)
    res["trainers"] = [best[k] for k in sorted(best)]
    res["offline_workload"] = dict(OFFLINE, groups_in_file=64)


def part_rollouts(rn, res):
    keys = rn.run([KAT, "train", "--keys"], "kat-dist train --keys", capture_name="keys.txt")
    partial = any(line.split()[:1] == ["rollout.partial"] for line in keys.splitlines())
    res["partial_key"] = partial
    rs = [1, 2] if rn.quick else [1, 2, 3]
    steps = 14 if rn.quick else 22
    rounds = 2 if rn.quick else 3
    modes = [("off", False, None), ("on", True, None)]
    if partial:
        modes += [("off+partial", False, True), ("off-partial", False, False)]
    best = {}
    for k in range(rounds):
        for r in rs:
            for name, mux, part in modes:
                run = os.path.join(rn.workdir, f"online-r{r}-{name}-{k}")
                rn.log(f"rollouts round {k + 1}/{rounds}: T=1 R={r} multiplex {name}")
                extra = ["--set", f"rollout.partial={'true' if part else 'false'}"] if part is not None else []
                rn.run(mpirun(1 + r, online_args(run, steps, mux, extra)), f"online T=1 R={r} multiplex {name}",
                       metrics=os.path.join(run, "metrics.jsonl"), skip=3)
                s = summarize_training(metrics_lines(os.path.join(run, "metrics.jsonl")), skip=3)
                s.update(rollouts=r, multiplex=mux, partial=part, mode=name, oversubscribed=1 + r > CORES, **rn.last)
                key = (r, name)
                if key not in best or s["step_wall_s"] < best[key]["step_wall_s"]:
                    best[key] = s
                shutil.rmtree(run, ignore_errors=True)
    res["rollouts"] = [best[k] for k in sorted(best)]


def sweep_args(quick, max_mib=None):
    return ["allreduce", "--sweep", "--min-kib", "4", "--max-mib", str(max_mib or (16 if quick else 64)), "--repeat", "5" if quick else "7"]


def merge_sweeps(runs):
    """Row by row, the best times over several sweeps."""
    out = []
    for i, r in enumerate(runs[0]):
        rows = [run[i] for run in runs]
        b = min(rows, key=lambda x: x["allreduce_best_s"])
        o = min(rows, key=lambda x: x["oneway_best_s"])
        out.append(dict(b, oneway_best_s=o["oneway_best_s"], oneway_median_s=o["oneway_median_s"], p2p_GBps=o["p2p_GBps"]))
    return out


def part_links(rn, res):
    rounds = 2 if rn.quick else 3
    sweeps = {"shm": [], "tcp": []}
    wsync = {}
    rs = [1, 2, 3] if rn.quick else [1, 2, 3, 4]
    mib = "16" if rn.quick else "64"
    for k in range(rounds):
        rn.log(f"links round {k + 1}/{rounds}: allreduce over shared memory and TCP, weight sync on one host")
        sweeps["shm"].append(parse_rows(rn.run(mpirun(2, [BENCH] + sweep_args(rn.quick)), "allreduce sweep shm", capture_name=f"allreduce-shm-{k}.txt")))
        sweeps["tcp"].append(parse_rows(rn.run(mpirun(2, [BENCH] + sweep_args(rn.quick), extra=["--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", "lo"]),
                                               "allreduce sweep tcp", capture_name=f"allreduce-tcp-{k}.txt")))
        for r in rs:
            w = parse_weightsync(rn.run(mpirun(1 + r, [BENCH, "weightsync", "--mib", mib, "--repeat", "5"]), f"weightsync 1 host R={r}",
                                        capture_name=f"weightsync-1host-r{r}-{k}.txt"))
            w.update(hosts=1, rollouts=r, link="shm", oversubscribed=1 + r > CORES, **rn.last)
            if r not in wsync or w["latency_s"] < wsync[r]["latency_s"]:
                wsync[r] = w
    res["allreduce"] = [dict(link=name, ranks=2, hosts=1, rows=merge_sweeps(runs)) for name, runs in sweeps.items()]
    res["weightsync"] = [wsync[r] for r in rs]
    if not rn.quick:
        rn.log("allreduce over shared memory, 4 ranks (oversubscribed)")
        res["allreduce"].append(dict(link="shm", ranks=4, hosts=1, oversubscribed=True,
                                     rows=parse_rows(rn.run(mpirun(4, [BENCH] + sweep_args(True)), "allreduce sweep shm 4 ranks"))))


class Hosts:
    """Network namespaces as hosts: one switch namespace holding a bridge, and `n` host
    namespaces, each joined to the bridge by a veth pair. Names carry a random tag, and
    only what this object made is ever changed or removed."""

    def __init__(self, n, workdir):
        self.tag = uuid.uuid4().hex[:6]
        self.switch = f"ksc{self.tag}s"
        self.names = [f"ksc{self.tag}h{i}" for i in range(n)]
        self.devs = [f"k{self.tag}h{i}" for i in range(n)]
        self.ports = [f"k{self.tag}p{i}" for i in range(n)]
        self.subnet = f"10.216.{random.randrange(16, 250)}"
        self.workdir = workdir
        self.made = []
        self.agent = os.path.join(workdir, "agent.sh")
        self.rate = None

    def sh(self, cmd):
        r = subprocess.run(cmd, shell=True, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{cmd}: {r.stderr.strip()}")
        return r.stdout

    def __enter__(self):
        try:
            self.sh(f"ip netns add {self.switch}")
            self.made.append(self.switch)
            self.sh(f"ip netns exec {self.switch} ip link add br0 type bridge && ip netns exec {self.switch} ip link set br0 up")
            for i, ns in enumerate(self.names):
                self.sh(f"ip netns add {ns}")
                self.made.append(ns)
                d, p = self.devs[i], self.ports[i]
                # Made inside the namespaces: nothing of the machine's own namespace is touched.
                self.sh(f"ip -n {ns} link add {d} type veth peer name {p} netns {self.switch}")
                self.sh(f"ip netns exec {self.switch} ip link set {p} master br0 && ip netns exec {self.switch} ip link set {p} up")
                self.sh(f"ip netns exec {ns} ip addr add {self.subnet}.{i + 1}/24 dev {d} && ip netns exec {ns} ip link set {d} up "
                        f"&& ip netns exec {ns} ip link set lo up")
        except Exception:
            self.close()
            raise
        with open(self.agent, "w") as f:
            # Each host gets its own host name (a UTS namespace): with the machine's one name,
            # Open MPI takes every remote rank for a node of its own, and the weight tree then
            # sends one copy per remote rank instead of one per host.
            f.write('#!/bin/sh\n# plm_rsh_agent: HOST COMMAND... runs COMMAND in HOST\'s network namespace, named HOST.\n'
                    'host="$1"; shift\nexec ip netns exec "$host" unshare --uts sh -c "hostname $host; $*"\n')
        os.chmod(self.agent, 0o755)
        return self

    def shape(self, rate):
        """Limits every host's outgoing rate (tc tbf on its end of the link), or lifts it."""
        for ns, d in zip(self.names, self.devs):
            if rate:
                self.sh(f"ip netns exec {ns} tc qdisc replace dev {d} root tbf rate {rate} burst 256kb latency 50ms")
            else:
                subprocess.run(f"ip netns exec {ns} tc qdisc del dev {d} root", shell=True, capture_output=True)
        self.rate = rate

    def close(self):
        for ns in reversed(self.made):
            # Ranks and daemons still running inside a host (an interrupted run; Open MPI's
            # remote daemons leave mpirun's process tree) are ended before it goes.
            left = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in left:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.made = []

    def __exit__(self, *exc):
        self.close()

    def mpirun(self, slots, args, extra=None):
        """mpirun started in host 0, with slots[i] ranks on host i, TCP only."""
        hostfile = os.path.join(self.workdir, f"hosts-{uuid.uuid4().hex[:6]}")
        with open(hostfile, "w") as f:
            for i, s in enumerate(slots):
                if s > 0:
                    f.write(f"{'localhost' if i == 0 else self.names[i]} slots={s}\n")
        np_ = sum(slots)
        cmd = ["ip", "netns", "exec", self.names[0], "mpirun", "--hostfile", hostfile, "-np", str(np_), "--oversubscribe",
               "--bind-to", "none", "--mca", "plm_rsh_agent", self.agent, "--mca", "btl", "tcp,self",
               "--mca", "btl_tcp_if_include", f"{self.subnet}.0/24", "--mca", "oob_tcp_if_include", f"{self.subnet}.0/24",
               "--mca", "mpi_yield_when_idle", "1", "-x", "OPENBLAS_NUM_THREADS=1",
               # The remote daemons' shared-memory copy of the topology crashes now and then here.
               "--mca", "rtc_hwloc_vmhole", "none",
               "-x", "OMPI_ALLOW_RUN_AS_ROOT=1", "-x", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"] + (extra or [])
        return cmd + args


def part_hosts(rn, res):
    if os.geteuid() != 0:
        res["hosts_skipped"] = "the two-host part needs root (it makes network namespaces, veth links and a bridge)"
        print("scaling: " + res["hosts_skipped"] + "; run as root to measure it", file=sys.stderr)
        return
    n = 3 if rn.quick else 4
    rates = [None, "1gbit"] if rn.quick else [None, "1gbit", "200mbit"]
    rounds = 1 if rn.quick else 2
    mib = "16" if rn.quick else "64"
    data = os.path.join(rn.workdir, "offline.jsonl")
    if not os.path.exists(data):
        o = OFFLINE
        w1_like_data(data, 64, o["prompt"], o["answer"], o["group"])
    out = dict(allreduce=[], weightsync=[], train=[], online=[], rtt={}, namespaces_removed=None)
    # Namespaces of an earlier run killed with SIGKILL (nothing running in them) are named,
    # not removed: another run of the suite may be between two commands.
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
    stale = [line.split()[0] for line in listed if line.startswith("ksc")
             and not subprocess.run(["ip", "netns", "pids", line.split()[0]], capture_output=True, text=True).stdout.strip()]
    if stale:
        rn.log(f"network namespaces of an earlier run of this suite are left ({', '.join(stale)}); if no other run is "
               "under way, remove them with ip netns del NAME")
    with Hosts(n, rn.workdir) as h:
        rn.log(f"hosts: {n} network namespaces on a bridge ({h.subnet}.0/24), tag {h.tag}")
        for k in range(rounds):
            for rate in rates:
                h.shape(rate)
                link = "veth" if rate is None else f"veth {rate}"
                rn.log(f"hosts round {k + 1}/{rounds}, link {link}: allreduce sweep between 2 hosts")
                # Slow links: up to 16 MiB (a 64 MiB binomial allreduce at 200 Mbit/s takes 6 s a repeat).
                cap = 16 if rate and model.parse_rate(rate) < 1e9 else None
                rows = parse_rows(rn.run(h.mpirun([1, 1], [BENCH] + sweep_args(rn.quick, cap)), f"allreduce sweep 2 hosts {link}",
                                         capture_name=f"allreduce-2host-{rate or 'none'}-{k}.txt"))
                out["allreduce"].append(dict(link=link, rate=rate, ranks=2, hosts=2, rows=rows, round=k))
                if rate and k == 0:
                    # The same with libnbc's ring algorithm, for comparison (kat-dist's in-place
                    # allreduce always gets the binomial one).
                    rows = parse_rows(rn.run(h.mpirun([1, 1], [BENCH] + sweep_args(rn.quick, cap), extra=["--mca", "coll_libnbc_iallreduce_algorithm", "1"]),
                                             f"allreduce sweep 2 hosts {link} ring", capture_name=f"allreduce-2host-{rate}-ring.txt"))
                    out.setdefault("allreduce_ring", []).append(dict(link=link, rate=rate, ranks=2, hosts=2, rows=rows))
                layouts = [[1, 2], [1, 1, 1]] + ([[1, 1, 1, 1]] if n >= 4 else [])
                for slots in layouts:
                    rn.log(f"  weight sync, ranks per host {slots}")
                    w = parse_weightsync(rn.run(h.mpirun(slots, [BENCH, "weightsync", "--mib", "16" if rate else mib, "--repeat", "5"]),
                                                f"weightsync hosts {slots} {link}"))
                    w.update(hosts=len(slots), slots=slots, rollouts=sum(slots) - 1, link=link, rate=rate, round=k, **rn.last)
                    out["weightsync"].append(w)
                rn.log("  offline training, one trainer per host (comm.overlap=false)")
                run = os.path.join(rn.workdir, f"twohost-train-{rate or 'none'}-{k}")
                rn.run(h.mpirun([1, 1], offline_args(run, data, 2, 64, 7 if rn.quick else 10, ["--set", "comm.overlap=false"])),
                       f"offline T=2 two hosts {link}", metrics=os.path.join(run, "metrics.jsonl"), skip=2)
                s = summarize_training(metrics_lines(os.path.join(run, "metrics.jsonl")), skip=2)
                s.update(link=link, rate=rate, trainers=2, round=k, **rn.last)
                out["train"].append(s)
                rn.log("  online run: trainer on host 0, two rollout ranks on host 1")
                run = os.path.join(rn.workdir, f"twohost-online-{rate or 'none'}-{k}")
                rn.run(h.mpirun([1, 2], online_args(run, 12 if rn.quick else 20, False)), f"online T=1 R=2 two hosts {link}",
                       metrics=os.path.join(run, "metrics.jsonl"), skip=3)
                s = summarize_training(metrics_lines(os.path.join(run, "metrics.jsonl")), skip=3)
                s.update(link=link, rate=rate, rollouts=2, round=k, **rn.last)
                out["online"].append(s)
        h.shape(None)
        made = list(h.made)
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    out["namespaces_removed"] = not any(m in left for m in made)
    res["hosts"] = out


def part_env(rn, res):
    """Round trip of one episode step with the example external environment (JSON lines
    over a pipe): the environment latency the model takes per episode turn."""
    env = os.path.join(ROOT, "Launch/envs/reverse_env.py")
    p = subprocess.Popen([sys.executable, env], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    times = []
    for i in range(200):
        t = time.perf_counter()
        p.stdin.write(json.dumps({"op": "reset", "seed": i, "split": "train"}) + "\n")
        p.stdout.readline()
        p.stdin.write(json.dumps({"op": "step", "action": "abc"}) + "\n")
        p.stdout.readline()
        times.append(time.perf_counter() - t)
    p.stdin.close()
    p.wait()
    res["env"] = dict(episode_round_trip_s=statistics.median(times), command=f"python3 {os.path.relpath(env, ROOT)}")


# ---------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats and sizes (under 10 minutes)")
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated parts to measure")
    ap.add_argument("--from-raw", metavar="FILE", help="skip measuring: fit and write the docs from saved measurements")
    ap.add_argument("--merge", metavar="FILE", help="measurements to keep for parts not measured now")
    ap.add_argument("--out", default=os.path.join(ROOT, "Docs"), help="where scaling.md and scaling/ go")
    ap.add_argument("--check-parsing", metavar="DIR", help="parse captured outputs in DIR and print them as JSON")
    ap.add_argument("--capture", metavar="DIR", help="also keep every kat-bench output in DIR")
    args = ap.parse_args()
    if args.check_parsing:
        if not os.path.isdir(args.check_parsing):
            print(f"scaling: --check-parsing {args.check_parsing}: no such directory", file=sys.stderr)
            return 2
        check_parsing(args.check_parsing)
        return 0
    out_dir = os.path.join(args.out, "scaling")
    raw_path = os.path.join(out_dir, "measurements.json")
    # Where the page goes is checked before an hour of measuring, not after.
    for d in (args.out, out_dir):
        if os.path.exists(d) and not os.path.isdir(d):
            print(f"scaling: --out: {d} exists and is not a directory", file=sys.stderr)
            return 2
    probe = args.out
    while not os.path.exists(probe):
        probe = os.path.dirname(os.path.abspath(probe))
    if not os.access(probe, os.W_OK | os.X_OK):
        print(f"scaling: --out: cannot write into {probe}", file=sys.stderr)
        return 2
    if args.from_raw and (args.parts != ",".join(PARTS) or args.merge or args.quick):
        print("scaling: --from-raw fits and writes from saved measurements without measuring; --parts, --merge and "
              "--quick apply to measuring", file=sys.stderr)
        return 2
    if args.from_raw:
        res, why = read_measurements(args.from_raw, need_compute=True)
        if why:
            print(f"scaling: --from-raw {args.from_raw}: {why}", file=sys.stderr)
            return 2
        res["refit"] = dict(command=f"python3 Benchmarks/scaling.py --from-raw {args.from_raw}", date=time.strftime("%Y-%m-%d %H:%M"))
    else:
        for exe in (KAT, BENCH):
            if not os.access(exe, os.X_OK):
                print(f"scaling: {exe} is missing; build first (swift build -c release), or run bash Benchmarks/scaling.sh", file=sys.stderr)
                return 2
        parts = [p for p in args.parts.split(",") if p]
        bad = [p for p in parts if p not in PARTS]
        if bad:
            print(f"scaling: unknown part(s) {bad}; parts are {PARTS}", file=sys.stderr)
            return 2
        res = {}
        if args.merge:
            res, why = read_measurements(args.merge)
            if why:
                print(f"scaling: --merge {args.merge}: {why}", file=sys.stderr)
                return 2
            res.pop("refit", None)
        # The model fits on every part but the hosts and the environment (optional).
        missing = [p for p in PARTS if p not in parts and not res.get(PART_KEYS.get(p, p)) and p not in ("hosts", "env")]
        if missing:
            print(f"scaling: the model fits on every part; measure {', '.join(missing)} too, or --merge a measurements file "
                  "that has them", file=sys.stderr)
            return 2
        workdir = tempfile.mkdtemp(prefix="kat-scaling-")
        if args.capture:
            os.makedirs(args.capture, exist_ok=True)
        rn = Runner(args.quick, workdir, raw_dir=args.capture)
        started = time.time()

        def stop(sig, frame):
            raise KeyboardInterrupt
        # Also when started where SIGINT is ignored (in the background of a script).
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, stop)
        try:
            for part in parts:
                globals()["part_" + part](rn, res)
        except KeyboardInterrupt:
            print("scaling: interrupted; the commands it started are stopped and its network namespaces removed; "
                  "nothing was written", file=sys.stderr)
            return 130
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        cmdline = "bash Benchmarks/scaling.sh" + (" --quick" if args.quick else "")
        if args.parts != ",".join(PARTS):
            cmdline += f" --parts {args.parts}"
        if args.merge:
            cmdline += f" --merge {args.merge}"
        loads = [x for pair in rn.loads for x in pair]
        res["run"] = dict(command=cmdline, quick=args.quick, cores=CORES, seconds=round(time.time() - started),
                          date=time.strftime("%Y-%m-%d %H:%M"), cpu=cpu_name(), blas=blas_summary(),
                          load_min=min(loads) if loads else None, load_max=max(loads) if loads else None,
                          load_median=statistics.median(loads) if loads else None, commands=rn.commands)
        os.makedirs(out_dir, exist_ok=True)
        with open(raw_path, "w") as f:
            json.dump(res, f, indent=1)
        print(f"measurements written to {shown(raw_path)} ({res['run']['seconds']} s" + (f", load {res['run']['load_min']}-{res['run']['load_max']}" if loads else "") + ")")
    try:
        params = model.fit(res)
        held = model.held_out(res, params)
        for h in held:
            print(h["line"])
        proj = model.project(params, quick=res.get("run", {}).get("quick", False))
        proj["sensitivity"] = model.ratio_sensitivity(params, quick=res.get("run", {}).get("quick", False))
        report.write(res, params, held, proj, args.out)
    except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError, AttributeError, RuntimeError) as e:
        source = args.from_raw or os.path.relpath(raw_path, ROOT)
        print(f"scaling: the model cannot be fitted on the measurements in {source}: they are incomplete or were edited "
              f"({type(e).__name__}: {e}); measure again with bash Benchmarks/scaling.sh", file=sys.stderr)
        return 2
    if args.from_raw and os.path.realpath(args.from_raw) != os.path.realpath(raw_path):
        # The page names its measurements beside it.
        shutil.copyfile(args.from_raw, raw_path)
    print(f"wrote {shown(os.path.join(args.out, 'scaling.md'))} and {shown(out_dir)}/*.svg")
    return 0


# Measured quantities (by the end of their name) that are numbers and never negative.
MEASURED_SUFFIXES = ("_s", "_GBps", "_per_s", "bytes", "_cores", "tok_s", "_flops", "_gflop", "seconds", "repeats", "steps")


def bad_measurement(res, path="measurements"):
    """The first measured value of a measurements file that is not a number or is negative
    (a file edited by hand), named by its path, or None."""
    if isinstance(res, dict):
        for k, v in res.items():
            here = f"{path}.{k}"
            if isinstance(k, str) and k.endswith(MEASURED_SUFFIXES) and v is not None and not isinstance(v, (dict, list)):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
                    return f"{here} is {v!r}, not a number"
                if v < 0:
                    return f"{here} is negative ({v})"
            found = bad_measurement(v, here)
            if found:
                return found
    elif isinstance(res, list):
        for i, v in enumerate(res):
            found = bad_measurement(v, f"{path}[{i}]")
            if found:
                return found
    return None


def read_measurements(path, need_compute=False):
    """A measurements file of this suite, checked: (measurements, None), or (None, why not)."""
    try:
        with open(path) as f:
            res = json.load(f)
    except (OSError, ValueError) as e:
        return None, f"cannot read it: {e}"
    if not isinstance(res, dict) or (need_compute and not res.get("compute")):
        return None, "not a measurements file of this suite" + (" (no compute part)" if isinstance(res, dict) else "")
    bad = bad_measurement(res)
    return (None, bad + "; measure again with bash Benchmarks/scaling.sh") if bad else (res, None)


def shown(path):
    """A path as printed: relative to the repository when inside it."""
    rel = os.path.relpath(path, ROOT)
    return os.path.abspath(path) if rel.startswith("..") else rel


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def blas_summary():
    try:
        r = subprocess.run([KAT, "--version"], capture_output=True, text=True, timeout=30)
        lines = [l for l in r.stdout.splitlines() if "OpenBLAS" in l or "kernel" in l]
        return lines[0].strip() if lines else ""
    except (OSError, subprocess.SubprocessError):
        return ""


if __name__ == "__main__":
    sys.exit(main())
