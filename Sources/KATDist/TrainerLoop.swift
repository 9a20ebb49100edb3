import Foundation
import KATModel
import KATRL
import KATSupport
import KATTrie

/// The training loop of a trainer rank, or of the single process of a one-process run.
///
/// It owns the order of a step, as llm.c's `main` does:
///
///     collect the batch -> advantages -> plan micro-batches -> forward/backward each
///     (serving the data flow between them) -> sum gradients over trainers -> update
///     -> publish weights -> metrics -> evaluation -> agree on stopping -> checkpoint
///
/// and the lifecycle of the run: a new or resumed run directory, phases (warm start, then
/// RL; or offline), pre-emption by SIGUSR1, the stop after repeated non-finite updates,
/// progress and the report. The same loop serves one process (`LocalCollective`) and any
/// number of trainer ranks (`MPICollective`).
final class TrainerLoop {
    let settings: RunSettings
    let collective: Collective
    let console: Console
    let model: any LanguageModel
    let optimizer: Optimizer
    let step: TrainStep
    let phases: [BatchSource]
    let evaluator: Evaluator?
    /// This trainer's rollout ranks and weight sends, served between micro-batches and
    /// evaluation episodes in every phase.
    let peers: RolloutPeers?
    /// The run directory; only the first trainer writes one.
    let directory: RunDirectory?
    let title: String
    let faults: FaultInjection

    var version = 0
    var stepIndex = 0
    /// Where a resumed run continues: the phase and that phase's next step.
    var startAt = (phase: 0, step: 0)
    var resumed = false
    /// Seconds the run had run before this process started (from the checkpoint).
    var elapsedBefore = 0.0
    let processStart = monotonicSeconds()
    var lines: [JSON] = []
    var notes: [String] = []
    /// Set when a resumed run has nothing left to train: said, and nothing is changed.
    var nothingToDo: String?
    var reportedTruncation = false

    /// Sums gradients over trainers in buckets (with several trainers under MPI).
    let reducer: GradientReducer?

    /// Consecutive non-finite updates after which the run stops with an error.
    static let nonFiniteLimit = 5
    /// The tokenizer files every checkpoint carries, read once at the start.
    let tokenizerFiles: [String: Data]

