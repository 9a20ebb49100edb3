"""Docs/scaling.md and its SVG plots, from the scaling suite's measurements, the fitted
model, the held-out checks and the projections (Benchmarks/scaling.py calls `write`)."""
import math
import os
import re

import scaling_model as model

COLORS = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#f0e442"]


# ---------------------------------------------------------------------------------------
# SVG charts (no library)


def nice_ticks(lo, hi, n=5):
    if hi <= lo:
        hi = lo + 1
    span = hi - lo
    step = 10 ** math.floor(math.log10(span / n))
    for f in (1, 2, 5, 10):
        if span / (step * f) <= n:
            step *= f
            break
    start = math.ceil(lo / step) * step
    ticks = []
    t = start
    while t <= hi + 1e-9 * step:
        ticks.append(round(t, 12))
        t += step
    return ticks


def log_ticks(lo, hi):
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    ticks = [10 ** k for k in range(a, b + 1)]
    if len(ticks) <= 3:
        ticks = sorted({m * 10 ** k for k in range(a, b + 1) for m in (1, 2, 5)})
    return [t for t in ticks if lo * 0.999 <= t <= hi * 1.001]


def label(v):
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e9:
        return f"{v / 1e9:g}G"
    if a >= 1e6:
        return f"{v / 1e6:g}M"
    if a >= 1e4:
        return f"{v / 1e3:g}k"
    if a >= 1:
        return f"{v:g}"
    return f"{v:.3g}"


def esc(t):
    return str(t).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def chart(series, title, xlabel, ylabel, logx=False, logy=False, width=640, height=380, xticks=None, ylim=None, bars=None):
    """A line chart (series: name, points [(x, y)], optional dash, hollow markers, no line)
    or, with `bars` (categories, [(name, values)]), a grouped bar chart."""
    L, R, B = 86, 20, 56
    # Room above the plot for the legend's rows (laid out the same way below).
    names = [n for n, _ in bars[1]] if bars else [x["name"] for x in series]
    rows_, x = 1, L
    for n in names:
        w_ = 7 * len(n) + 40
        if x + w_ > width - R:
            rows_, x = rows_ + 1, L
        x += w_
    Tp = 38 + 16 * (rows_ - 1) + 24
    pw, ph = width - L - R, height - Tp - B
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'font-family="DejaVu Sans, Arial, sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14" font-weight="bold">{esc(title)}</text>']
    if bars:
        cats, groups = bars
        ymax = max(v for _, vals in groups for v in vals if v is not None) * 1.1
        ys = nice_ticks(0, ymax)
        ymax = max(ymax, ys[-1])
        fy = lambda v: Tp + ph - v / ymax * ph  # noqa: E731
        for t in ys:
            out.append(f'<line x1="{L}" x2="{L + pw}" y1="{fy(t):.1f}" y2="{fy(t):.1f}" stroke="#ddd"/>')
            out.append(f'<text x="{L - 6}" y="{fy(t) + 4:.1f}" text-anchor="end">{label(t)}</text>')
        gw = pw / len(cats)
        bw = gw * 0.8 / len(groups)
        for i, c in enumerate(cats):
            out.append(f'<text x="{L + gw * (i + 0.5):.1f}" y="{Tp + ph + 18}" text-anchor="middle">{esc(c)}</text>')
            for j, (name, vals) in enumerate(groups):
                v = vals[i]
                if v is None:
                    continue
                x = L + gw * i + gw * 0.1 + bw * j
                out.append(f'<rect x="{x:.1f}" y="{fy(v):.1f}" width="{bw:.1f}" height="{Tp + ph - fy(v):.1f}" fill="{COLORS[j % len(COLORS)]}"/>')
                out.append(f'<text x="{x + bw / 2:.1f}" y="{fy(v) - 3:.1f}" text-anchor="middle" font-size="10">{label(round(v, 3))}</text>')
        legend = [(name, COLORS[j % len(COLORS)], None, False, False) for j, (name, _) in enumerate(groups)]
    else:
        pts = [(x, y) for s in series for x, y in s["points"] if y is not None and (not logy or y > 0) and (not logx or x > 0)]
        xs, ys_ = [x for x, _ in pts], [y for _, y in pts]
        xlo, xhi = min(xs), max(xs)
        ylo, yhi = (min(ys_), max(ys_)) if ylim is None else ylim
        if logx:
            xlo, xhi = xlo / 1.3, xhi * 1.3
        if logy:
            ylo, yhi = ylo / 1.5, yhi * 1.5
        else:
            ylo = min(0.0, ylo) if ylim is None else ylo
            yhi = yhi * 1.1 if ylim is None else yhi
            if xhi == xlo:
                xhi = xlo + 1
        if not logx:
            pad = (xhi - xlo) * 0.05
            xlo, xhi = xlo - pad, xhi + pad
        tx = xticks or (log_ticks(xlo, xhi) if logx else nice_ticks(xlo, xhi))
        ty = log_ticks(ylo, yhi) if logy else nice_ticks(ylo, yhi)
        if not logy:
            yhi = max(yhi, ty[-1])
        fx = (lambda v: L + (math.log10(v) - math.log10(xlo)) / (math.log10(xhi) - math.log10(xlo)) * pw) if logx else \
             (lambda v: L + (v - xlo) / (xhi - xlo) * pw)
        fy = (lambda v: Tp + ph - (math.log10(v) - math.log10(ylo)) / (math.log10(yhi) - math.log10(ylo)) * ph) if logy else \
             (lambda v: Tp + ph - (v - ylo) / (yhi - ylo) * ph)
        for t in ty:
            out.append(f'<line x1="{L}" x2="{L + pw}" y1="{fy(t):.1f}" y2="{fy(t):.1f}" stroke="#ddd"/>')
            out.append(f'<text x="{L - 6}" y="{fy(t) + 4:.1f}" text-anchor="end">{label(t)}</text>')
        for t in tx:
            out.append(f'<line x1="{fx(t):.1f}" x2="{fx(t):.1f}" y1="{Tp}" y2="{Tp + ph}" stroke="#eee"/>')
            out.append(f'<text x="{fx(t):.1f}" y="{Tp + ph + 18}" text-anchor="middle">{label(t)}</text>')
        legend = []
        for k, s in enumerate(series):
            col = s.get("color") or COLORS[k % len(COLORS)]
            p = [(fx(x), fy(y)) for x, y in s["points"] if y is not None and (not logy or y > 0) and (not logx or x > 0)]
            if not s.get("markers_only") and len(p) > 1:
                d = " ".join(f"{'M' if i == 0 else 'L'}{x:.1f},{y:.1f}" for i, (x, y) in enumerate(p))
                dash = ' stroke-dasharray="6,4"' if s.get("dash") else ""
                out.append(f'<path d="{d}" fill="none" stroke="{col}" stroke-width="2"{dash}/>')
            if not s.get("no_markers"):
                for i, (x, y) in enumerate(p):
                    hollow = s.get("hollow_from") is not None and i >= s["hollow_from"]
                    fill = "white" if hollow or s.get("hollow") else col
                    out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{fill}" stroke="{col}" stroke-width="2"/>')
            legend.append((s["name"], col, s.get("dash"), s.get("hollow"), s.get("no_markers")))
    out.append(f'<rect x="{L}" y="{Tp}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>')
    out.append(f'<text x="{L + pw / 2}" y="{height - 12}" text-anchor="middle">{esc(xlabel)}</text>')
    out.append(f'<text transform="translate(18,{Tp + ph / 2}) rotate(-90)" text-anchor="middle">{esc(ylabel)}</text>')
    # Legend above the plot, wrapped.
    x, y = L, 38
    for name, col, dash, hollow, nom in legend:
        wtxt = 7 * len(name) + 40
        if x + wtxt > width - R:
            x, y = L, y + 16
        d = ' stroke-dasharray="6,4"' if dash else ""
        out.append(f'<line x1="{x}" x2="{x + 22}" y1="{y - 4}" y2="{y - 4}" stroke="{col}" stroke-width="2"{d}/>')
        if not nom:
            out.append(f'<circle cx="{x + 11}" cy="{y - 4}" r="3.5" fill="{"white" if hollow else col}" stroke="{col}" stroke-width="2"/>')
        out.append(f'<text x="{x + 28}" y="{y}">{esc(name)}</text>')
        x += wtxt
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------
# Markdown


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out)


