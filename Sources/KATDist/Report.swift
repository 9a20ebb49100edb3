import Foundation
import KATSupport

/// A self-contained HTML report of a run (no scripts, no network): a summary, the run's
/// messages, and fixed-size panels of its metrics drawn as inline SVG by `Chart`.
/// Rewritten as the run goes (RUN/report.html).
///
/// Every panel is always there and always the same size; a metric the run did not record
/// (no evaluation with `eval.every = 0`, no rewards offline) leaves a note in its panel.
public enum Report {
    /// Colours told apart by colour-blind readers too (Okabe and Ito's palette).
    enum Color {
        static let blue = "#0072B2", vermillion = "#D55E00", green = "#009E73", orange = "#E69F00"
        static let purple = "#CC79A7", sky = "#56B4E9", black = "#222222", grey = "#999999"
    }

    /// The panel size in CSS pixels; two panels side by side fit a 1200-pixel window.
    public static let panelWidth = 570.0, panelHeight = 300.0

    /// Display names of the phases.
    static func name(_ phase: String) -> String {
        switch phase {
        case "warmstart": return "warm start"
        case "rl": return "RL"
        default: return phase
        }
    }

    /// Where the phase changes: between the last step of one phase and the first of the next.
    static func phaseMarkers(_ lines: [JSON]) -> [(x: Double, label: String)] {
        var out: [(x: Double, label: String)] = []
        var previous: (phase: String, step: Double)?
        for l in lines {
            guard let p = l["phase"]?.stringValue, let s = l["step"]?.doubleValue else { continue }
            if let prev = previous, prev.phase != p { out.append((prev.step + 0.5, "\(name(prev.phase)) | \(name(p))")) }
            previous = (p, s)
        }
        return out
    }

    /// (step, value) of `key` on the lines of the given phases (all when nil).
    static func points(_ lines: [JSON], _ key: String, phases: Set<String>? = nil) -> [(x: Double, y: Double)] {
        lines.compactMap { l in
            if let phases, let p = l["phase"]?.stringValue, !phases.contains(p) { return nil }
            guard let s = l["step"]?.doubleValue, let v = l[key]?.doubleValue, v.isFinite else { return nil }
            return (s, v)
        }
    }

    static let timeParts: [(key: String, name: String, color: String)] = [
        ("t_wait_data", "waiting for data", Color.grey), ("t_forward_backward", "forward + backward", Color.blue),
        ("t_allreduce", "allreduce", Color.orange), ("t_optimizer", "optimizer", Color.green),
        ("t_weight_sync", "weight sync", Color.purple),
    ]

