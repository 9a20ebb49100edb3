import Foundation
import KATModel
import KATTrie

/// Set by SIGUSR1 (see `installPreemptionHandler`): finish the step, checkpoint, exit 0.
nonisolated(unsafe) public var preemptionRequested = false

/// Installs the SIGUSR1 handler that asks a run to checkpoint and stop after its step.
public func installPreemptionHandler() {
    signal(SIGUSR1) { _ in preemptionRequested = true }
}

/// For tests of failure handling: `KAT_FAULT_KILL_AT=STEP[:RANK]` makes that world rank
/// kill itself with SIGKILL in the middle of that training step (after its first
/// micro-batch's backward pass).
public func faultKillStep() -> Int? {
    guard let spec = ProcessInfo.processInfo.environment["KAT_FAULT_KILL_AT"] else { return nil }
    let parts = spec.split(separator: ":")
    let rank = ProcessInfo.processInfo.environment["OMPI_COMM_WORLD_RANK"] ?? "0"
    if parts.count > 1, String(parts[1]) != rank { return nil }
    return Int(parts[0])
}

/// For tests: `KAT_FAULT_NAN_AT=STEP` makes that training step's gradient NaN.
func faultNaNStep() -> Int? { ProcessInfo.processInfo.environment["KAT_FAULT_NAN_AT"].flatMap(Int.init) }

/// A step's batch as groups of trajectories.
public struct CollectedBatch {
    public var trajectories: [Trajectory]
    public var groups: [[Int]]
    public var waitSeconds: Double
    public var droppedStale: Int
    /// Tokens generated (received from rollout ranks, dropped ones included) since the last step.
    public var generatedTokens: Int?
    public init(trajectories: [Trajectory], groups: [[Int]], waitSeconds: Double, droppedStale: Int, generatedTokens: Int? = nil) {
        self.trajectories = trajectories; self.groups = groups; self.waitSeconds = waitSeconds; self.droppedStale = droppedStale
        self.generatedTokens = generatedTokens
    }
}

/// How a run takes part in a job of several ranks (the defaults: one process alone).
public struct RunHooks {
    /// Writes the run directory, metrics, report and checkpoints, and logs.
    public var isLeader = true
    /// A rollout rank: it only generates, so it keeps no optimizer moments or reference model.
    public var generatesOnly = false
    public var role: TrainerRole = .single
    /// Supplies a step's batch; nil generates every group in this process.
    public var collect: ((_ step: Int, _ version: Int) throws -> CollectedBatch)?
    /// Called with the new policy version after each step that changed the weights.
    public var published: ((_ version: Int) throws -> Void)?
    /// Sums evaluation tallies over trainers (each evaluates its share of the prompts).
    public var reduceEval: (inout [Double]) throws -> Void = { _ in }
    /// Called at the end of every step, for example to check that trainers agree.
    public var stepDone: ((_ step: Int) throws -> Void)?
    /// Whether any rank was asked to stop (SIGUSR1): agreed over trainers.
    public var stopRequested: () throws -> Bool = { preemptionRequested }
    /// Extra files for a checkpoint (trainer 0's buffered rollouts) and their restore.
    public var checkpointExtras: () -> [String: Data] = { [:] }
    public var restoreExtras: (_ checkpoint: String) throws -> Void = { _ in }
    public init() {}
}

/// Reinforcement learning: roll out groups with the current weights (here, or on rollout
/// ranks through `RunHooks.collect`), pack them into a trie, train a step, repeat;
/// evaluate on the held-out split.
public final class OnlineRun {
    public let config: TrainConfig
    public let run: RunDirectory?
    public let hooks: RunHooks
    public let model: GPT2
    public let step: TrainStep
    let worker: RolloutWorker
    let evalWorker: RolloutWorker
    let task: Task?
    let sourceName: String
    let log: (String) -> Void
    let progress: (String) -> Void
    var rng: SplitMix64
    public private(set) var lines: [JSON] = []
    var warmEval: (success: Double, reward: Double)?

    /// The checkpoint this run continues from, when resuming.
    let resumeFrom: String?

