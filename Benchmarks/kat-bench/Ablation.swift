import Foundation
import KATEnv
import KATModel
import KATRL
import KATSupport

// kat-bench ablation: arms x seeds of kat-dist runs, in parallel, resumable, summarised
// with 95% confidence intervals and drawn as curves with bands.
//
//   kat-bench ablation [--task explore,code] [--arms plain,scaling,...] [--arm NAME:key=value,...]
//                      [--seeds 5] [--first-seed 1] [--jobs N] [--out DIR] [--quick]
//                      [--set key=value ...] [--rl-set key=value ...] [--kat-dist PATH] [--report-only]
//
// Every arm of a seed starts from the same warm start: one run per task and seed trains
// it (OUT/TASK/warm-start/seed-S, with one RL step), and every arm forks from its
// warm-start checkpoint (`--resume PATH --run-dir NEW`), so the arms of a seed differ only
// from the first RL step on. `--set` applies to every run, `--rl-set` (default
// batch.minibatches=4) to the arms only. Runs are deterministic (one BLAS thread each);
// a run directory with a DONE file is finished and skipped when the command is run again,
// and an unfinished one is started over.

/// The arms kat-bench knows by name: each changes the settings of `plain` (GRPO with std
/// normalisation, PPO-clip, no entropy term) in one way, with the published values.
let knownArms: [(name: String, settings: [String], about: String)] = [
    ("plain", ["advantage.entropy_scaling=false"], "GRPO, PPO-clip eps 0.2, no entropy term"),
    ("scaling", ["advantage.entropy_scaling=true"], "entropy-aware advantage scaling (kat-dist's default: alpha 1, clip 0.5-2, group mean)"),
    ("clip-higher", ["advantage.entropy_scaling=false", "loss.eps_high=0.28"], "clip-higher, eps_high 0.28 (DAPO)"),
    ("entropy-bonus", ["advantage.entropy_scaling=false", "advantage.entropy_bonus_beta=0.4", "advantage.entropy_bonus_kappa=2"],
     "per-token entropy bonus, beta 0.4, kappa 2 (arXiv 2506.14758)"),
    ("high-entropy", ["advantage.entropy_scaling=false", "loss.entropy_token_frac=0.2"],
     "only the top 20% of tokens by entropy (arXiv 2506.01939)"),
    ("kl-cov", ["advantage.entropy_scaling=false", "loss.kl_cov_frac=0.002", "loss.kl_cov_coef=1"],
     "KL-Cov, top 0.2% by covariance, coefficient 1 (arXiv 2505.22617)"),
]

struct AblationOptions {
    var tasks = ["explore"]
    var arms: [(name: String, settings: [String])] = []
    var seeds = 5
    var firstSeed = 1
    var jobs = max(1, ProcessInfo.processInfo.activeProcessorCount)
    var out = "/tmp/kat-ablation"
    var quick = false
    var extra: [String] = []
    /// Settings of the arms' RL runs only. Several updates per step (minibatches) move the
    /// ratio away from 1, without which clipping (and clip-higher) never acts.
    var rlExtra = ["batch.minibatches=4"]
    var katDist = ""
    var reportOnly = false
    /// Settings of --quick: short runs, fewer held-out prompts.
    static let quickSettings = ["warmstart.steps=100", "steps=30", "eval.every=10", "eval.prompts=48"]
}

enum AblationError: Error, CustomStringConvertible {
    case usage(String)
    case run(String, String)
    var description: String {
        switch self {
        case let .usage(s): return s
        case let .run(dir, why): return "run \(dir) failed: \(why)"
        }
    }
}