    /// Sets up the run: the optimizer and step maths, then either a new run directory
    /// (config.json written) or the checkpoint to continue from (weights, optimizer,
    /// version, each phase's own state; metrics cut back to the checkpoint).
    init(settings: RunSettings, collective: Collective, isLeader: Bool, worldRank: Int, console: Console, model: any LanguageModel,
         phases: [BatchSource], evaluator: Evaluator?, peers: RolloutPeers? = nil, runDirectory: String, resume: String?, title: String) throws {
        self.settings = settings
        self.collective = collective
        self.console = console
        self.model = model
        self.phases = phases
        self.evaluator = evaluator
        self.peers = peers
        self.title = title
        faults = FaultInjection(worldRank: worldRank)
        if let mpi = collective as? MPICollective, mpi.size > 1 {
            let stages = model.layout.layerRanges.map(\.lowerBound) + model.layout.mlpRanges.map(\.lowerBound)
                + [model.layout.layerRanges.last?.upperBound ?? 0]
            reducer = GradientReducer(collective: mpi, grads: model.grads, boundaries: stages, bucketBytes: Int(settings.comm.bucketMiB * 1_048_576),
                                      overlap: settings.comm.overlap, sharded: settings.comm.shardOptimizer)
        } else {
            reducer = nil
        }
        optimizer = Optimizer(config: settings.optimizer, layout: model.layout, slice: reducer?.slices.map { $0[collective.rank] })
        step = TrainStep(model: model, optimizer: optimizer, loss: settings.loss, config: settings.step)
        tokenizerFiles = settings.tokenizerFiles(vocabSize: model.config.vocabSize)
        guard let spec = resume else {
            if isLeader {
                let r = try RunDirectory.create(newRunAt: runDirectory)
                try r.writeConfig(settings.json)
                directory = r
            } else {
                directory = nil
            }
            return
        }
        // Where the run continues: in place (auto, or a checkpoint of this run), or as a
        // fork of another run's checkpoint into this directory.
        let origin = spec == "auto" ? runDirectory : RunDirectory.runOf(checkpoint: spec) ?? (Checkpoint.isRunDirectory(spec) ? spec : nil)
        let forked = origin.map { !RunDirectory.samePath($0, runDirectory) } ?? true
        // In place, the leader holds the run's lock before reading or changing anything.
        var lock: RunLock?
        if isLeader, !forked {
            try RunDirectory.checkUsable(runDirectory)
            lock = try RunLock(directory: runDirectory)
        }
        if spec == "auto", Checkpoint.names(in: runDirectory + "/checkpoints").isEmpty {
            // `--resume auto` always continues or begins: a run that never wrote a
            // checkpoint (killed early, or not started yet) starts from the beginning.
            console.line("resume: \(runDirectory) holds no checkpoint yet; starting the run from the beginning")
            if let lock {
                let r = try RunDirectory.resume(at: runDirectory, lock: lock, step: 0)
                try r.writeConfig(settings.json)
                directory = r
            } else {
                directory = nil
            }
            return
        }
        let dir = try Checkpoint.choose(runDirectory: runDirectory, spec: spec, log: isLeader ? console.line : { _ in })
        let state = try CheckpointState(try Checkpoint.restore(dir, model: model, optimizer: optimizer), path: dir + "/state.json")
        stepIndex = state.step
        version = state.policyVersion
        elapsedBefore = state.time
        startAt = try TrainerLoop.position(of: state, in: phases.map(\.phase), checkpoint: dir)
        resumed = true
        if let last = phases.last, startAt.phase >= phases.count - 1, startAt.phase >= phases.count || startAt.step >= last.steps {
            let done = startAt.phase < phases.count ? startAt.step : last.steps
            nothingToDo = "\(dir) has done \(done) \(last.phase.rawValue) steps and steps is \(last.steps): nothing left to train (raise steps to continue); the run is unchanged"
            directory = nil
            return
        }
        for source in phases { try source.restore(state: state.json, directory: dir) }
        if let n = state.json["buffered_ids"]?.arrayValue?.count, n > 0 {
            console.line("the checkpoint holds \(n) buffered trajectories: each is trained once, or dropped and counted if stale")
        }
        if isLeader {
            if forked {
                try RunDirectory.checkUsable(runDirectory)
                lock = try RunLock(directory: runDirectory)
            }
            guard let lock else { throw RunError.runDirectory(path: runDirectory, reason: "cannot take the run's lock") }
            let r = forked ? try RunDirectory.fork(newRunAt: runDirectory, lock: lock, from: dir, step: stepIndex)
                           : try RunDirectory.resume(at: runDirectory, lock: lock, step: stepIndex)
            if !forked {
                let moved = try r.setAsideCheckpoints(after: stepIndex)
                if !moved.isEmpty {
                    console.line("resume: the checkpoints after \(Checkpoint.name(step: stepIndex)) (\(moved.joined(separator: ", "))) belong to an abandoned timeline; moved to \(runDirectory)/abandoned/")
                }
            }
            let earlier = state.config ?? origin.flatMap { RunDirectory.readJSON($0 + "/config.json") }
            for change in try r.recordConfig(settings.json, previous: earlier, step: stepIndex) {
                console.line("setting changed since the checkpoint: \(change)")
            }
            if forked { console.line("forked from \(dir) into \(runDirectory)") }
            directory = r
        } else {
            directory = nil
        }
        lines = directory?.existingMetrics() ?? []
        let p = min(startAt.phase, max(0, phases.count - 1))
        let where_ = phases.isEmpty ? "" : ", \(phases[p].phase.rawValue) step \(startAt.step) of \(phases[p].steps)"
        note("resumed at step \(stepIndex) (policy version \(version)\(where_))")
    }