def f(x, d=3):
    if x is None:
        return "-"
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return "-"
    return model.fmt(x) if d is None else f"{x:.{d}f}"


def command_of(res, label_prefix):
    """The first command the suite ran whose label starts with `label_prefix`, with its
    temporary paths shortened."""
    for c in res.get("run", {}).get("commands", []):
        if c["label"].startswith(label_prefix):
            cmd = re.sub(r"/tmp/kat-scaling-[a-z0-9_]+/", "$TMP/", c["cmd"])
            # Paths inside whichever checkout ran the suite, relative to its root.
            return re.sub(r"(?<![\w.$])/\S*?/(\.build/release/|Benchmarks/|Launch/)", r"\1", cmd)
    return None


def write(res, p, held, proj, out):
    figs = os.path.join(out, "scaling")
    os.makedirs(figs, exist_ok=True)
    run = res.get("run", {})
    cores = run.get("cores", 2)
    # Where this page's measurements are, as a reader in the repository's root would name them.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    raw = os.path.relpath(os.path.join(os.path.abspath(out), "scaling", "measurements.json"), root)
    if raw.startswith(".."):
        raw = os.path.join(os.path.abspath(out), "scaling", "measurements.json")
    out_opt = "" if os.path.abspath(out) == os.path.join(root, "Docs") else f" --out {out}"
    md = []
    add = md.append

    def svg(name, text):
        with open(os.path.join(figs, name), "w") as fh:
            fh.write(text)
        add(f"![{name}](scaling/{name})\n")

    def cmd(label_prefix, note=""):
        c = command_of(res, label_prefix)
        if c:
            add(f"    {c}{note}\n")

    add("# Scaling\n")
    add("How kat-dist's throughput depends on the number of trainer and rollout ranks, on hosts and on the links "
        "between them: what this machine can measure, measured by one command, and a performance model calibrated on "
        "those measurements that projects runs on 8, 64 and 512 nodes.\n")
    add("    bash Benchmarks/scaling.sh            # the full suite (under an hour)")
    add("    bash Benchmarks/scaling.sh --quick    # fewer repeats and sizes (under 10 minutes)\n")
    add(f"This page was written by `{run.get('command', 'bash Benchmarks/scaling.sh')}` on {run.get('date', '?')}: "
        f"{run.get('cpu', '?')}, {cores} cores, {run.get('blas', '')}; the suite took {run.get('seconds', '?')} s. "
        f"The load average (other processes shared the machine) was {f(run.get('load_min'), 1)} to "
        f"{f(run.get('load_max'), 1)} (median {f(run.get('load_median'), 1)}) over the commands. The measurements are in "
        f"`{raw}` (every command with its load, wall time and CPU use is listed there); "
        f"`python3 Benchmarks/scaling.py --from-raw {raw}{out_opt}` fits the model and writes this page "
        f"again from them without measuring." + (f" The model was fitted and this page written again from them by "
                                                 f"`{res['refit']['command']}` on {res['refit']['date']}." if res.get("refit") else "") + "\n")
    add("The suite is `Benchmarks/scaling.sh` (it builds in release mode and runs `Benchmarks/scaling.py`); the model is "
        "`Benchmarks/scaling_model.py` (Python standard library only); this page and its plots come from "
        "`Benchmarks/scaling_report.py`.\n")
    add("## Timing on a shared machine\n")
    add("Every configuration is run in rounds, interleaved with the others, and the best round is kept (per step, the "
        "median over the run's steps after the first). The suite also records, for every command, the CPU time of its "
        "own processes and the CPU time every other process of the machine took meanwhile (`/proc/stat`): the "
        "*background cores*. Single-process kernel timings are taken as the thread's CPU time, which other processes do "
        "not inflate much; the model predicts a multi-rank run's wall time from its CPU work shared over the cores the "
        "background left (processor sharing), so a run measured while others built is compared with the model given "
        "that run's background.\n")

    # 1. Trie vs flat
    add("## Trie vs flat (W1-W3) and the memory curve\n")
    add("Forward + backward of GPT-2 C=256, L=4, NH=4, V=260 (one BLAS thread) on the trie benchmark's workloads: W1, "
        "8 prompts x 8 samples (256-token prompts, 64-token answers); W2, 4 agentic rollouts of 8 turns that re-send "
        "their history; W3, a 128-token prompt with 96-token answers branching two ways at depths 24, 48 and 72. "
        "Times are the best CPU time of the thread; wall times are in the measurements.\n")
    cmd("kat-bench compute")
    W = {}
    for r in res["compute"]:
        if r["batch"].startswith("W"):
            W.setdefault(r["batch"].split("-")[0], {})[r["batch"].split("-")[1]] = r
    rows = []
    for w, d in sorted(W.items()):
        fl, tr = d["flat"], d["trie"]
        fr = (fl["layer_gflop"] + fl["head_gflop"] + fl["attn_gflop"]) / (tr["layer_gflop"] + tr["head_gflop"] + tr["attn_gflop"])
        mr = fl["cpu_s"] / tr["cpu_s"]
        rows.append([w, fl["rows"], tr["rows"], f(fr, 2), f(fl["cpu_s"]), f(tr["cpu_s"]), f(mr, 2), f(mr / fr, 2),
                     f"{fl['act_mib']} MiB", f"{tr['act_mib']} MiB"])
    add(table(["workload", "flat tokens", "trie tokens", "FLOP ratio", "flat (s)", "trie (s)", "measured ratio",
               "measured / FLOP", "activations flat", "activations trie"], rows) + "\n")
    svg("trie-vs-flat.svg", chart(None, "Trie vs flat: forward+backward CPU time (GPT-2 C=256 L=4)", "workload", "seconds",
                                  bars=(sorted(W), [("flat", [W[k]["flat"]["cpu_s"] for k in sorted(W)]),
                                                    ("trie", [W[k]["trie"]["cpu_s"] for k in sorted(W)])])))
    tm = res.get("trie_memory")
    if tm:
        cmd("kat-bench trie --memory")
        add(table(["W1 scale", "trie tokens", "activations", "per 1k trie tokens"],
                  [[f"{r['scale']}x", r["trie_tokens"], f"{r['act_mib']} MiB", f"{r['mib_per_1k']} MiB"] for r in tm["rows"]]) + "\n")
        add(f"Peak RSS of that process: {f(tm.get('peak_rss_mib'), 0)} MiB. Activation memory grows linearly with trie tokens.\n")
        pts = [(r["trie_tokens"], r["act_mib"]) for r in tm["rows"]]
        k = pts[0][1] / pts[0][0]
        svg("trie-memory.svg", chart([dict(name="measured", points=pts),
                                      dict(name="linear through 1x", points=[(0, 0), (pts[-1][0], k * pts[-1][0])], dash=True, no_markers=True)],
                                     "Activation memory vs trie tokens (W1 at 1x, 2x, 4x)", "trie tokens", "MiB"))

    # 2. Trainers
    tr = res.get("trainers", [])
    if tr:
        wl = res.get("offline_workload", {})
        add("## Trainers: strong and weak scaling\n")
        add(f"Offline training (the default model: GPT-2 C=128, L=4, V=260) on groups of {wl.get('group', 8)} answers of "
            f"{wl.get('answer', 32)} tokens to a {wl.get('prompt', 128)}-token prompt (random tokens; the suite writes them to "
            f"`$TMP/offline.jsonl` with `w1_like_data` in Benchmarks/scaling.py), one BLAS thread per rank. Strong scaling: 64 "
            f"trajectories a step whatever T; weak: 32 per trainer. T = 1..{cores} fit the cores; larger T are "
            f"oversubscribed (marked): their ranks share the {cores} cores. Step time is the median wall time between "
            f"steps after the first two, best of the rounds; the model column is the model's prediction for that run "
            f"(given its background cores; fitted on T = 1 only).\n")
        cmd("offline T=1 strong")
        base = {m: next((r for r in tr if r["trainers"] == 1 and r["mode"] == m), None) for m in ("strong", "weak")}
        rows = []
        for r in sorted(tr, key=lambda r: (r["mode"], r["trainers"])):
            b = base[r["mode"]]
            sp = (b["step_wall_s"] / r["step_wall_s"]) if r["mode"] == "strong" else (r["flat_tokens_per_s"] / b["flat_tokens_per_s"])
            pred = model.predict_offline_step(dict(r, cores=r.get("cores", cores)), p)
            rows.append([r["mode"], f"{r['trainers']}{' (oversubscribed)' if r['oversubscribed'] else ''}", r["trajectories_per_step"],
                         f(r["step_wall_s"]), f(pred), f(r["t_forward_backward"]), f(r["t_allreduce"], 4), f(r["flat_tokens_per_s"], 0),
                         f(sp, 2), f(r.get("background_cores"), 2),
                         f(r["our_cores"] * r["step_wall_s"]) if r.get("our_cores") is not None else "-",
                         f(model.offline_cpu_per_step(r, p))])
        add(table(["scaling", "trainers T", "trajectories/step", "step (s)", "model (s)", "forward+backward (s)", "allreduce (s)",
                   "flat tokens/s", "speed-up", "background cores", "CPU per step (s)", "model CPU (s)"], rows) + "\n")
        add("CPU per step is the CPU time the run's ranks used over its steps (sampled from /proc) per step; model CPU is "
            "the FLOP-model work of all T trainers. The model predicts the step as that work shared over the cores the "
            "background left; where a run used more CPU per step than the model's work, the difference is spent outside "
            "the FLOP count (ranks that finished their shard polling in MPI while they wait for the slowest, and switching "
            "between oversubscribed ranks), and the model's step comes out short by about as much.\n")
        add("Speed-up is step time against T = 1 (strong) or throughput against T = 1 (weak); the ideal is T up to the core "
            "count and flat beyond it.\n")
        series = []
        for k, m in enumerate(("strong", "weak")):
            pts = sorted((r["trainers"], (base[m]["step_wall_s"] / r["step_wall_s"]) if m == "strong" else r["flat_tokens_per_s"] / base[m]["flat_tokens_per_s"])
                         for r in tr if r["mode"] == m)
            first_over = next((i for i, (t, _) in enumerate(pts) if t > cores), None)
            series.append(dict(name=f"{m} (hollow: oversubscribed)", points=pts, hollow_from=first_over))
        ts = sorted({r["trainers"] for r in tr})
        series.append(dict(name=f"ideal on {cores} cores", points=[(t, min(t, cores)) for t in ts], dash=True, no_markers=True, color="#888"))
        svg("trainers.svg", chart(series, "Trainer scaling (offline, C=128 L=4)", "trainer ranks T", "speed-up over T=1", xticks=ts))

    # 3. Rollouts
    ro = res.get("rollouts", [])
    if ro:
        add("## Rollout ranks: generated tokens, trainer idle, staleness, multiplexing\n")
        add("Asynchronous RL on the default task and model (one trainer, R rollout ranks, 16 prompts x 8 samples a step, "
            "answers of up to 16 tokens, no warm start), with multiplexing off and on. Generated tokens/s counts the flat "
            "tokens that reached the trainer; trainer idle is the `trainer_idle` metric (time asleep waiting for groups); "
            "wait share is `t_wait_data` over the step; throttled is the rollout ranks' share of time waiting for newer "
            "weights under admission control (`throttled_s`); staleness is the share of trained trajectories by lag. "
            f"R + 1 > {cores} ranks are oversubscribed. The model columns come from the simulation (calibrated on R = 1 "
            "without multiplexing only).\n")
        cmd("online T=1 R=1 multiplex off")
        if res.get("partial_key"):
            add("Partial rollouts (`rollout.partial`) are on by default, so `off` and `on` run with them; `off+partial` "
                "sets the key explicitly (the same settings as `off`: a second measurement of them), and `off-partial` "
                "turns partial rollouts off, with multiplexing off.\n")
        else:
            add("**With and without partial rollouts: not measured yet.** This build has no partial rollouts "
                "(`rollout.partial` is not a key of `kat-dist train --keys`), so every row below is without them. The "
                "suite measures both as soon as the key exists; the simulation has them as a parameter (`partial`), "
                "but no projection below uses it, since no measurement calibrates it.\n")
        rows = []
        sims = {}
        for r in sorted(ro, key=lambda r: (r["rollouts"], r["mode"])):
            sim = None
            if "gen_s_per_token" in p:
                sim = model.simulate(model.online_sim_config(dict(r, cores=r.get("cores", cores)), p, p["gen_s_per_token"]))
                sims[(r["rollouts"], r["mode"])] = sim
            h = r["staleness_hist"]
            n = sum(h) or 1
            rows.append([r["rollouts"], r["mode"] + (" (oversubscribed)" if r["oversubscribed"] else ""), f(r["generated_tokens_per_s"], 0),
                         f(sim["generated_tokens_per_s"], 0) if sim else "-", f(r["step_wall_s"]), f(sim["step_s"]) if sim else "-",
                         f(r["trainer_idle"]), f(r["wait_share"]), f(sim["trainer_idle"]) if sim else "-", f(r["generate_share"]),
                         f(r.get("throttled_share")), f(sim.get("throttled_share")) if sim else "-",
                         " / ".join(f"{x / n:.2f}" for x in h[:3]), " / ".join(f"{x:.2f}" for x in sim["staleness_hist"][:3]) if sim else "-",
                         f(r.get("background_cores"), 2)])
        add(table(["R", "multiplex", "generated tok/s", "model", "step (s)", "model", "trainer idle", "wait share",
                   "model wait", "trainers generating", "throttled", "model", "lag 0 / 1 / 2", "model lag 0 / 1 / 2", "background cores"], rows) + "\n")
        series = []
        for k, mode in enumerate(sorted({r["mode"] for r in ro})):
            pts = sorted((r["rollouts"], r["generated_tokens_per_s"]) for r in ro if r["mode"] == mode)
            series.append(dict(name=f"multiplex {mode}", points=pts, hollow_from=next((i for i, (x, _) in enumerate(pts) if x + 1 > cores), None)))
            if sims:
                series.append(dict(name=f"model, multiplex {mode}", points=sorted((x, sims[(x, mode)]["generated_tokens_per_s"]) for x, _ in pts),
                                   dash=True, color=COLORS[k], hollow=True))
        rs = sorted({r["rollouts"] for r in ro})
        svg("rollouts.svg", chart(series, "Generated tokens/s vs rollout ranks (T=1; hollow: oversubscribed)", "rollout ranks R",
                                  "generated flat tokens/s", xticks=rs))
        series = []
        for k, mode in enumerate(sorted({r["mode"] for r in ro})):
            series.append(dict(name=f"trainer idle, multiplex {mode}", points=sorted((r["rollouts"], r["trainer_idle"]) for r in ro if r["mode"] == mode)))
            series.append(dict(name=f"wait share, multiplex {mode}", points=sorted((r["rollouts"], r["wait_share"]) for r in ro if r["mode"] == mode),
                               dash=True, color=COLORS[k]))
        svg("trainer-idle.svg", chart(series, "Trainer idle and wait share vs rollout ranks (T=1)", "rollout ranks R", "share of step time",
                                      xticks=rs, ylim=(0, 1)))
        cats, groups = [], []
        maxlag = max(len(r["staleness_hist"]) for r in ro)
        lag_rows = sorted(ro, key=lambda r: (r["rollouts"], r["mode"]))
        cats = [f"R={r['rollouts']} {r['mode']}" for r in lag_rows]
        for lag in range(min(maxlag, 3)):
            groups.append((f"lag {lag}", [r["staleness_hist"][lag] / max(1, sum(r["staleness_hist"])) for r in lag_rows]))
        svg("staleness.svg", chart(None, "Staleness: share of trained trajectories by lag", "layout (multiplex off/on)", "share",
                                   bars=(cats, groups), width=720))

    # 4. Allreduce
    add("## Allreduce: bus bandwidth against message size\n")
    add("kat-dist's in-place float allreduce between two ranks, best of the repeats, as bus bandwidth: 2 (p-1)/p x bytes / "
        "time, the traffic through each rank's link in a ring allreduce. Its bound is the link's point-to-point bandwidth "
        "(measured in the same run: half a ping-pong), drawn dashed; it bounds large messages only: below about 64 KiB "
        "both are set by latency, and the ping-pong's and the allreduce's small-message protocols differ, so the ratio "
        "there (above 1 at 4 KiB on some links) says nothing about bandwidth. Links: shared memory (Open MPI's default on one host), "
        "TCP over loopback (`--mca btl tcp,self`), and between two network-namespace hosts over veth links through a bridge, "
        "unshaped and limited with `tc qdisc ... tbf` (this kernel has no netem: the latency is what the link has, measured "
        "by the smallest message's round trip, and enters the model as a parameter).\n")
    cmd("allreduce sweep shm")
    cmd("allreduce sweep tcp")
    cmd("allreduce sweep 2 hosts")
    sweeps = [(a["link"] + (f", {a['ranks']} ranks (oversubscribed)" if a.get("ranks", 2) > 2 else ""), a["rows"], a.get("ranks", 2))
              for a in res.get("allreduce", [])]
    hosts = res.get("hosts") or {}
    for rate in [None] + sorted({a["rate"] for a in hosts.get("allreduce", []) if a.get("rate")}):
        sw = [a for a in hosts.get("allreduce", []) if a.get("rate") == rate]
        if sw:
            sweeps.append((("two hosts, veth" + (f" {rate}" if rate else " unshaped")), model.min_rows(sw), 2))
    rows = []
    for name, rs_, pr in sweeps:
        for r in rs_:
            if r["bytes"] in (4096, 65536, 1 << 20, 1 << 24, 1 << 26):
                bw = r["bytes"] * 2 * (pr - 1) / pr / r["allreduce_best_s"] / 1e9
                p2p = r["bytes"] / r["oneway_best_s"] / 1e9
                rows.append([name, r["bytes"], f"{r['allreduce_best_s'] * 1e6:.0f}", f(bw, 3), f(p2p, 3), f(bw / p2p, 2)])
    add(table(["link", "bytes", "allreduce (us)", "bus GB/s", "point-to-point GB/s", "bus / ring bound"], rows) + "\n")
    series = []
    for k, (name, rs_, pr) in enumerate(sweeps):
        col = COLORS[k % len(COLORS)]
        series.append(dict(name=name, color=col, points=[(r["bytes"], r["bytes"] * 2 * (pr - 1) / pr / r["allreduce_best_s"] / 1e9) for r in rs_]))
        series.append(dict(name=f"{name}: ring bound", color=col, dash=True, no_markers=True,
                           points=[(r["bytes"], r["bytes"] / r["oneway_best_s"] / 1e9) for r in rs_]))
    if series:
        svg("allreduce.svg", chart(series, "Allreduce bus bandwidth vs message size (2 ranks; dashed: point-to-point bound)",
                                   "message bytes", "GB/s", logx=True, logy=True, width=760, height=460))
    ring = hosts.get("allreduce_ring", [])
    if ring:
        add("kat-dist's allreduce is in place, and Open MPI's libnbc (which runs every non-blocking collective) then always "
            "takes its binomial algorithm: with two ranks, the whole message goes up to rank 0, is summed, and comes back "
            "down, two transfers where a ring needs one. The same sweep with libnbc's ring forced "
            "(`--mca coll_libnbc_iallreduce_algorithm 1`) on the rate-limited link:\n")
        cmd("allreduce sweep 2 hosts veth", "   # add --mca coll_libnbc_iallreduce_algorithm 1 for the ring")
        rows = []
        for rg in ring:
            base = model.min_rows([a for a in hosts["allreduce"] if a.get("rate") == rg["rate"]])
            for rb, rr in zip(base, rg["rows"]):
                if rb["bytes"] >= 1 << 20:
                    rows.append([rg["link"], rb["bytes"], f(rb["allreduce_best_s"], 4), f(rr["allreduce_best_s"], 4), f(rb["oneway_best_s"], 4),
                                 f(rb["oneway_best_s"] / rb["allreduce_best_s"], 2), f(rr["oneway_best_s"] / rr["allreduce_best_s"], 2)])
        add(table(["link", "bytes", "binomial, as kat-dist runs (s)", "ring (s)", "one transfer (s)", "binomial / ring bound",
                   "ring / ring bound"], rows) + "\n")
    if "links" in p:
        rows = []
        add("Fitted per link (least squares on relative error over all sizes): point-to-point t = alpha + n / B; the "
            "binomial allreduce of the model (below) against the measured one at 4 MiB and up:\n")
        for name, lk in sorted(p["links"].items()):
            rows.append([name, f"{lk['p2p']['alpha'] * 1e6:.1f}", f(lk["p2p"]["bandwidth"] / 1e9, 3),
                         f(p.get("binomial_check", {}).get(name), 2)])
        add(table(["link", "p2p alpha (us)", "p2p B (GB/s)", "measured / model, 4 MiB and up"], rows) + "\n")
        add("Where the ratio is well above 1, large allreduces on those links take longer than two transfers and a sum: "
            "their time is the CPU's (copies, the sum and the kernel's TCP stack on a loaded 2-core machine, where both "
            "ranks and the kernel compete for the cores), not the link's. The rate-limited link, where the link sets the "
            "time, is held out below.\n")

    # 5. Weight sync
    ws = res.get("weightsync", [])
    hws = hosts.get("weightsync", [])
    if ws or hws:
        add("## Weight sync: rollout ranks and hosts\n")
        add("`kat-bench weightsync` (Benchmarks/kat-bench/Scaling.swift) moves new weights the way kat-dist does: trainer 0 "
            "writes its node's MPI-3 shared memory and sends one copy to each of at most two children in a binary tree of node "
            "leaders; each leader receives into its node's memory and forwards; then every rollout rank copies its node's "
            "weights. Latency is from trainer 0's start until the last rank holds the weights (median of 5 updates); "
            "publish is trainer 0's own time (what `t_weight_sync` measures in a run); root bytes what trainer 0 sent "
            "(`weight_bytes_root`).\n")
        cmd("weightsync 1 host R=1")
        cmd("weightsync hosts")
        rows = []
        for w in ws + sorted(hws, key=lambda w: (str(w.get("rate")), w["hosts"], w.get("round", 0))):
            if w.get("round", 0) != 0:
                continue
            link = None
            if w["hosts"] > 1:
                if w.get("rate"):
                    sw = model.min_rows([a for a in hosts["allreduce"] if a.get("rate") == w["rate"]])
                    link = model.shaped_link(w["rate"], min(r["oneway_best_s"] for r in sw))
                elif "veth" in p.get("links", {}):
                    link = p["links"]["veth"]["p2p"]
            pred = model.predict_weightsync(p, w, link) if (link or w["hosts"] == 1) else None
            rows.append([w["hosts"], " + ".join(str(s) for s in (w.get("slots") or [1, w["rollouts"]])), w.get("link", "shm") if w["hosts"] > 1 else "shared memory",
                         w["rollouts"], f"{w['bytes'] >> 20} MiB", f(w["latency_s"], 4), f(pred, 4) if pred else "-", f(w["publish_s"], 4),
                         w["root_bytes"], f(w.get("background_cores"), 2)])
        add(table(["hosts", "ranks per host", "link", "rollout ranks", "weights", "latency (s)", "model (s)", "publish (s)", "root bytes",
                   "background cores"], rows) + "\n")
        series = []
        if ws:
            series.append(dict(name="one host: vs rollout ranks", points=[(w["rollouts"], w["latency_s"]) for w in ws]))
        for k, rate in enumerate(sorted({str(w.get("rate")) for w in hws})):
            pts = sorted((w["hosts"], w["latency_s"]) for w in hws if str(w.get("rate")) == rate and w.get("round", 0) == 0 and w["hosts"] > 2 or
                         (str(w.get("rate")) == rate and w.get("round", 0) == 0 and w.get("slots") == [1, 2]))
            series.append(dict(name=f"vs hosts, veth {'unshaped' if rate == 'None' else rate}", points=pts))
        if series:
            svg("weightsync.svg", chart(series, "Weight sync latency (16 MiB of weights)", "rollout ranks (one host) or hosts", "seconds",
                                        logy=True))
        runs = hosts.get("online", [])
        if runs:
            add("In kat-dist runs across two hosts (trainer on host 0, two rollout ranks on host 1, no multiplexing), trainer 0 "
                "sent one copy per update:\n")
            add(table(["link", "weight_bytes_root", "t_weight_sync (s)", "step (s)", "staleness lag 0 / 1 / 2"],
                      [[t["link"], t["weight_bytes_root"], f(t["t_weight_sync"], 5), f(t["step_wall_s"]),
                        " / ".join(f"{x / max(1, sum(t['staleness_hist'])):.2f}" for x in t["staleness_hist"][:3])] for t in runs if t.get("round", 0) == 0]) + "\n")
    if res.get("hosts_skipped"):
        add(f"Not measured in this run: {res['hosts_skipped']}.\n")
    if hosts.get("namespaces_removed") is not None:
        add("The hosts are network namespaces the suite makes for the run (a random tag in their names, addresses only "
            "inside them: a bridge in one namespace, a veth pair to each host) and deletes afterwards; "
            + ("none was left after this run (`ip netns list`).\n" if hosts["namespaces_removed"]
               else "**some were left after this run** (`ip netns list`).\n"))

    # 6. Sampling
    sm = res.get("sampler")
    if sm:
        add("## Sampling with and without prefix sharing\n")
        add("`kat-bench sampler`: GPT-2 C=128 L=4, a 64-token prompt, 8 samples of 64 new tokens, one BLAS thread; the group's "
            "prompt cache shared (one prefill) against a copy per sample (decoding batched the same way). Best of the runs.\n")
        cmd("kat-bench sampler")
        add(table(["shared prompt cache (tok/s)", "one copy per sample (tok/s)", "ratio"],
                  [[f(sm["shared_tok_s"], 0), f(sm["unshared_tok_s"], 0), f(sm["ratio"], 2)]]) + "\n")

    # 7. The model
    add("## The model\n")
    add("`Benchmarks/scaling_model.py` (`fit`, `simulate`, `project`; standard library only). Its parts:\n")
    c = p["compute"]
    add("- **Compute.** FLOPs are counted as everywhere in kat-dist: forward plus backward costs 6 x the layers' parameters "
        "per computed token (GPT-2: 12 C^2 per layer; Llama with head size d, g key-value heads, MLP width F: "
        "2 C^2 + 2 C g d + 3 C F per layer), 6 V C per row whose next-token distribution is computed, and 12 C L per (query, "
        "key) pair. Each part runs at its own kernel rate, measured by `kat-bench compute` on batches that are mostly linear "
        "(many short sequences), partly attention (two 1024-token sequences) or mostly head (V = 16384), per width, and "
        "extended to other widths as r(C) = r_inf C / (C + C_half):\n")
    rows = [[k, f(c[k]["r_inf"] / 1e9, 1), f(c[k]["c_half"], 0)] + [f(c["per_width"][w][k] / 1e9, 1) for w in sorted(c["per_width"], key=int)]
            for k in ("lin", "head", "attn")]
    add(table(["part", "r_inf (GFLOP/s)", "C_half"] + [f"measured at C={w}" for w in sorted(c["per_width"], key=int)], rows) + "\n")
    o = p["offline"]
    add(f"- **A trainer's step** takes kappa x (FLOP-model seconds of its shard) + c0 CPU seconds: kappa = {f(o['kappa'], 2)} "
        f"holds what the FLOP count leaves out (the loss, planning), c0 = {f(o['c0'], 3)} s the work beside the model (metrics, "
        f"report); fitted on the one-trainer offline runs. The optimizer costs {o['optimizer_s_per_param'] * 1e9:.2f} ns per "
        f"parameter (divided over trainers when sharded). Each trainer's shard is the one kat-dist makes (whole groups, "
        f"largest first onto the least loaded trainer; a group costing more than a fair share is cut below its prompt); the "
        f"trainers share the cores left by other processes equally while they compute, and one done with its shard "
        f"yields its core while it waits in the allreduce. Trainers oversubscribing the cores run at "
        f"{f(o.get('oversubscription_efficiency', 1.0), 2)} of that sharing's speed (a waiting rank still polls between "
        f"yields, and ranks switch cores): fitted on the oversubscribed layouts "
        f"T = {', '.join(str(t) for t in o.get('oversubscription_fitted_on', [])) or 'none'}, the largest held out.\n")
    bc = ", ".join(f"{k} {f(v, 2)}" for k, v in sorted(p.get("binomial_check", {}).items()) if v)
    add(f"- **Allreduce.** kat-dist sums in place with `MPI_Iallreduce`; Open MPI runs it in its libnbc component, "
        f"which takes its binomial algorithm for every in-place call: ceil(log2 p) rounds up a binomial tree, each "
        f"moving the whole message and summing it, then ceil(log2 p) rounds down. So an allreduce costs "
        f"2 ceil(log2 p) (alpha + n / B) + ceil(log2 p) n / S, with alpha and B the link's point-to-point latency and "
        f"bandwidth and S = {f(p['op_bw'] / 1e9, 1)} GB/s the in-place copy and sum (measured over shared memory as what "
        f"the allreduce takes beyond its two transfers). With two ranks that is two whole-message transfers where a ring "
        f"needs one: the bus bandwidth stays near half the ring bound on every link (measured / model at 4 MiB and up: "
        f"{bc}). Over p ranks placed node by node, the first log2(ranks per node) rounds stay within a node (shared "
        f"memory, the round's pairs sharing the node's memory bandwidth) and the rest cross nodes. A rate-limited link "
        f"carries its tbf rate times 1448/1514 (TCP payload per frame); its latency is the smallest message's measured "
        f"one-way time.\n")
    add(f"- **Weight sync** per the tree: trainer 0 copies into its node's memory at {f(p['copy_bw'] / 1e9, 1)} GB/s per "
        f"rank (from one host, one rollout rank), sends to its children (two sends share its link), each leader forwards "
        f"whole messages, and every rank copies its node's weights.\n")
    if "gen_s_per_token" in p:
        add(f"- **Generation** costs {p['gen_s_per_token'] * 1e6:.1f} core-us per generated flat token on the default model "
            f"(calibrated on R = 1 without multiplexing: the rollout rank's time not waiting under admission control or "
            f"back-pressure, over the tokens it generated; the trainer's compute of an online step is calibrated on the "
            f"same run's `t_forward_backward`): decode runs at "
            f"{f(p['decode_efficiency'], 2)} of the training kernel's linear rate, counting 2 x layer parameters + 2 V C + "
            f"4 C L x context FLOPs per sampled token and a prefill of the prompt once per group. Projections keep that "
            f"efficiency, with a floor of one read of the weights from the node's memory per decode step.\n")
    add(f"- **Environment latency**: {p['env_latency_s'] * 1e6:.0f} us per episode turn (reset and step of "
        f"`Launch/envs/reverse_env.py` over its pipe); the built-in tasks score in process, inside the generation cost.\n")
    add("- **The simulation** (`Simulation` in the script) runs the asynchronous loop event by event: trainers in lockstep "
        "(they agree on every batch), taking groups only while they collect a batch or between micro-batches; rollout ranks "
        "decoding up to 4 groups at a time with the newest weights their node holds and handing groups over with "
        "synchronous sends, up to their share of a batch waiting to be taken (a full buffer, or a trainer busy "
        "computing, holds the rest back); admission control as kat-dist "
        "does it (`rollout.admission`, on by default; the simulation's `admission`: after n published steps a rollout rank has started at most its share of (n + max_staleness + 1) x "
        "batch.prompts groups, less those the trainers made; past it, it waits for newer weights); stale groups dropped; "
        "multiplexing (a trainer that would wait decodes 4 groups itself, parks that decoding when the batch is there "
        "and continues it at its next wait); partial rollouts (`partial`: new weights taken "
        "mid-batch, a KV-cache recompute each time); CPU work shared over the cores by processor sharing. One finding "
        "it reproduces: a rollout rank that keeps its share of a batch in flight has the next batch ready when the "
        "trainer comes to collect it, so every trained group is one version behind (lag 1); with one group in flight "
        "(`in_flight=1`) it stops after its first decoding while the trainer computes, and the trainer then waits.\n")

    # 8. Held out
    add("## Held-out checks\n")
    add("Points the model was not fitted on, each predicted from the fitted parameters (and the run's measured background "
        "cores and link latency) and compared with its measurement. Target: within 20%.\n")
    add("```")
    for h in held:
        add(h["line"])
    add("```\n")
    bad = [h for h in held if abs(h["error"]) > 20]
    if bad:
        add(f"{len(bad)} of {len(held)} held-out points miss the 20% target: " + "; ".join(f"{h['point']} ({h['error']:+.0f}%)" for h in bad) + ".\n")
    else:
        add(f"All {len(held)} held-out points are within 20%.\n")
    pts = [(h["measured"], h["predicted"]) for h in held if h["unit"] == "s"]
    if pts:
        lo, hi = min(min(a, b) for a, b in pts), max(max(a, b) for a, b in pts)
        svg("held-out.svg", chart([dict(name="held-out points (seconds)", points=pts, markers_only=True),
                                   dict(name="predicted = measured", points=[(lo, lo), (hi, hi)], dash=True, no_markers=True, color="#888"),
                                   dict(name="+20%", points=[(lo, lo * 1.2), (hi, hi * 1.2)], dash=True, no_markers=True, color="#bbb"),
                                   dict(name="-20%", points=[(lo, lo * 0.8), (hi, hi * 0.8)], dash=True, no_markers=True, color="#bbb")],
                                  "Held-out: predicted vs measured", "measured (s)", "predicted (s)", logx=True, logy=True))

    # 9. Projections
    add("## Projections: 8, 64 and 512 nodes\n")
    w = proj["workload"]
    cpr = ", ".join(f"{k} {v}" for k, v in w["cores_per_rank"].items()) if isinstance(w["cores_per_rank"], dict) else str(w["cores_per_rank"])
    add(f"The model at scale: nodes of {w['cores_per_node']} cores, ranks of one core for the small model and several "
        f"for the large ones (BLAS threads per rank: {cpr}; threads beyond the first assumed to run at "
        f"{w['thread_efficiency']:g} of a core each: a 2-core machine cannot measure that), a "
        f"{w['link_gbit']:g} Gbit/s link per node with the latency measured here between hosts, "
        f"{w['node_memory_GBps']:g} GB/s of memory bandwidth per node (assumed), a fixed global batch of {w['prompts']} "
        f"prompts x {w['group']} samples of {w['tokens_per_trajectory']} tokens with trie ratio {w['trie_ratio']} (W1's), "
        f"max_staleness {w['max_staleness']}, sharded optimizer state, gradient buckets overlapped with backward. For each "
        f"node count the smallest rollout-to-trainer ratio R/T that keeps trainer idle under 5% with multiplexing off is "
        f"found by simulation; the idle with multiplexing on at that ratio is beside it. Efficiency is throughput per node "
        f"against {w['nodes'][0]} nodes.\n")
    add(f"    python3 Benchmarks/scaling_model.py project --input {raw}\n")
    rows = []
    for r in proj["rows"]:
        pt = r["parts"]
        rows.append([r["model"], r["nodes"], ("<= " if r.get("smallest") else "") + f"{r['ratio']:.2f}" + ("" if r["found"] else " (none under 5%)"), r["T"], r["R"],
                     f(r["step_s"], 2), f(r["idle_off"], 3), f(r["idle_on"], 3), f(r["staleness_mean"], 2), f(r["efficiency"], 2),
                     f(r.get("throttled"), 2), f(pt["compute"], 2), f"{f(pt['allreduce'], 3)}, {f(pt['allreduce_exposed'], 3)}", f(pt["sync"], 3),
                     f(pt["memory"]["trainer_GB"] * pt["ranks_per_node"], 0),
                     r["bottleneck"]])
    add(table(["model", "nodes", "R/T (idle < 5%, multiplex off)", "trainers", "rollout ranks", "step (s)", "idle off", "idle on",
               "staleness", "efficiency", "rollouts throttled", "compute (s)", "allreduce (s), exposed", "weights to last node (s)", "trainer node memory (GB)",
               "bottleneck"], rows) + "\n")
    add("Columns: trainers and rollout ranks (ranks of the BLAS threads above); step, the simulated mean step with "
        "multiplexing off; idle off / on, the trainers' idle share without and with multiplexing at that ratio; staleness, "
        "the mean lag of trained groups; rollouts throttled, the rollout ranks' share of time waiting under admission control (rollout capacity beyond what the trainers take); compute, one trainer's forward and backward per step; allreduce, the gradient "
        "sum (kat-dist's binomial tree) and the part of it left after overlapping the last micro-batch's backward; "
        "weights to last node, from trainer 0's publishing to the last node's copy; trainer node memory, weights, "
        "gradients, sharded Adam moments and one micro-batch's activations for the node's trainer ranks.\n")
    moves = []
    for name in proj["models"]:
        seq = [(r["nodes"], r["bottleneck"].split(":")[0].split(",")[0]) for r in proj["rows"] if r["model"] == name]
        moves.append(f"{name}: " + " -> ".join(f"{b} ({n})" for n, b in seq))
    worst_on = max((r["idle_on"] for r in proj["rows"]), default=0.0)
    add("Where the bottleneck moves (nodes in brackets): " + "; ".join(moves) + f". With multiplexing (a trainer that "
        f"would wait generates instead) the trainers' idle at the table's ratio is at most {100 * worst_on:.1f}%; "
        "the ratio is what it takes without it.\n")
    sens = proj.get("sensitivity")
    if sens:
        def rt(v):
            ratio, found, smallest = v
            return ("<= " if smallest else "") + f"{ratio:.2f}" + ("" if found else " (none)")
        ks = sorted(sens)
        add("The ratio rests on one calibrated rate, generation per token (from the R = 1 run on this loaded machine). "
            "The same search with generation " + " and ".join(f"{k:g}x" for k in ks) + " as costly:\n")
        add(table(["model", "nodes", "R/T as above"] + [f"R/T, generation {k:g}x" for k in ks],
                  [[r["model"], r["nodes"], rt((r["ratio"], r["found"], r.get("smallest", False)))]
                   + [rt(sens[k][(r["model"], r["nodes"])]) for k in ks] for r in proj["rows"]]) + "\n")
    lk = proj.get("links", [])
    if lk:
        add(f"The largest layout at other link speeds (same ratio; `link_gbit` of the projection):\n")
        add(table(["model", "nodes", "link (Gbit/s)", "step (s)", "allreduce (s)", "exposed (s)", "weights to last node (s)", "idle", "staleness",
                   "bottleneck"],
                  [[x["model"], x["nodes"], f"{x['link_gbit']:g}", f(x["step_s"], 2), f(x["allreduce"], 3), f(x["exposed"], 3), f(x["sync"], 3),
                    f(x["idle"], 3), f(x["staleness"], 2), x["bottleneck"]] for x in lk]) + "\n")
        by = {}
        for x in lk:
            by.setdefault(x["model"], []).append(f"{x['bottleneck'].split(':')[0].split(',')[0]} at {x['link_gbit']:g} Gbit/s")
        add(f"At {lk[0]['nodes']} nodes, by link speed: " + "; ".join(f"{k}: " + ", ".join(v) for k, v in by.items()) + ".\n")
    series = []
    for k, name in enumerate(proj["models"]):
        series.append(dict(name=name, points=[(r["nodes"], r["efficiency"]) for r in proj["rows"] if r["model"] == name]))
    svg("projection.svg", chart(series, f"Projected scaling efficiency (throughput per node against {w['nodes'][0]} nodes)", "nodes", "efficiency",
                                logx=True, xticks=w["nodes"], ylim=(0, 1.1)))
    add("Model sizes: " + ", ".join(f"{k} {v['params'] / 1e9:.2f} B parameters ({v['layer_params'] / 1e9:.2f} B in layers)"
                                   for k, v in proj["models"].items()) + ".\n")

    add("## What this does not measure\n")
    add("- More than one machine: hosts are network namespaces of one 2-core machine, so every rank of every host shares "
        "the same cores and memory; link rates are real (tbf), latencies are this machine's TCP stack's.\n"
        "- Partial rollouts at scale: the rollout table measures them on and off on this machine, where episodes rarely span a weight update; the projections do not use them, since no measurement calibrates their cost there.\n"
        "- Node memory bandwidth at scale (assumed in the projections), and OpenBLAS threads inside a rank: every "
        "measurement here runs one thread per rank, while the projections give the large models' ranks several threads "
        "at an assumed 0.8 of a core each beyond the first (see the projection settings above).\n"
        "- A run killed with SIGKILL cannot clean up after itself: remove its network namespaces (`ip netns list`; the "
        "suite's names start with `ksc`) with `ip netns del NAME`, and its work directory `/tmp/kat-scaling-*`. Other "
        "interruptions (Ctrl-C, SIGTERM, SIGHUP) stop every command the suite started and remove both.\n")
    with open(os.path.join(out, "scaling.md"), "w") as fh:
        fh.write("\n".join(md))