func parseAblationOptions(_ args: [String]) throws -> AblationOptions {
    var o = AblationOptions()
    var armNames: [String]?
    var custom: [(String, [String])] = []
    var rlExtra: [String]?
    var i = 0
    func value() throws -> String {
        i += 1
        guard i < args.count, !args[i].hasPrefix("--") else { throw AblationError.usage("kat-bench ablation: \(args[i - 1]) needs a value") }
        return args[i]
    }
    func whole(_ option: String, _ text: String) throws -> Int {
        guard let v = Int(text) else { throw AblationError.usage("kat-bench ablation: \(option) needs a whole number, got '\(text)'") }
        return v
    }
    while i < args.count {
        switch args[i] {
        case "--task": o.tasks = try value().split(separator: ",").map(String.init)
        case "--arms": armNames = try value().split(separator: ",").map(String.init)
        case "--arm":
            let spec = try value()
            guard let colon = spec.firstIndex(of: ":") else { throw AblationError.usage("kat-bench ablation: --arm NAME:key=value,... got \(spec)") }
            custom.append((String(spec[..<colon]), spec[spec.index(after: colon)...].split(separator: ",").map(String.init)))
        case "--seeds": o.seeds = try whole("--seeds", try value())
        case "--first-seed": o.firstSeed = try whole("--first-seed", try value())
        case "--jobs": o.jobs = try whole("--jobs", try value())
        case "--out": o.out = try value()
        case "--quick": o.quick = true
        case "--set": o.extra.append(try value())
        case "--rl-set": rlExtra = (rlExtra ?? []) + [try value()]
        case "--kat-dist": o.katDist = try value()
        case "--report-only": o.reportOnly = true
        default: throw AblationError.usage("kat-bench ablation: unknown option \(args[i])")
        }
        i += 1
    }
    if let rlExtra { o.rlExtra = rlExtra }
    if o.quick, !args.contains("--seeds") { o.seeds = 3 }
    guard o.seeds >= 2, o.jobs >= 1, o.firstSeed >= 0 else {
        throw AblationError.usage("kat-bench ablation: --seeds must be at least 2 (an interval needs two), --jobs at least 1, --first-seed at least 0")
    }
    for name in armNames ?? (custom.isEmpty ? knownArms.map(\.name) : []) {
        guard let a = knownArms.first(where: { $0.name == name }) else {
            throw AblationError.usage("kat-bench ablation: unknown arm \(name) (known: \(knownArms.map(\.name).joined(separator: ", ")); or --arm NAME:key=value,...)")
        }
        o.arms.append((a.name, a.settings))
    }
    o.arms += custom
    guard !o.arms.isEmpty else { throw AblationError.usage("kat-bench ablation: no arms") }
    // Arm and task names become directory names under --out: plain names only, each once.
    func plainName(_ n: String) -> Bool {
        !n.isEmpty && n.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }
    }
    var seen = Set<String>()
    for a in o.arms {
        guard plainName(a.name), a.name != "warm-start" else {
            throw AblationError.usage("kat-bench ablation: arm name '\(a.name)' must be letters, digits, - and _ only, and not warm-start")
        }
        guard seen.insert(a.name).inserted else { throw AblationError.usage("kat-bench ablation: arm \(a.name) is given twice") }
    }
    guard !o.tasks.isEmpty, Set(o.tasks).count == o.tasks.count else {
        throw AblationError.usage("kat-bench ablation: --task needs distinct tasks (explore, code)")
    }
    for t in o.tasks where !["explore", "code"].contains(t) {
        throw AblationError.usage("kat-bench ablation: unknown task '\(t)' (explore, code)")
    }
    var isDir: ObjCBool = false
    if FileManager.default.fileExists(atPath: o.out, isDirectory: &isDir), !isDir.boolValue {
        throw AblationError.usage("kat-bench ablation: --out \(o.out) exists and is not a directory")
    }
    if o.katDist.isEmpty {
        o.katDist = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("kat-dist").path
    }
    return o
}

// MARK: - Statistics

/// The regularized incomplete beta function I_x(a, b) (Numerical Recipes' continued fraction).
func incompleteBeta(_ x: Double, _ a: Double, _ b: Double) -> Double {
    if x <= 0 { return 0 }
    if x >= 1 { return 1 }
    let lnGammas: Double = lgamma(a + b) - lgamma(a) - lgamma(b)
    let lnFront: Double = lnGammas + a * log(x) + b * log(1 - x)
    func fraction(_ x: Double, _ a: Double, _ b: Double) -> Double {
        var c = 1.0, d = 1 - (a + b) * x / (a + 1)
        if abs(d) < 1e-300 { d = 1e-300 }
        d = 1 / d
        var h = d
        for m in 1...300 {
            let m = Double(m), m2 = 2 * m
            var aa = m * (b - m) * x / ((a + m2 - 1) * (a + m2))
            d = 1 + aa * d; if abs(d) < 1e-300 { d = 1e-300 }
            c = 1 + aa / c; if abs(c) < 1e-300 { c = 1e-300 }
            d = 1 / d; h *= d * c
            aa = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1))
            d = 1 + aa * d; if abs(d) < 1e-300 { d = 1e-300 }
            c = 1 + aa / c; if abs(c) < 1e-300 { c = 1e-300 }
            d = 1 / d
            let del = d * c
            h *= del
            if abs(del - 1) < 1e-15 { break }
        }
        return h
    }
    if x < (a + 1) / (a + b + 2) { return exp(lnFront) * fraction(x, a, b) / a }
    return 1 - exp(lnFront) * fraction(1 - x, b, a) / b
}