    public init(config: TrainConfig, runDirectory: String, hooks: RunHooks = RunHooks(), resume: String? = nil,
                log: @escaping (String) -> Void, progress: @escaping (String) -> Void) throws {
        self.config = config
        self.hooks = hooks
        self.log = log
        self.progress = progress
        let m = try config.initialModel()
        guard m.config.vocabSize >= GPT2Config.byteVocabSize else {
            throw RunError(path: "config", reason: "built-in and external environments use the byte tokenizer: model.vocab_size must be at least 260")
        }
        model = m
        let makeEnv: () -> Environment
        let turns = config.int("rollout.turns")
        switch config.dataSource {
        case let .task(name):
            guard let t = builtinTask(name) else {
                throw RunError(path: "config", reason: "data.task \"\(name)\" is not a built-in task (\(builtinTaskNames.joined(separator: ", ")))")
            }
            task = t
            sourceName = "task \(name)"
            makeEnv = { t.makeEnvironment(maxTurns: turns) }
        case let .external(cmd):
            task = nil
            sourceName = "environment \(cmd)"
            let timeout = config.double("env.timeout_s")
            makeEnv = { ExternalEnvironment(command: cmd, timeout: timeout) }
        case .trajectories:
            throw RunError(path: "config", reason: "data.trajectories is offline training, not a rollout source")
        }
        let seed = UInt64(config.int("seed"))
        worker = RolloutWorker(model: m, seed: seed &+ 1, config: config.rolloutConfig, makeEnvironment: makeEnv)
        evalWorker = RolloutWorker(model: m, seed: seed &+ 2, config: config.rolloutConfig, makeEnvironment: makeEnv)
        rng = SplitMix64(seed: seed &+ 3)
        var optConfig = config.optimizerConfig
        var lossConfig = config.lossConfig
        if hooks.generatesOnly { optConfig.kind = .sgd; lossConfig.klCoef = 0 } // no moments, no reference copy
        let opt = Optimizer(config: optConfig, layout: m.layout)
        step = TrainStep(model: m, optimizer: opt, loss: lossConfig, packing: config.string("data.packing") ?? "trie",
                         maxTokens: config.int("batch.max_tokens"), temperature: Float(config.double("rollout.temperature")),
                         minibatches: config.int("batch.minibatches"), ppoEpochs: config.int("loss.ppo_epochs"), role: hooks.role)
        if let spec = resume {
            let dir = try Checkpoint.choose(runDirectory: runDirectory, spec: spec, log: hooks.isLeader ? log : { _ in })
            resumeFrom = dir
            resumedState = try Checkpoint.restore(dir, model: m, optimizer: opt)
            try hooks.restoreExtras(dir)
            let stepDone = resumedState?["step"]?.intValue ?? 0
            run = hooks.isLeader ? try RunDirectory(resumeAt: runDirectory, step: stepDone) : nil
            lines = run?.existingMetrics() ?? []
        } else {
            resumeFrom = nil
            if hooks.isLeader {
                let r = try RunDirectory(newRunAt: runDirectory)
                try r.writeConfig(config.json)
                run = r
            } else {
                run = nil
            }
        }
    }
    var resumedState: JSON?

    /// Group `index` of step `step`: its prompt and samples depend on the seed, the step
    /// and the index only (each sample draws from its own generator), so any rank
    /// generating it gets the same group up to float round-off of a different batch shape.
    public func generateGroup(step s: Int, index g: Int, version: Int, name: String? = nil) throws -> [Trajectory] {
        try generateGroups(step: s, indices: [g], version: version, names: name.map { [$0] })[0]
    }

    /// Several groups of a step, decoded together.
    public func generateGroups(step s: Int, indices: [Int], version: Int, names: [String]? = nil) throws -> [[Trajectory]] {
        let requests = indices.enumerated().map { (k, g) -> RolloutWorker.GroupRequest in
            var mix = SplitMix64(seed: UInt64(config.int("seed")) &* 0x100000001B3 &+ UInt64(s) &* 0x9E3779B97F4A7C15 &+ UInt64(g))
            let prompt = mix.next() % trainCount
            let id = names?[k] ?? "s\(s)-g\(g)"
            return RolloutWorker.GroupRequest(seed: prompt, split: "train", groupID: id, idPrefix: id, policyVersion: version, sampleSeed: mix.next())
        }
        return try worker.rolloutGroups(requests)
    }