    /// The phase and step a checkpoint continues at. A checkpoint of the warm start goes
    /// on to RL when this run has no warm start; a checkpoint of an online run cannot
    /// continue offline, nor the other way round.
    /// - Throws: `RunError.settings` naming the key that makes the run of another kind.
    static func position(of state: CheckpointState, in phases: [Phase], checkpoint: String) throws(RunError) -> (phase: Int, step: Int) {
        let offline = phases.contains(.offline)
        let phase = state.phase ?? (offline ? .offline : .rl)
        if (phase == .offline) != offline {
            throw .settings(key: "data.trajectories", reason: phase == .offline
                ? "\(checkpoint) is of an offline run (data.trajectories); this run is online"
                : "\(checkpoint) is of an online run; this run trains offline (data.trajectories)")
        }
        if let i = phases.firstIndex(of: phase) { return (i, state.phaseStep ?? state.step) }
        // A warm-start checkpoint, and this run has no warm start: RL begins.
        return (phases.firstIndex(of: .rl) ?? phases.count, 0)
    }

    /// Seconds since the run first started, continuing across resumes.
    var runTime: Double { elapsedBefore + monotonicSeconds() - processStart }

    func note(_ text: String) {
        notes.append(text)
        console.line(text)
    }

    // MARK: - The run

    /// Runs every phase from where the run stands, then ends each source (rollout ranks
    /// are stopped even when the run stops early).
    func run() throws {
        if let nothingToDo {
            console.line(nothingToDo)
            for source in phases { try source.finish() }
            return
        }
        defer { writeReport() }
        // On an error the run ends here: the job is ended as a whole (finishing sources
        // would wait on ranks that are not coming).
        try runPhases()
        for source in phases { try source.finish() }
        for source in phases { notes += source.finishNotes }
        for n in notes { console.line(n) }
        if let directory { console.line(String(format: "done in %.0f s; report %@/report.html", runTime, directory.path as NSString)) }
    }

    func runPhases() throws {
        if !resumed, settings.run.evalEvery > 0, let evaluator {
            if let e = try evaluator.evaluate(collective, console: console, between: { try self.peers?.poll() }) {
                note(String(format: "held-out success at the start: %.3f (mean reward %.3f)", e.success, e.reward))
            }
        }
        for (p, source) in phases.enumerated() where p >= startAt.phase {
            try source.begin(version: version)
            let first = p == startAt.phase ? startAt.step : 0
            let lastPhase = p == phases.count - 1
            phaseStart = (monotonicSeconds(), first)
            for s in first..<max(first, source.steps) {
                if try trainStep(source, s, lastPhase: lastPhase) { return }
            }
        }
    }

    /// When the current phase started in this process, and at which of its steps (for the ETA).
    var phaseStart = (time: 0.0, step: 0)