/// The Student t distribution's CDF with `df` degrees of freedom.
func studentTCDF(_ t: Double, df: Double) -> Double {
    let tail = 0.5 * incompleteBeta(df / (df + t * t), df / 2, 0.5)
    return t >= 0 ? 1 - tail : tail
}

/// The quantile t_{p, df} (bisection on the CDF).
func studentTQuantile(_ p: Double, df: Double) -> Double {
    var lo = -1000.0, hi = 1000.0
    for _ in 0..<200 {
        let mid = (lo + hi) / 2
        if studentTCDF(mid, df: df) < p { lo = mid } else { hi = mid }
    }
    return (lo + hi) / 2
}

/// Mean and half-width of the 95% confidence interval (t distribution, n - 1 degrees of freedom).
func meanCI(_ xs: [Double]) -> (mean: Double, half: Double, n: Int) {
    let n = Double(xs.count)
    guard xs.count >= 2 else { return (xs.first ?? .nan, .nan, xs.count) }
    let mean = xs.reduce(0, +) / n
    let sd = (xs.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / (n - 1)).squareRoot()
    return (mean, studentTQuantile(0.975, df: n - 1) * sd / n.squareRoot(), xs.count)
}

/// Two-sided p-value of a one-sample t test of mean 0 (paired differences).
func pairedPValue(_ d: [Double]) -> Double {
    let n = Double(d.count)
    guard d.count >= 2 else { return .nan }
    let mean = d.reduce(0, +) / n
    let sd = (d.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / (n - 1)).squareRoot()
    if sd == 0 { return mean == 0 ? 1 : 0 }
    let t = mean / (sd / n.squareRoot())
    return 2 * (1 - studentTCDF(abs(t), df: n - 1))
}

// MARK: - One run's summary

/// What the table reports of one run.
struct RunSummary {
    /// (RL step, held-out success) from the end of the warm start (step 0) to the last step.
    var success: [(Double, Double)] = []
    var passAtK: [(Double, Double)] = []
    /// (RL step, mean behaviour entropy of the step's trajectories).
    var entropy: [(Double, Double)] = []
    var finalSuccess: Double { success.last?.1 ?? .nan }
    var finalPassAtK: Double { passAtK.last?.1 ?? .nan }
    var finalPassAt1 = Double.nan
    /// Area under the success curve over the RL steps, divided by their number (trapezoids
    /// between evaluations): 1 means solved from the first RL step on.
    var successArea: Double {
        guard let first = success.first, let last = success.last, last.0 > first.0 else { return .nan }
        var area = 0.0
        for (a, b) in zip(success, success.dropFirst()) { area += (b.0 - a.0) * (a.1 + b.1) / 2 }
        return area / (last.0 - first.0)
    }
    /// Mean entropy over the last 10 RL steps.
    var finalEntropy: Double {
        let tail = entropy.suffix(10).map(\.1)
        return tail.isEmpty ? .nan : tail.reduce(0, +) / Double(tail.count)
    }

    init(metrics path: String) throws {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        let lines = try text.split(separator: "\n").map { try JSON.parse(String($0)) }
        let warm = lines.filter { $0["phase"]?.stringValue == "warmstart" }.last?["step"]?.intValue ?? 0
        for l in lines {
            guard let step = l["step"]?.intValue, let phase = l["phase"]?.stringValue else { continue }
            let x = Double(step - warm)
            // The warm start's last evaluation is the curve's start.
            guard phase == "rl" || (phase == "warmstart" && step == warm) else { continue }
            if let s = l["eval_success"]?.doubleValue { success.append((x, s)) }
            if let p = l["eval_pass_at_k"]?.doubleValue { passAtK.append((x, p)) }
            if phase == "rl", let p1 = l["eval_pass_at_1"]?.doubleValue { finalPassAt1 = p1 }
            if phase == "rl", let h = l["entropy_mean"]?.doubleValue { entropy.append((x, h)) }
        }
    }
}

