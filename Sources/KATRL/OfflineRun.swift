import Foundation
import KATModel
import KATTrie

/// Offline training in one process on a trajectories JSONL file (SPEC sections 4-8).
public final class OfflineRun {
    public let config: TrainConfig
    public let run: RunDirectory?
    public let model: GPT2
    public let step: TrainStep
    var data: OfflineData
    let log: (String) -> Void

    /// Reads and validates everything before the first step: config, model, the whole
    /// trajectory file, advantages. Nothing is trained on a half-read file.
    let stopRequested: () throws -> Bool
    var resumedState: JSON?

    public init(config: TrainConfig, runDirectory: String, role: TrainerRole = .single, isLeader: Bool = true, resume: String? = nil,
                stopRequested: @escaping () throws -> Bool = { preemptionRequested }, log: @escaping (String) -> Void) throws {
        self.stopRequested = stopRequested
        self.config = config
        self.log = log
        guard let path = config.string("data.trajectories") else {
            throw RunError(path: "config", reason: "offline training needs data.trajectories")
        }
        let m = try config.initialModel()
        model = m
        let trajs = try TrajectoryReader.read(path: path, vocabSize: m.config.vocabSize, maxPositions: m.config.nPositions)
        // Check the estimator's fields on the whole file up front.
        _ = try computeAdvantages(trajs, config: config.advantageConfig)
        data = OfflineData(trajectories: trajs, batchSize: config.int("batch.trajectories"), shuffle: config.bool("data.shuffle"),
                           seed: UInt64(config.int("seed")))
        let opt = Optimizer(config: config.optimizerConfig, layout: m.layout)
        step = TrainStep(model: m, optimizer: opt, loss: config.lossConfig, packing: config.string("data.packing") ?? "trie",
                         maxTokens: config.int("batch.max_tokens"), temperature: Float(config.double("rollout.temperature")),
                         minibatches: config.int("batch.minibatches"), ppoEpochs: config.int("loss.ppo_epochs"), role: role)
        if let spec = resume {
            let dir = try Checkpoint.choose(runDirectory: runDirectory, spec: spec, log: isLeader ? log : { _ in })
            let state = try Checkpoint.restore(dir, model: m, optimizer: opt)
            resumedState = state
            if let e = state["data"]?["epoch"]?.intValue, let p = state["data"]?["position"]?.intValue { data.seek(epoch: e, position: p) }
            run = isLeader ? try RunDirectory(resumeAt: runDirectory, step: state["step"]?.intValue ?? 0) : nil
        } else if isLeader {
            let r = try RunDirectory(newRunAt: runDirectory)
            try r.writeConfig(config.json)
            run = r
        } else {
            run = nil
        }
    }

    /// Runs every step, writes metrics, checkpoints, and the final checkpoint.
    /// - Returns: the metrics lines written.
    @discardableResult
    public func train() throws -> [JSON] {
        let total = config.int("steps")
        let start = monotonicSeconds()
        var version = resumedState?["policy_version"]?.intValue ?? 0
        let firstStep = resumedState?["step"]?.intValue ?? 0
        if resumedState != nil { log("resumed at step \(firstStep) (policy version \(version))") }
        let killAt = faultKillStep()
        var lines: [JSON] = []
        let every = config.int("checkpoint.every"), keep = config.int("checkpoint.keep"), flatEvery = config.int("check.flat_every")
        for s in firstStep..<total {
            let t0 = monotonicSeconds()
            let groups = data.nextBatch()
            let idx = groups.flatMap { $0 }
            let trajs = idx.map { data.trajectories[$0] }
            var next = 0
            let local = groups.map { g in g.map { _ in defer { next += 1 }; return next } }
            let adv = try computeAdvantages(trajs, config: config.advantageConfig)
            let tWait = monotonicSeconds() - t0
            var drift: Double?
            if flatEvery > 0, s % flatEvery == 0 {
                let g = local[0]
                drift = try step.drift(trajectories: g.map { trajs[$0] }, advantages: g.map { adv[$0] })
            }
            step.killMidStep = killAt == s + 1
            step.poisonGradient = faultNaNStep() == s + 1
            let stats = try step.run(trajectories: trajs, groups: local, advantages: adv, step: s, totalSteps: total)
            if config.bool("log.trained_ids") { run?.appendTrainedIDs(step: s + 1, ids: trajs.map(\.id)) }
            version += stats.updates
            let elapsed = monotonicSeconds() - t0
            var m = commonMetrics(step: s + 1, version: version, stats: stats, trajectories: trajs, advantages: adv,
                                  elapsed: elapsed, waitData: tWait, staleness: false)
            m[1] = ("time", JSON(monotonicSeconds() - start))
            m.append(("epoch", JSON(data.epoch)))
            if let drift { m.append(("trie_flat_drift", JSON(drift))) }
            let line = JSON.object(m)
            run?.appendMetrics(line)
            lines.append(line)
            log(String(format: "step %d/%d  loss %.4f  logprob %.4f  grad_norm %.3f  lr %.2e  trie_ratio %.2f  tokens/s %.0f%@",
                       s + 1, total, stats.loss, stats.logprobMean, stats.gradNorm, stats.lr,
                       Double(stats.tokensFlat) / Double(max(1, stats.tokensTrie)), Double(stats.tokensFlat) / elapsed,
                       (stats.skipped ? "  (skipped: non-finite loss or gradient)" : "") as NSString))
            if step.skippedInARow >= 5 {
                throw RunError(path: run?.path ?? "trainer", reason: "\(step.skippedInARow) updates in a row had a non-finite loss or gradient; stopping (lower optimizer.lr?)")
            }
            let isLast = s + 1 == total
            let stopNow = try stopRequested()
            if let run, isLast || stopNow || (every > 0 && (s + 1) % every == 0) {
                let state: JSON = ["step": JSON(s + 1), "policy_version": JSON(version),
                                   "data": ["epoch": JSON(data.epoch), "position": JSON(data.position)],
                                   "buffered": [], "seed": JSON(config.int("seed"))]
                try run.writeCheckpoint(step: s + 1, model: model, optimizer: step.optimizer, state: state, keep: keep)
                log("checkpoint \(run.checkpointsPath)/\(RunDirectory.checkpointName(step: s + 1))")
            }
            if stopNow && !isLast {
                log("stopping after step \(s + 1) on request (SIGUSR1); resume with --resume auto")
                break
            }
        }
        return lines
    }
}