    /// One step of `source`'s phase. Returns whether the run stops here (pre-emption).
    func trainStep(_ source: BatchSource, _ s: Int, lastPhase: Bool) throws -> Bool {
        let t0 = monotonicSeconds()
        let isLast = s + 1 == source.steps
        let batch = try source.collect(step: s, version: version)
        if batch.interrupted {
            // Stopped while waiting for data: checkpoint the state as it is and stop.
            if s > 0 || stepIndex > 0 {
                try source.prepareCheckpoint()
                try writeCheckpoint(source, phaseStep: s)
            }
            console.line("stopping at step \(stepIndex) on request (SIGUSR1) while waiting for rollouts; resume with --resume auto")
            return true
        }
        guard !batch.trajectories.isEmpty else {
            throw RunError.emptyBatch(step: stepIndex + 1, abandoned: batch.episodes.abandoned)
        }
        let advantages = try batch.advantages ?? computeAdvantages(batch.trajectories, config: settings.advantage)
        var m = StepMetrics()
        m.phase = source.phase
        if source.phase != .warmstart, settings.run.flatCheckEvery > 0, s % settings.run.flatCheckEvery == 0, let g = batch.groups.first {
            m.trieFlatDrift = try step.drift(trajectories: g.map { batch.trajectories[$0] }, advantages: g.map { advantages[$0] })
        }
        let stats = try runUpdates(TrainingBatch(trajectories: batch.trajectories, groups: batch.groups, advantages: advantages,
                                                 supervised: source.phase == .warmstart),
                                   lr: source.schedule.learningRate(step: s), source: source, metrics: &m)
        version += stats.updates
        stepIndex += 1
        if settings.run.logTrainedIDs {
            let tokenVersions = batch.trajectories.map { t -> (oldest: Int, newest: Int)? in
                let v = zip(t.versions ?? [], t.lossMask).filter { $0.1 == 1 && $0.0 >= 0 }.map(\.0)
                guard let lo = v.min(), let hi = v.max() else { return nil }
                return (lo, hi)
            }
            try directory?.appendTrainedIDs(step: stepIndex, ids: batch.trajectories.map(\.id), versionBefore: version - stats.updates,
                                            tokenVersions: tokenVersions)
        }

        m.step = stepIndex
        m.policyVersion = version
        m.describe(batch: batch.trajectories, advantages: advantages, versionBefore: version - stats.updates,
                   maxStaleness: settings.ranks.maxStaleness, staleness: source.phase == .rl)
        m.stats = stats
        m.tWaitData = batch.waitSeconds
        m.droppedStale = batch.droppedStale
        m.droppedStaleTokens = batch.droppedStaleTokens
        m.throttledS = batch.throttledSeconds
        m.backpressureS = batch.backpressureSeconds
        m.generatedTokens = batch.generatedTokens
        m.epoch = batch.epoch
        m.truncatedEpisodes = batch.episodes.truncated
        m.abandonedEpisodes = batch.episodes.abandoned
        if batch.episodes.truncated > 0, !reportedTruncation {
            reportedTruncation = true
            console.line("episodes cut short by the context length (model.n_positions) are trained with the reward they earned; metrics.jsonl counts them in truncated_episodes")
        }

        m.tokensPerS = Double(stats.tokensFlat) / max(monotonicSeconds() - t0, 1e-9)

        let tSync = monotonicSeconds()
        m.weightBytesRoot = try source.stepDone(version: version, updated: stats.updates > 0)
        m.tWeightSync = monotonicSeconds() - tSync
        let wall = monotonicSeconds() - t0
        m.trainerIdle = wall > 0 ? min(1, batch.idleSeconds / wall) : 0
        m.tGenerateTrainers = batch.generateSeconds
        m.groupsTrainers = batch.trainerGroups
        m.optimizerMiB = Double(optimizer.stateBytes) / 1_048_576

        if let evaluator, settings.run.evalEvery > 0, evaluationDue(source, s) {
            if let e = try evaluator.evaluate(collective, console: console, between: { try self.peers?.poll() }) {
                m.evalSuccess = e.success
                m.evalReward = e.reward
                m.evalPassAt1 = e.passAt1
                m.evalPassAtK = e.passAtK
                if isLast {
                let what = source.phase == .warmstart ? "after the \(source.steps)-step supervised warm start" : "at the end"
                    note(String(format: "held-out success %@: %.3f (mean reward %.3f)", what, e.success, e.reward))
                }
            }
        }
        m.time = runTime
        lines.append(m.json)
        try directory?.appendMetrics(m.json)
        showProgress(source, s, m)

        if collective.size > 1, !faults.skipGradientSum { try checkTrainersAgree() }
        if step.skippedInARow >= TrainerLoop.nonFiniteLimit {
            throw RunError.nonFinite(step: stepIndex, inARow: step.skippedInARow)
        }
        writeReport()
        let stop = try collective.anyTrue(Preemption.requested)
        let every = settings.run.checkpointEvery
        if isLast || stop || (every > 0 && (s + 1) % every == 0) {
            try source.prepareCheckpoint()
            try writeCheckpoint(source, phaseStep: s + 1)
        }
        if stop && !(isLast && lastPhase) {
            console.line("stopping after step \(stepIndex) on request (SIGUSR1); resume with --resume auto")
            return true
        }
        return false
    }