// MARK: - Running

/// A line on standard output, unbuffered (progress of a long command).
func say(_ text: String) { FileHandle.standardOutput.write(Data((text + "\n").utf8)) }

struct PlannedRun {
    let task: String
    let arm: String
    let seed: Int
    let dir: String
    let arguments: [String]
    /// The checkpoint it forks from, and the run that writes it.
    let forkFrom: String?
    let donePath: String
}

func plan(_ o: AblationOptions) -> [PlannedRun] {
    var runs: [PlannedRun] = []
    for task in o.tasks {
        for seed in o.firstSeed..<(o.firstSeed + o.seeds) {
            func run(_ dir: String, _ settings: [String], fork: String?, arm: String) -> PlannedRun {
                var args = ["train", "--run-dir", dir, "--set", "data.task=\(task)", "--set", "seed=\(seed)", "--set", "deterministic=true"]
                for s in (o.quick ? AblationOptions.quickSettings : []) + o.extra + settings { args += ["--set", s] }
                if let fork { args += ["--resume", fork] }
                return PlannedRun(task: task, arm: arm, seed: seed, dir: dir, arguments: args, forkFrom: fork, donePath: dir + "/DONE")
            }
            // The warm start, then one RL step that nothing reads.
            let base = "\(o.out)/\(task)/warm-start/seed-\(seed)"
            runs.append(run(base, ["steps=1"], fork: nil, arm: "warm-start"))
            let fork = base + "/checkpoints/" + warmStartCheckpointName(o)
            for arm in o.arms {
                runs.append(run("\(o.out)/\(task)/\(arm.name)/seed-\(seed)", o.rlExtra + arm.settings, fork: fork, arm: arm.name))
            }
        }
    }
    return runs
}

/// The warm start's checkpoint: step warmstart.steps (400 unless the settings change it).
func warmStartCheckpointName(_ o: AblationOptions) -> String {
    var steps = 400
    for s in (o.quick ? AblationOptions.quickSettings : []) + o.extra where s.hasPrefix("warmstart.steps=") {
        steps = Int(s.dropFirst("warmstart.steps=".count)) ?? steps
    }
    return String(format: "step-%06d", steps)
}