    /// The report's panels, in order, each with a stable id.
    public static func panels(lines: [JSON]) -> [(id: String, chart: Chart)] {
        let steps = lines.compactMap { $0["step"]?.doubleValue }
        let xDomain = (steps.min() ?? 1) - 1 ... max(steps.max() ?? 1, (steps.min() ?? 1))
        let markers = phaseMarkers(lines)
        let online: Set<String> = ["rl", "offline"]
        func chart(_ title: String, _ y: String, _ series: [Chart.Series], empty: String, yDomain: ClosedRange<Double>? = nil,
                   stacked: Bool = false, zero: Bool = false) -> Chart {
            var c = Chart(title: title, yLabel: y, series: series)
            c.xDomain = xDomain
            c.yDomain = yDomain
            c.markers = markers
            c.stacked = stacked
            c.includeZero = zero
            c.emptyNote = empty
            c.width = panelWidth
            c.height = panelHeight
            return c
        }
        // Share of the timed parts of a step spent waiting for data.
        let waitShare: [(x: Double, y: Double)] = lines.compactMap { l in
            guard let s = l["step"]?.doubleValue, let wait = l["t_wait_data"]?.doubleValue else { return nil }
            let total = timeParts.reduce(0.0) { $0 + (l[$1.key]?.doubleValue ?? 0) }
            return total > 0 ? (s, wait / total) : nil
        }
        return [
            ("success", chart("Held-out success and reward", "share solved / mean reward", [
                Chart.Series(name: "success (greedy, eval_success)", color: Color.vermillion, points: points(lines, "eval_success"), marker: .circle),
                Chart.Series(name: "mean reward (eval_reward)", color: Color.blue, points: points(lines, "eval_reward"), dashed: true, marker: .square),
            ], empty: "no evaluation in this run (eval.every = 0, or offline)", yDomain: 0...1)),
            ("reward", chart("Training reward", "mean reward per step", [
                Chart.Series(name: "reward_mean", color: Color.blue, points: points(lines, "reward_mean")),
            ], empty: "no rewards (warm-start and given-advantage steps have none)")),
            ("loss", chart("Policy loss (RL and offline steps)", "loss", [
                Chart.Series(name: "loss (on-policy data: minus the mean advantage)", color: Color.purple,
                             points: points(lines, "loss", phases: online)),
            ], empty: "no RL or offline steps yet")),
            ("logprob", chart("Log-prob of the trained tokens", "nats per token", [
                Chart.Series(name: "logprob_mean (warm start: the supervised objective)", color: Color.green, points: points(lines, "logprob_mean")),
            ], empty: "no steps yet")),
            ("entropy", chart("Entropy of the sampled answers", "nats per token", [
                Chart.Series(name: "entropy_mean (behaviour policy)", color: Color.green, points: points(lines, "entropy_mean")),
            ], empty: "no entropies recorded (warm start, or data without them)")),
            ("clip", chart("Clip fraction", "share of loss tokens", [
                Chart.Series(name: "clip_frac", color: Color.orange, points: points(lines, "clip_frac", phases: online)),
            ], empty: "no RL or offline steps yet", zero: true)),
            ("kl", chart("KL estimates (k3)", "nats per token", [
                Chart.Series(name: "behaviour -> current (kl_behaviour)", color: Color.vermillion, points: points(lines, "kl_behaviour", phases: online)),
                Chart.Series(name: "to the initial model (kl_reference)", color: Color.blue, points: points(lines, "kl_reference", phases: online), dashed: true),
            ], empty: "no RL or offline steps yet", zero: true)),
            ("lr", chart("Learning rate", "learning rate", [
                Chart.Series(name: "lr", color: Color.black, points: points(lines, "lr")),
            ], empty: "no steps yet", zero: true)),
            ("grad_norm", chart("Gradient norm before clipping", "global L2 norm", [
                Chart.Series(name: "grad_norm", color: Color.vermillion, points: points(lines, "grad_norm")),
            ], empty: "no steps yet", zero: true)),
            ("staleness", chart("Staleness of trained trajectories", "policy versions", [
                Chart.Series(name: "mean (staleness_mean)", color: Color.blue, points: points(lines, "staleness_mean", phases: ["rl"])),
                Chart.Series(name: "max (staleness_max)", color: Color.vermillion, points: points(lines, "staleness_max", phases: ["rl"]), dashed: true),
            ], empty: "no RL steps (staleness applies to rollouts only)", zero: true)),
            ("idle", chart("Trainer idle", "share of step time", [
                Chart.Series(name: "trainer_idle", color: Color.vermillion, points: points(lines, "trainer_idle")),
                Chart.Series(name: "t_wait_data / timed parts", color: Color.grey, points: waitShare, dashed: true),
            ], empty: "no timings recorded", yDomain: 0...1)),
            ("time", chart("Time per step, by part", "seconds", timeParts.map {
                Chart.Series(name: $0.name, color: $0.color, points: points(lines, $0.key))
            }, empty: "no steps yet", stacked: true)),
            ("trie_ratio", chart("Trie ratio", "flat tokens / trie tokens", [
                Chart.Series(name: "trie_ratio", color: Color.green, points: points(lines, "trie_ratio")),
            ], empty: "no steps yet", zero: true)),
            ("throughput", chart("Throughput", "flat tokens per second", [
                Chart.Series(name: "tokens_per_s", color: Color.blue, points: points(lines, "tokens_per_s")),
            ], empty: "no steps yet", zero: true)),
        ]
    }