    func evaluationDue(_ source: BatchSource, _ s: Int) -> Bool {
        switch source.phase {
        case .warmstart: return s + 1 == source.steps
        case .rl: return (s + 1) % settings.run.evalEvery == 0 || s + 1 == source.steps
        case .offline: return false
        }
    }

    /// The step's updates: each one's micro-batches forward and backward (the source served
    /// between them), gradients and tallies summed over trainers, then the optimizer.
    func runUpdates(_ batch: TrainingBatch, lr: Float, source: BatchSource, metrics m: inout StepMetrics) throws -> StepStats {
        var stats = StepStats()
        stats.lr = Double(lr)
        let t0 = monotonicSeconds()
        let updates = try step.plan(batch, shard: collective.rank, of: collective.size)
        m.tForwardBackward += monotonicSeconds() - t0
        for var update in updates {
            var t1 = monotonicSeconds()
            if update.needsCurrentLogprobs {
                // KL-Cov chooses its tokens over the whole minibatch: every trainer's share, summed.
                var l = try step.currentLogprobs(update)
                let t = monotonicSeconds()
                try collective.allreduceSum(&l)
                m.tAllreduce += monotonicSeconds() - t
                t1 += monotonicSeconds() - t
                update = step.choosingKLCovTokens(update, logprobs: l)
            }
            model.zeroGrad()
            reducer?.begin()
            // Weight sends progress between forward blocks as between backward stages.
            var sendError: (any Error)?
            if let publisher = peers?.publisher, !publisher.children.isEmpty {
                model.betweenForwardBlocks = { do { try publisher.poll() } catch { sendError = sendError ?? error } }
            }
            defer { model.betweenForwardBlocks = nil }
            var tally = UpdateTally()
            for (k, mb) in update.microBatches.enumerated() {
                try source.service()
                try peers?.poll()
                let last = k == update.microBatches.count - 1
                let pass = try step.forward(mb, of: update)
                if let e = sendError { throw e }
                if last, !faults.skipGradientSum { reducer?.beginLastBackward() }
                // Backward a stage at a time: on the last micro-batch each finished stage
                // lets its gradient buckets start summing while the next stages compute.
                while let stage = pass.backward.step() {
                    if last, let reducer, !faults.skipGradientSum { try reducer.completed(model.layout.gradientComplete(after: stage)) }
                    // Weights on their way to other nodes move only inside MPI calls (no
                    // progress thread): test those sends between backward stages too, so a
                    // slow link carries them while the trainer computes (not while a
                    // gradient progress thread owns MPI).
                    if reducer?.progressThreadRunning != true { try peers?.publisher?.poll() }
                }
                tally += pass.tally
                faults.killIfDue(stepIndex + 1)
            }
            m.tForwardBackward += monotonicSeconds() - t1
            let t2 = monotonicSeconds()
            if faults.nanAt == stepIndex + 1 { model.grads[0] = .nan }
            if faults.skipGradientSum {
                // Benchmarks only: the step without its gradient communication.
            } else if let reducer {
                try reducer.finish()
            } else {
                try collective.allreduceSum(model.grads)
            }
            var values = tally.values
            try collective.allreduceSum(&values)
            tally.values = values
            if tally.isWeightTokens > 0, collective.size > 1 { tally.isWeightMax = try collective.allreduceMaxMin(tally.isWeightMax).max }
            m.tAllreduce += monotonicSeconds() - t2
            let t3 = monotonicSeconds()
            if let reducer, let slice = reducer.sliceGradient {
                let outcome = step.apply(tally, lr: lr, gradient: UnsafePointer(slice.pointer), norm: try reducer.globalNorm())
                if outcome.applied { try reducer.gatherParameters(model.params) }
                stats.add(update, tally, outcome)
            } else {
                stats.add(update, tally, step.apply(tally, lr: lr))
            }
            m.tOptimizer += monotonicSeconds() - t3
        }
        stats.finish()
        return stats
    }