    var trainCount: UInt64 { UInt64(task?.promptCount(split: "train") ?? Int(Int32.max)) }

    /// Held-out success (full reward under greedy decoding) and mean reward.
    public func evaluate() throws -> (success: Double, reward: Double) {
        let n = config.int("eval.prompts")
        var tally = [0.0, 0.0]
        for i in stride(from: hooks.role.index, to: n, by: hooks.role.count) {
            let r = try evalWorker.greedyEpisode(seed: UInt64(i), split: "test")
            tally[1] += r.reward
            if r.reward >= 1 - 1e-9 { tally[0] += 1 }
        }
        try hooks.reduceEval(&tally)
        return (tally[0] / Double(n), tally[1] / Double(n))
    }

    func writeReport(_ notes: [String]) {
        guard let run else { return }
        let html = Report.html(title: "kat-dist run \(run.path) (\(sourceName))", lines: lines, notes: notes)
        try? FileWriting.writeAtomically(Data(html.utf8), to: run.path + "/report.html")
    }

    /// Supervised warm start on the task's reference answers for training prompts.
    func warmStart(steps: Int, batch: Int, version: inout Int, stepIndex: inout Int) throws {
        guard let task else { return }
        let lr = config.optionalDouble("warmstart.lr") ?? config.double("optimizer.lr")
        let flawed = config.double("warmstart.flawed")
        for w in 0..<steps {
            let t0 = monotonicSeconds()
            var trajs: [Trajectory] = []
            for k in 0..<batch {
                let seed = rng.next() % UInt64(task.promptCount(split: "train"))
                let ref = rng.nextDouble() < flawed ? task.flawedDemonstration(seed: seed, split: "train")
                                                    : task.reference(seed: seed, split: "train")
                let p = [ByteTokenizer.bos] + ByteTokenizer.encode(ref.prompt) + [ByteTokenizer.sep]
                let a = ByteTokenizer.encode(ref.answer) + [ByteTokenizer.eos]
                trajs.append(Trajectory(id: "w\(w)-\(k)", group: "w\(w)-\(k)", tokens: p + a,
                                        lossMask: [UInt8](repeating: 0, count: p.count) + [UInt8](repeating: 1, count: a.count),
                                        advantage: 1, source: "warm start"))
            }
            let stats = try step.run(trajectories: trajs, groups: trajs.indices.map { [$0] }, advantages: trajs.map { _ in 1 },
                                     step: 0, totalSteps: 1, lrOverride: Float(lr))
            version += stats.updates
            stepIndex += 1
            let elapsed = monotonicSeconds() - t0
            var m = commonMetrics(step: stepIndex, version: version, stats: stats, trajectories: trajs, advantages: trajs.map { _ in 1 },
                                  elapsed: elapsed, waitData: 0)
            m.append(("phase", "warmstart"))
            if w + 1 == steps, config.int("eval.every") > 0 {
                let e = try evaluate()
                m.append(("eval_success", JSON(e.success))); m.append(("eval_reward", JSON(e.reward)))
                warmEval = e
            }
            lines.append(.object(m))
            run?.appendMetrics(.object(m))
            progress(String(format: "warm start %d/%d  answer log-prob %.3f", w + 1, steps, stats.logprobMean))
        }
    }