/// Runs every unfinished run, `jobs` at a time; a fork waits for its warm-start checkpoint.
func runAll(_ runs: [PlannedRun], _ o: AblationOptions) throws {
    let fm = FileManager.default
    // A finished run's DONE file holds the arguments it ran with: one made with other
    // settings (say, --quick) is not taken for this command's.
    for r in runs where fm.fileExists(atPath: r.donePath) {
        let recorded = (try? String(contentsOfFile: r.donePath, encoding: .utf8)) ?? ""
        if !recorded.isEmpty, recorded != doneRecord(r) {
            throw AblationError.usage("kat-bench ablation: \(r.dir) was run with other settings (\(r.donePath) holds its arguments); "
                                      + "give another --out, or the same options as before")
        }
    }
    var pending = runs.filter { !fm.fileExists(atPath: $0.donePath) }
    AblationChildren.install()
    let skipped = runs.count - pending.count
    say("kat-bench ablation: \(runs.count) runs, \(skipped) finished before, \(pending.count) to run, \(o.jobs) at a time")
    var running: [(PlannedRun, Process, Double)] = []
    let t0 = Date().timeIntervalSince1970
    var finished = 0
    while !pending.isEmpty || !running.isEmpty {
        // Start what is ready.
        var k = 0
        while running.count < o.jobs, k < pending.count {
            let r = pending[k]
            if let fork = r.forkFrom, !fm.fileExists(atPath: fork + "/MANIFEST") {
                // Its warm start is not written yet; a finished base without it cannot give it.
                let base = (fork as NSString).deletingLastPathComponent
                if fm.fileExists(atPath: (base as NSString).deletingLastPathComponent + "/DONE") {
                    throw AblationError.run(r.dir, "the warm-start checkpoint \(fork) does not exist")
                }
                k += 1
                continue
            }
            pending.remove(at: k)
            try? fm.removeItem(atPath: r.dir)   // an unfinished run starts over
            try fm.createDirectory(atPath: (r.dir as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            let p = Process()
            p.executableURL = URL(fileURLWithPath: o.katDist)
            p.arguments = r.arguments
            var env = ProcessInfo.processInfo.environment
            env["OPENBLAS_NUM_THREADS"] = "1"
            p.environment = env
            _ = fm.createFile(atPath: r.dir + ".log", contents: nil)
            let log = FileHandle(forWritingAtPath: r.dir + ".log")
            p.standardOutput = log
            p.standardError = log
            try p.run()
            AblationChildren.add(p)
            running.append((r, p, Date().timeIntervalSince1970))
        }
        Thread.sleep(forTimeInterval: 0.5)
        for (i, (r, p, start)) in running.enumerated().reversed() where !p.isRunning {
            running.remove(at: i)
            AblationChildren.remove(p)
            guard p.terminationStatus == 0 else {
                for (_, other, _) in running { other.terminate() }
                throw AblationError.run(r.dir, "exit code \(p.terminationStatus); see \(r.dir).log")
            }
            _ = fm.createFile(atPath: r.donePath, contents: Data(doneRecord(r).utf8))
            finished += 1
            let elapsed = Date().timeIntervalSince1970 - t0
            say(String(format: "  done %@ %@ seed %d in %.0f s (%d of %d, %.0f s so far)", r.task, r.arm, r.seed,
                         Date().timeIntervalSince1970 - start, finished, runs.count - skipped, elapsed))
        }
    }
}

/// What a finished run's DONE file holds: the arguments it ran with, one per line.
func doneRecord(_ r: PlannedRun) -> String { r.arguments.joined(separator: "\n") + "\n" }

/// The kat-dist runs under way, stopped with the harness: SIGINT, SIGTERM or SIGHUP ends
/// them (their directories stay unfinished and start over next time) before it exits.
enum AblationChildren {
    nonisolated(unsafe) static var running: [Process] = []
    static let lock = NSLock()
    nonisolated(unsafe) static var sources: [DispatchSourceSignal] = []

    static func add(_ p: Process) { lock.lock(); running.append(p); lock.unlock() }
    static func remove(_ p: Process) { lock.lock(); running.removeAll { $0 === p }; lock.unlock() }

    static func install() {
        guard sources.isEmpty else { return }
        for sig in [SIGINT, SIGTERM, SIGHUP] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler {
                lock.lock()
                let children = running
                lock.unlock()
                for p in children where p.isRunning { p.terminate() }
                for p in children { p.waitUntilExit() }
                FileHandle.standardError.write(Data("kat-bench ablation: interrupted; \(children.count) run(s) stopped, to start over when the command is run again\n".utf8))
                exit(130)
            }
            source.resume()
            sources.append(source)
        }
    }
}

// MARK: - The explore task's kinds

/// Held-out prompts 0..<prompts of the explore task solved by greedy decoding, by kind of
/// prompt (which strategies a model has found), for the model directory `dir`.
/// - Returns: kind name -> (solved, prompts of that kind).
func exploreKinds(modelDirectory dir: String, prompts: Int, maxNewTokens: Int) throws -> [String: (solved: Int, total: Int)] {
    let model = try ModelDirectory.load(dir)
    let tokenizer = try TokenizerLoader.load(directory: dir)
    let task = ExploreTask()
    var config = RolloutConfig()
    config.maxNewTokens = maxNewTokens
    let worker = RolloutWorker(model: model, seed: 1, config: config, tokenizer: tokenizer) { task.makeEnvironment(maxTurns: 1) }
    var out: [String: (solved: Int, total: Int)] = [:]
    for i in 0..<prompts {
        let kind = task.kind(seed: UInt64(i), split: "test").rawValue
        let r = try worker.greedyEpisode(seed: UInt64(i), split: "test")
        out[kind, default: (0, 0)].total += 1
        if r.reward >= 1 - 1e-9 { out[kind, default: (0, 0)].solved += 1 }
    }
    return out
}

/// The kinds of a finished explore run at its end, computed once and kept in RUN/kinds.json.
func exploreKinds(run: String) throws -> [String: (solved: Int, total: Int)] {
    let cache = run + "/kinds.json"
    if let data = FileManager.default.contents(atPath: cache), let json = try? JSON.parse(Array(data)), let members = json.objectMembers {
        var out: [String: (solved: Int, total: Int)] = [:]
        for (k, v) in members { out[k] = (v["solved"]?.intValue ?? 0, v["total"]?.intValue ?? 0) }
        return out
    }
    let config = try JSON.parse(Array(FileManager.default.contents(atPath: run + "/config.json") ?? Data()))
    let prompts = config["eval"]?["prompts"]?.intValue ?? 200
    let newTokens = config["rollout"]?["max_new_tokens"]?.intValue ?? 16
    // checkpoints/latest names the newest checkpoint.
    let latest = String(decoding: FileManager.default.contents(atPath: run + "/checkpoints/latest") ?? Data(), as: UTF8.self)
        .trimmingCharacters(in: .whitespacesAndNewlines)
    let kinds = try exploreKinds(modelDirectory: run + "/checkpoints/" + latest, prompts: prompts, maxNewTokens: newTokens)
    let json = JSON.object(kinds.keys.sorted().map { k in (k, JSON.object([("solved", JSON(kinds[k]?.solved ?? 0)), ("total", JSON(kinds[k]?.total ?? 0))])) })
    try (json.serialized + "\n").write(toFile: cache, atomically: true, encoding: .utf8)
    return kinds
}

// MARK: - Report

func fmt(_ c: (mean: Double, half: Double, n: Int), _ digits: Int = 3) -> String {
    c.n == 0 ? "-" : String(format: "%.\(digits)f ± %.\(digits)f", c.mean, c.half)
}

/// Writes OUT/TASK/summary.md and the curves; returns the summary text.
func report(task: String, _ o: AblationOptions) throws -> String {
    var summaries: [String: [Int: RunSummary]] = [:]
    for arm in o.arms {
        for seed in o.firstSeed..<(o.firstSeed + o.seeds) {
            let dir = "\(o.out)/\(task)/\(arm.name)/seed-\(seed)"
            guard FileManager.default.fileExists(atPath: dir + "/DONE") else { continue }
            summaries[arm.name, default: [:]][seed] = try RunSummary(metrics: dir + "/metrics.jsonl")
        }
    }
    var text = "## Task \(task)\n\n"
    text += "Mean and 95% confidence interval (t distribution) over seeds; k = rollout.group_size.\n\n"
    text += "| arm | runs | final success | final pass@1 | final pass@k | success area | entropy at the end |\n|---|---|---|---|---|---|---|\n"
    for arm in o.arms {
        let runs = (summaries[arm.name] ?? [:]).sorted { $0.key < $1.key }.map(\.value)
        text += "| \(arm.name) | \(runs.count) | \(fmt(meanCI(runs.map(\.finalSuccess)))) | \(fmt(meanCI(runs.map(\.finalPassAt1)))) | "
        text += "\(fmt(meanCI(runs.map(\.finalPassAtK)))) | \(fmt(meanCI(runs.map(\.successArea)))) | \(fmt(meanCI(runs.map(\.finalEntropy)), 4)) |\n"
    }
    // Paired by seed against the first arm: the same warm start and prompts.
    if let base = o.arms.first?.name, let baseRuns = summaries[base] {
        text += "\nDifference from \(base), paired by seed (mean, 95% interval, two-sided p of a paired t test; "
        text += "significant: the interval excludes 0):\n\n"
        text += "| arm | final success | p | success area | p | final pass@k | p |\n|---|---|---|---|---|---|---|\n"
        for arm in o.arms.dropFirst() {
            let runs = summaries[arm.name] ?? [:]
            let seeds = runs.keys.filter { baseRuns[$0] != nil }.sorted()
            func diffs(_ f: (RunSummary) -> Double) -> [Double] { seeds.compactMap { s in runs[s].flatMap { r in baseRuns[s].map { f(r) - f($0) } } } }
            let ds = diffs(\.finalSuccess), da = diffs(\.successArea), dk = diffs(\.finalPassAtK)
            text += String(format: "| %@ | %@ | %.3f | %@ | %.3f | %@ | %.3f |\n", arm.name, fmt(meanCI(ds)), pairedPValue(ds),
                           fmt(meanCI(da)), pairedPValue(da), fmt(meanCI(dk)), pairedPValue(dk))
        }
    }
    if task == "explore" {
        // Which strategies each arm found: held-out prompts solved at the end, by kind.
        let kinds = ExploreTask.Kind.allCases.map(\.rawValue)
        text += "\nHeld-out prompts solved at the end by kind of prompt (greedy; mean over seeds of solved / prompts of the kind):\n\n"
        text += "| arm | " + kinds.joined(separator: " | ") + " |\n|---|" + kinds.map { _ in "---|" }.joined() + "\n"
        for arm in o.arms {
            var shares: [String: [Double]] = [:]
            for seed in o.firstSeed..<(o.firstSeed + o.seeds) {
                let run = "\(o.out)/\(task)/\(arm.name)/seed-\(seed)"
                guard FileManager.default.fileExists(atPath: run + "/DONE") else { continue }
                let k = try exploreKinds(run: run)
                for name in kinds { if let c = k[name], c.total > 0 { shares[name, default: []].append(Double(c.solved) / Double(c.total)) } }
            }
            text += "| \(arm.name) | " + kinds.map { fmt(meanCI(shares[$0] ?? [])) }.joined(separator: " | ") + " |\n"
        }
    }
    let dir = "\(o.out)/\(task)"
    func curves(_ pick: (RunSummary) -> [(Double, Double)]) -> [(String, [(Double, Double, Double)])] {
        o.arms.map { arm in
            let runs = (summaries[arm.name] ?? [:]).values.map(pick)
            var byStep: [Double: [Double]] = [:]
            for r in runs { for (x, y) in r { byStep[x, default: []].append(y) } }
            return (arm.name, byStep.keys.sorted().compactMap { x in
                guard let ys = byStep[x], ys.count == runs.count else { return nil }
                let c = meanCI(ys)
                return (x, c.mean, c.half.isNaN ? 0 : c.half)
            })
        }
    }
    try svgPlot(title: "\(task): held-out success (greedy), mean and 95% interval over seeds", yLabel: "success",
                series: curves(\.success)).write(toFile: dir + "/success.svg", atomically: true, encoding: .utf8)
    try svgPlot(title: "\(task): held-out pass@k, mean and 95% interval over seeds", yLabel: "pass@k",
                series: curves(\.passAtK)).write(toFile: dir + "/pass-at-k.svg", atomically: true, encoding: .utf8)
    // Entropy per step is noisy: averaged over windows of 10 steps.
    try svgPlot(title: "\(task): behaviour entropy (nats per token), mean and 95% interval over seeds", yLabel: "entropy",
                series: curves { r in stride(from: 0, to: r.entropy.count, by: 10).map { i in
                    let w = r.entropy[i..<min(i + 10, r.entropy.count)]
                    return (w.last?.0 ?? 0, w.map(\.1).reduce(0, +) / Double(w.count))
                } }, fromZero: true).write(toFile: dir + "/entropy.svg", atomically: true, encoding: .utf8)
    try text.write(toFile: dir + "/summary.md", atomically: true, encoding: .utf8)
    return text
}

/// Line charts with a shaded band per series: (x, mean, half-width) points.
func svgPlot(title: String, yLabel: String, series: [(String, [(Double, Double, Double)])], fromZero: Bool = true) -> String {
    let w = 760.0, h = 420.0, left = 60.0, right = 170.0, top = 40.0, bottom = 50.0
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
    let pts = series.flatMap(\.1)
    let xMax = max(1, pts.map(\.0).max() ?? 1)
    var yMax = pts.map { $0.1 + $0.2 }.max() ?? 1
    var yMin = fromZero ? 0 : (pts.map { $0.1 - $0.2 }.min() ?? 0)
    if yMax <= yMin { yMax = yMin + 1 }
    let span = yMax - yMin
    yMax += 0.05 * span
    if !fromZero { yMin -= 0.05 * span }
    func X(_ x: Double) -> Double { left + (w - left - right) * x / xMax }
    func Y(_ y: Double) -> Double { top + (h - top - bottom) * (1 - (y - yMin) / (yMax - yMin)) }
    var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(w))\" height=\"\(Int(h))\" font-family=\"sans-serif\" font-size=\"12\">\n"
    s += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    s += "<text x=\"\(left)\" y=\"22\" font-size=\"14\">\(title)</text>\n"
    // Axes and ticks.
    s += "<line x1=\"\(left)\" y1=\"\(Y(yMin))\" x2=\"\(X(xMax))\" y2=\"\(Y(yMin))\" stroke=\"black\"/>\n"
    s += "<line x1=\"\(left)\" y1=\"\(Y(yMin))\" x2=\"\(left)\" y2=\"\(Y(yMax))\" stroke=\"black\"/>\n"
    /// Ticks at 1, 2 or 5 times a power of ten, about five over the range.
    func ticks(_ lo: Double, _ hi: Double) -> [Double] {
        let raw = (hi - lo) / 5, p = pow(10, floor(log10(raw)))
        let step = [1.0, 2, 5, 10].map { $0 * p }.first { $0 >= raw } ?? 10 * p
        return stride(from: ceil(lo / step) * step, through: hi + 1e-12, by: step).map { $0 }
    }
    for y in ticks(yMin, yMax) {
        s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n", left - 6, Y(y) + 4, (y * 1e6).rounded() / 1e6)
        s += String(format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", left, Y(y), X(xMax), Y(y))
    }
    for x in ticks(0, xMax) {
        s += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%g</text>\n", X(x), Y(yMin) + 18, x)
    }
    s += "<text x=\"\((left + X(xMax)) / 2)\" y=\"\(h - 10)\" text-anchor=\"middle\">RL step (0 = end of the warm start)</text>\n"
    s += "<text x=\"16\" y=\"\((top + Y(yMin)) / 2)\" transform=\"rotate(-90 16 \((top + Y(yMin)) / 2))\" text-anchor=\"middle\">\(yLabel)</text>\n"
    for (i, (name, p)) in series.enumerated() where !p.isEmpty {
        let c = colors[i % colors.count]
        let upper = p.map { String(format: "%.1f,%.1f", X($0.0), Y(min(yMax, $0.1 + $0.2))) }
        let lower = p.reversed().map { String(format: "%.1f,%.1f", X($0.0), Y(max(yMin, $0.1 - $0.2))) }
        s += "<polygon points=\"\((upper + lower).joined(separator: " "))\" fill=\"\(c)\" fill-opacity=\"0.15\" stroke=\"none\"/>\n"
        s += "<polyline points=\"\(p.map { String(format: "%.1f,%.1f", X($0.0), Y($0.1)) }.joined(separator: " "))\" fill=\"none\" stroke=\"\(c)\" stroke-width=\"2\"/>\n"
        let ly = top + 18 * Double(i)
        s += "<rect x=\"\(w - right + 12)\" y=\"\(ly)\" width=\"14\" height=\"10\" fill=\"\(c)\"/>\n"
        s += "<text x=\"\(w - right + 32)\" y=\"\(ly + 9)\">\(name)</text>\n"
    }
    return s + "</svg>\n"
}

/// `kat-bench ablation ...`: runs what is missing, then writes and prints the summaries.
func ablationCommand(_ args: [String]) throws {
    let o = try parseAblationOptions(args)
    guard FileManager.default.isExecutableFile(atPath: o.katDist) else {
        throw AblationError.usage("kat-bench ablation: no kat-dist executable at \(o.katDist) (build it, or give --kat-dist PATH)")
    }
    let runs = plan(o)
    let t0 = Date().timeIntervalSince1970
    if !o.reportOnly { try runAll(runs, o) }
    var all = "# Ablation\n\n"
    all += "Arms:\n\n" + o.arms.map { a in
        "- \(a.name): " + (knownArms.first { $0.name == a.name }?.about ?? "") + " (`" + a.settings.joined(separator: " ") + "`)"
    }.joined(separator: "\n") + "\n\n"
    all += "Seeds \(o.firstSeed) to \(o.firstSeed + o.seeds - 1)" + (o.quick ? ", quick settings " + AblationOptions.quickSettings.joined(separator: " ") : "")
    all += o.extra.isEmpty ? "" : ", with " + o.extra.joined(separator: " ")
    all += "\n\n"
    for task in o.tasks { all += try report(task: task, o) + "\n" }
    try all.write(toFile: o.out + "/summary.md", atomically: true, encoding: .utf8)
    say(all)
    say(String(format: "kat-bench ablation: %.0f s; summary %@/summary.md, curves %@/TASK/*.svg", Date().timeIntervalSince1970 - t0,
                 o.out as NSString, o.out as NSString))
}