    /// Every trainer must hold the same weights after a step: compares a weighted sum.
    func checkTrainersAgree() throws {
        var sum = 0.0
        for i in 0..<model.params.count { sum += Double(model.params[i]) * Double(1 + i % 7) }
        let c = try collective.allreduceMaxMin(sum)
        if c.max != c.min { throw RunError.trainersDiverged(step: stepIndex, low: c.min, high: c.max) }
    }

    func writeCheckpoint(_ source: BatchSource, phaseStep: Int) throws {
        // Sharded optimizer state is gathered on trainer 0 (every trainer takes part).
        let fullOptimizer = try reducer?.gatherOptimizer(optimizer, layout: model.layout) ?? optimizer
        guard let directory else { return }
        var fields: [(String, JSON)] = [("step", JSON(stepIndex)), ("phase", .string(source.phase.rawValue)),
                                       ("phase_step", JSON(phaseStep)), ("policy_version", JSON(version)),
                                       ("time", JSON(runTime)), ("seed", JSON(settings.run.seed)), ("config", settings.json)]
        if source.phase == .rl { fields.append(("rl_step", JSON(phaseStep))) }
        let extra = source.checkpoint()
        fields += extra.fields
        let t0 = monotonicSeconds()
        let bytes = try directory.writeCheckpoint(step: stepIndex, model: model, optimizer: fullOptimizer, state: .object(fields),
                                                  keep: settings.run.checkpointKeep, extras: extra.files.merging(tokenizerFiles) { own, _ in own },
                                                  dtype: settings.run.checkpointDType, progress: { [console] in console.status($0) },
                                                  between: { try self.peers?.poll() })
        console.line(String(format: "checkpoint %@/%@ (%.1f MB in %.1f s)", directory.checkpointsPath as NSString,
                            Checkpoint.name(step: stepIndex) as NSString, Double(bytes) / 1e6, monotonicSeconds() - t0))
    }

    func writeReport() {
        guard let directory else { return }
        let html = Report.html(title: title, lines: lines, notes: notes)
        try? directory.write(Data(html.utf8), named: "report.html")
    }

    /// The step's progress line: the phase's step count, a few metrics, and the time left
    /// in the phase as this process has run it (right after a resume too).
    func showProgress(_ source: BatchSource, _ s: Int, _ m: StepMetrics) {
        let clock = PhaseClock(start: phaseStart.time, startStep: phaseStart.step)
        let left = clock.leftText(done: s + 1, total: source.steps, now: monotonicSeconds()) as NSString
        let skipped = (m.stats.skipped ? "  (skipped: non-finite loss or gradient)" : "") as NSString
        let final = s + 1 == source.steps
        switch source.phase {
        case .warmstart:
            console.status(String(format: "warm start %d/%d  %@  answer log-prob %.3f%@", s + 1, source.steps, left, m.stats.logprobMean, skipped),
                           final: final)
        case .rl:
            let eval = m.evalSuccess.map { String(format: "  eval %.3f", $0) } ?? ""
            console.status(String(format: "rl step %d/%d  %@  reward %.3f%@  loss %.4f  tokens/s %.0f%@", s + 1, source.steps, left,
                                  m.rewardMean ?? 0, eval as NSString, m.stats.loss, m.tokensPerS, skipped), final: final)
        case .offline:
            console.status(String(format: "offline step %d/%d  %@  loss %.4f  log-prob %.4f  grad_norm %.3f  lr %.2e  trie_ratio %.2f  tokens/s %.0f%@",
                                  s + 1, source.steps, left, m.stats.loss, m.stats.logprobMean, m.stats.gradNorm, m.stats.lr, m.trieRatio, m.tokensPerS, skipped),
                           final: final)
        }
    }
}