    /// The README's figure: held-out success and training reward over a run, with the
    /// phase boundary marked.
    public static func learningCurve(lines: [JSON], title: String) -> Chart {
        let steps = lines.compactMap { $0["step"]?.doubleValue }
        var c = Chart(title: title, yLabel: "share solved / mean reward", series: [
            Chart.Series(name: "training reward (reward_mean)", color: Color.sky, points: points(lines, "reward_mean"), lineWidth: 1),
            Chart.Series(name: "held-out success (greedy, eval_success)", color: Color.vermillion, points: points(lines, "eval_success"),
                         marker: .circle, lineWidth: 2.2),
        ])
        c.xDomain = ((steps.min() ?? 1) - 1)...(steps.max() ?? 1)
        c.yDomain = 0...1
        c.markers = phaseMarkers(lines)
        c.width = 640
        c.height = 320
        return c
    }

    /// The report from a run's metrics lines and messages.
    public static func html(title: String, lines: [JSON], notes: [String]) -> String {
        var body = "<!doctype html>\n<html><head><meta charset='utf-8'><title>\(Chart.esc(title))</title><style>"
        body += "body{font-family:sans-serif;margin:16px;color:#222;max-width:1160px}"
        body += "h1{font-size:20px;margin:0 0 8px}table.summary{border-collapse:collapse;margin:4px 0 10px;font-size:13px}"
        body += "table.summary td{padding:2px 14px 2px 0}ul.notes{font-size:13px;margin:0 0 12px;padding-left:18px}"
        body += ".grid{display:grid;grid-template-columns:repeat(2,\(Int(panelWidth))px);gap:10px}"
        body += ".panel{margin:0;width:\(Int(panelWidth))px;height:\(Int(panelHeight))px;border:1px solid #ddd;overflow:hidden}"
        body += ".panel svg{display:block}</style></head><body>\n"
        body += "<h1>\(Chart.esc(title))</h1>\n<table class='summary'>"
        for (k, v) in summary(lines) { body += "<tr><td>\(Chart.esc(k))</td><td>\(Chart.esc(v))</td></tr>" }
        body += "</table>\n"
        if !notes.isEmpty { body += "<ul class='notes'>" + notes.map { "<li>\(Chart.esc($0))</li>" }.joined() + "</ul>\n" }
        body += "<div class='grid'>\n"
        for p in panels(lines: lines) { body += "<figure class='panel' id='panel-\(p.id)'>\(p.chart.svg())</figure>\n" }
        body += "</div></body></html>\n"
        return body
    }

    /// Rows of the summary: steps by phase, the last step, the time, the last evaluation.
    static func summary(_ lines: [JSON]) -> [(String, String)] {
        guard let last = lines.last else { return [("steps", "none yet")] }
        var byPhase: [(String, Int)] = []
        for l in lines {
            let p = l["phase"]?.stringValue ?? "?"
            if let i = byPhase.firstIndex(where: { $0.0 == p }) { byPhase[i].1 += 1 } else { byPhase.append((p, 1)) }
        }
        var rows: [(String, String)] = [
            ("steps", byPhase.map { "\(name($0.0)): \($0.1)" }.joined(separator: ", ") + " (last step \(last["step"]?.intValue ?? 0))"),
            ("run time", PhaseClock.duration(last["time"]?.doubleValue ?? 0) + " (seconds since the run first started, across resumes)"),
        ]
        if let e = lines.last(where: { $0["eval_success"]?.doubleValue != nil }) {
            rows.append(("last evaluation", String(format: "step %d: held-out success %.3f, mean reward %.3f", e["step"]?.intValue ?? 0,
                                                   e["eval_success"]?.doubleValue ?? 0, e["eval_reward"]?.doubleValue ?? 0)))
        }
        return rows
    }
}