    public func train() throws {
        let start = monotonicSeconds()
        let steps = config.int("steps"), every = config.int("eval.every"), prompts = config.int("batch.prompts")
        let ckEvery = config.int("checkpoint.every"), keep = config.int("checkpoint.keep"), flatEvery = config.int("check.flat_every")
        var version = 0, stepIndex = 0, firstStep = 0
        var notes: [String] = []
        if let state = resumedState {
            version = state["policy_version"]?.intValue ?? 0
            stepIndex = state["step"]?.intValue ?? 0
            firstStep = state["rl_step"]?.intValue ?? 0
            if let r = state["rng"]?.stringValue.flatMap(UInt64.init) { rng.state = r }
            log("resumed at step \(stepIndex) (policy version \(version), RL step \(firstStep) of \(steps))")
        } else if every > 0 {
            let e = try evaluate()
            notes.append(String(format: "held-out success at the start: %.3f (mean reward %.3f)", e.success, e.reward))
            log(notes.last!)
        }
        let warm = config.int("warmstart.steps")
        if warm > 0, task != nil, resumedState == nil {
            try warmStart(steps: warm, batch: config.int("warmstart.batch"), version: &version, stepIndex: &stepIndex)
            if let e = warmEval {
                notes.append(String(format: "held-out success after the %d-step supervised warm start: %.3f (mean reward %.3f)", warm, e.success, e.reward))
                log(notes.last!)
            }
        }
        try hooks.published?(version)
        let rlStart = monotonicSeconds()
        let killAt = faultKillStep()
        for s in firstStep..<steps {
            let t0 = monotonicSeconds()
            let batch: CollectedBatch
            if let collect = hooks.collect {
                batch = try collect(s, version)
            } else {
                var trajs: [Trajectory] = [], groups: [[Int]] = []
                for group in try generateGroups(step: s, indices: Array(0..<prompts), version: version) {
                    groups.append(Array(trajs.count..<(trajs.count + group.count)))
                    trajs += group
                }
                batch = CollectedBatch(trajectories: trajs, groups: groups, waitSeconds: monotonicSeconds() - t0, droppedStale: 0)
            }
            let trajs = batch.trajectories, groups = batch.groups
            let adv = try computeAdvantages(trajs, config: config.advantageConfig)
            let tWait = batch.waitSeconds
            var drift: Double?
            if flatEvery > 0, s % flatEvery == 0 {
                drift = try step.drift(trajectories: groups[0].map { trajs[$0] }, advantages: groups[0].map { adv[$0] })
            }
            step.killMidStep = killAt == stepIndex + 1
            step.poisonGradient = faultNaNStep() == stepIndex + 1
            let stats = try step.run(trajectories: trajs, groups: groups, advantages: adv, step: s, totalSteps: steps)
            version += stats.updates
            stepIndex += 1
            if config.bool("log.trained_ids") { run?.appendTrainedIDs(step: stepIndex, ids: trajs.map(\.id)) }
            var m = commonMetrics(step: stepIndex, version: version, stats: stats, trajectories: trajs, advantages: adv,
                                  elapsed: monotonicSeconds() - t0, waitData: tWait)
            m.append(("phase", "rl"))
            if let i = m.firstIndex(where: { $0.0 == "dropped_stale" }) { m[i].1 = JSON(batch.droppedStale) }
            if let g = batch.generatedTokens { m.append(("generated_tokens", JSON(g))) }
            if let drift { m.append(("trie_flat_drift", JSON(drift))) }
            let isLast = s + 1 == steps
            var evalText = ""
            if every > 0, (s + 1) % every == 0 || isLast {
                let e = try evaluate()
                m.append(("eval_success", JSON(e.success))); m.append(("eval_reward", JSON(e.reward)))
                evalText = String(format: "  eval %.3f", e.success)
                if isLast { notes.append(String(format: "held-out success at the end: %.3f (mean reward %.3f)", e.success, e.reward)) }
            }
            m[1] = ("time", JSON(monotonicSeconds() - start))
            lines.append(.object(m))
            run?.appendMetrics(.object(m))
            if stats.updates > 0 { try hooks.published?(version) }
            try hooks.stepDone?(s)
            let rewardMean = trajs.compactMap(\.reward).reduce(0, +) / Double(max(1, trajs.count))
            let perStep = (monotonicSeconds() - rlStart) / Double(s + 1)
            let left = perStep * Double(steps - s - 1)
            progress(String(format: "step %d/%d  reward %.3f%@  loss %.4f  tokens/s %.0f  left %dm%02ds", s + 1, steps, rewardMean,
                            evalText as NSString, stats.loss, Double(stats.tokensFlat) / max(1e-9, monotonicSeconds() - t0),
                            Int(left) / 60, Int(left) % 60))
            if step.skippedInARow >= 5 {
                throw RunError(path: run?.path ?? "trainer", reason: "\(step.skippedInARow) updates in a row had a non-finite loss or gradient; stopping")
            }
            writeReport(notes)
            let stopNow = try hooks.stopRequested()
            if isLast || stopNow || (ckEvery > 0 && (s + 1) % ckEvery == 0) {
                let extras = hooks.checkpointExtras()
                if let run {
                    let state: JSON = ["step": JSON(stepIndex), "rl_step": JSON(s + 1), "policy_version": JSON(version),
                                       "rng": JSON(String(rng.state)), "seed": JSON(config.int("seed")),
                                       "buffered_files": .array(extras.keys.sorted().map { .string($0) })]
                    try run.writeCheckpoint(step: stepIndex, model: model, optimizer: step.optimizer, state: state, keep: keep, extras: extras)
                }
            }
            if stopNow && !isLast {
                log("stopping after step \(stepIndex) on request (SIGUSR1); resume with --resume auto")
                break
            }
        }
        writeReport(notes)
        for n in notes { log(n) }
        if let run { log(String(format: "done in %.0f s; report %@/report.html", monotonicSeconds() - start, run.path as NSString)) }
    }
}

/// The metrics every training step reports (SPEC section 8), before the source's extras.
func commonMetrics(step: Int, version: Int, stats: StepStats, trajectories trajs: [Trajectory], advantages adv: [Double],
                   elapsed: Double, waitData: Double, staleness: Bool = true) -> [(String, JSON)] {
    let rewards = trajs.compactMap(\.reward), ents = trajs.compactMap(\.entropy)
    // Lag of a trajectory: the policy version before this step minus the version it was
    // sampled with. Offline data has no policy versions that apply: every lag is 0.
    let before = version - stats.updates
    let lags = trajs.map { staleness ? max(0, before - ($0.policyVersion ?? before)) : 0 }
    let maxLag = lags.max() ?? 0
    var hist = [Int](repeating: 0, count: maxLag + 1)
    for l in lags { hist[l] += 1 }
    return [
        ("step", JSON(step)), ("time", JSON(elapsed)), ("policy_version", JSON(version)),
        ("reward_mean", rewards.isEmpty ? .null : JSON(rewards.reduce(0, +) / Double(rewards.count))),
        ("advantage_abs_mean", JSON(adv.reduce(0) { $0 + abs($1) } / Double(max(1, adv.count)))),
        ("entropy_mean", ents.isEmpty ? .null : JSON(ents.reduce(0, +) / Double(ents.count))),
        ("loss", JSON(stats.loss)), ("grad_norm", JSON(stats.gradNorm)), ("lr", JSON(stats.lr)),
        ("clip_frac", JSON(stats.clipFrac)), ("kl_behaviour", JSON(stats.klBehaviour)), ("kl_reference", JSON(stats.klReference)),
        ("logprob_mean", JSON(stats.logprobMean)),
        ("tokens_flat", JSON(stats.tokensFlat)), ("tokens_trie", JSON(stats.tokensTrie)),
        ("tokens_computed", JSON(stats.tokensComputed)),
        ("trie_ratio", JSON(Double(stats.tokensFlat) / Double(max(1, stats.tokensTrie)))),
        ("tokens_per_s", JSON(Double(stats.tokensFlat) / max(elapsed, 1e-9))),
        ("trajectories", JSON(trajs.count)),
        ("staleness_mean", JSON(Double(lags.reduce(0, +)) / Double(max(1, lags.count)))), ("staleness_max", JSON(maxLag)),
        ("staleness_hist", .array(hist.map { JSON($0) })), ("dropped_stale", 0),
        ("skipped", JSON(stats.skipped)),
        ("t_wait_data", JSON(waitData)), ("t_forward_backward", JSON(stats.tForwardBackward)),
        ("t_allreduce", JSON(stats.tAllreduce)), ("t_optimizer", JSON(stats.tOptimizer)), ("t_weight_sync", 0.0),
    ]
}
