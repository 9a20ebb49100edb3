import Foundation
import KATEnv
import KATModel
import KATRL
import KATSupport
import KATTrie

/// A step's batch as a source gathered it.
struct CollectedBatch {
    var trajectories: [Trajectory]
    /// Whole groups, as indices into `trajectories`.
    var groups: [[Int]]
    /// Advantages when the source fixes them (the warm start); nil: computed by the
    /// run's advantage estimator.
    var advantages: [Double]?
    /// Seconds spent gathering the batch.
    var waitSeconds = 0.0
    /// Trajectories dropped as stale while this batch was gathered, and their flat tokens.
    var droppedStale = 0
    var droppedStaleTokens = 0
    var generatedTokens: Int?
    var epoch: Int?
    /// Episodes cut by the context length, and abandoned for an environment failure,
    /// while this batch was generated.
    var episodes = EpisodeCounts()
    /// A stop was asked while the batch was awaited: there is no batch, the step is not taken.
    var interrupted = false
    /// Seconds the trainers (on average) waited with nothing to do, and spent generating
    /// rollouts themselves (multiplexing), while the batch was gathered.
    var idleSeconds = 0.0
    var generateSeconds = 0.0
    /// Groups of the batch the trainers generated themselves (multiplexing).
    var trainerGroups = 0
    /// Seconds rollout ranks were held back by admission control (mean over rollout
    /// ranks), as reported with the groups received for this batch.
    var throttledSeconds = 0.0
    /// Seconds rollout ranks were held back by back-pressure (mean over rollout ranks):
    /// as many groups waiting to be taken as they may send ahead.
    var backpressureSeconds = 0.0

    /// A batch of `list`'s groups (empty groups, whose every episode was abandoned, are left out).
    init(groups list: [[Trajectory]], advantages: [Double]? = nil) {
        var trajs: [Trajectory] = [], idx: [[Int]] = []
        for g in list where !g.isEmpty { idx.append(Array(trajs.count..<(trajs.count + g.count))); trajs += g }
        trajectories = trajs
        groups = idx
        self.advantages = advantages
    }
}

/// How many steps a phase runs and its learning rate at each.
struct PhaseSchedule {
    let steps: Int
    /// The optimizer's schedule over `steps`, or a constant rate.
    let optimizer: OptimizerConfig?
    let constant: Float

    /// The optimizer's warm-up and decay over the phase's steps.
    init(steps: Int, optimizer: OptimizerConfig) { self.steps = steps; self.optimizer = optimizer; constant = optimizer.lr }
    /// A constant learning rate.
    init(steps: Int, constant: Float) { self.steps = steps; optimizer = nil; self.constant = constant }

    /// The learning rate at the phase's step `step` (0-based).
    func learningRate(step: Int) -> Float { optimizer?.learningRate(step: step, totalSteps: steps) ?? constant }
}

/// Where the batches of one phase of a run come from. The trainer loop calls it at fixed
/// points of a step; nothing here calls back into the loop.
protocol BatchSource: AnyObject {
    var phase: Phase { get }
    var schedule: PhaseSchedule { get }
    /// Called once before the phase's first step (also after a resume) with the weights'
    /// version.
    func begin(version: Int) throws
    /// The batch of the phase's step `step`, sampled with weights of `version`.
    func collect(step: Int, version: Int) throws -> CollectedBatch
    /// Called between micro-batches of a step: keeps data moving while the step computes.
    func service() throws
    /// Called after each step with the weights' version, and whether the step changed them.
    /// - Returns: the bytes of weights this rank sent for the update.
    func stepDone(version: Int, updated: Bool) throws -> Int
    /// Called on every trainer before a checkpoint is written (a collective point).
    func prepareCheckpoint() throws
    /// State fields and files this source adds to a checkpoint (on the trainer that writes it).
    func checkpoint() -> (fields: [(String, JSON)], files: [String: Data])
    /// Restores what `checkpoint` saved, from the checkpoint's state and directory.
    func restore(state: JSON, directory: String) throws
    /// Called once when the run ends (also when it stops early).
    func finish() throws
    /// Lines for the end of the run, known only after `finish` (on every trainer).
    var finishNotes: [String] { get }
}

extension BatchSource {
    var steps: Int { schedule.steps }
    func begin(version: Int) throws {}
    func service() throws {}
    func stepDone(version: Int, updated: Bool) throws -> Int { 0 }
    func prepareCheckpoint() throws {}
    func checkpoint() -> (fields: [(String, JSON)], files: [String: Data]) { ([], [:]) }
    func restore(state: JSON, directory: String) throws {}
    func finish() throws {}
    var finishNotes: [String] { [] }
}

// MARK: - Warm start

/// The supervised warm start: a built-in task's reference answers (a share of them
/// flawed, as a weaker teacher writes) for training prompts, advantage 1, constant
/// learning rate. Every trainer draws the same batch from the same seeded generator.
final class WarmStartSource: BatchSource {
    let task: Task
    let config: WarmStartConfig
    var rng: SplitMix64
    let tokenizer: any Tokenizer

    init(task: Task, config: WarmStartConfig, seed: Int, tokenizer: any Tokenizer) {
        self.task = task
        self.config = config
        self.tokenizer = tokenizer
        rng = SplitMix64(seed: UInt64(seed) &+ 3)
    }

    var phase: Phase { .warmstart }
    var schedule: PhaseSchedule { PhaseSchedule(steps: config.steps, constant: config.lr) }

    func collect(step w: Int, version: Int) throws -> CollectedBatch {
        var trajs: [Trajectory] = []
        for k in 0..<config.batch {
            let seed = rng.next() % UInt64(task.promptCount(split: "train"))
            let ref = rng.nextDouble() < config.flawed ? task.flawedDemonstration(seed: seed, split: "train")
                                                       : task.reference(seed: seed, split: "train")
            let p = tokenizer.promptTokens(ref.prompt)
            let a = tokenizer.answerTokens(ref.answer)
            trajs.append(Trajectory(id: "w\(w)-\(k)", group: "w\(w)-\(k)", tokens: p + a,
                                    lossMask: [UInt8](repeating: 0, count: p.count) + [UInt8](repeating: 1, count: a.count),
                                    advantage: 1, source: "warm start"))
        }
        return CollectedBatch(groups: trajs.map { [$0] }, advantages: trajs.map { _ in 1 })
    }

    func checkpoint() -> (fields: [(String, JSON)], files: [String: Data]) { ([("rng", .string(String(rng.state)))], [:]) }

    func restore(state: JSON, directory: String) throws {
        guard let field = state["rng"], !field.isNull else { return }
        guard let r = field.stringValue.flatMap(UInt64.init) else {
            throw RunError.checkpoint(path: directory + "/state.json", reason: "field rng: must be the generator state as a decimal string, got \(field.serialized)")
        }
        rng.state = r
    }
}

// MARK: - Synchronous rollouts

/// Rollouts generated by the trainers themselves, between steps: each trainer generates
/// its share of the step's groups, and all trainers gather them (rank order restores the
/// group order). Rollouts a checkpoint carried over (buffered by rollout ranks before a
/// resume) are trained first, oldest first, under the staleness rule.
final class SynchronousRollouts: BatchSource {
    let generator: GroupGenerator
    let collective: Collective
    let prompts: Int
    let maxStaleness: Int
    let schedule: PhaseSchedule
    /// Groups carried over from a checkpoint, the same on every trainer.
    var carried = RolloutBuffer(capacity: Int.max)

    init(generator: GroupGenerator, collective: Collective, settings: RunSettings) {
        self.generator = generator
        self.collective = collective
        prompts = settings.prompts
        maxStaleness = settings.ranks.maxStaleness
        schedule = PhaseSchedule(steps: settings.run.steps, optimizer: settings.optimizer)
    }

    var phase: Phase { .rl }

    func collect(step s: Int, version: Int) throws -> CollectedBatch {
        let t0 = monotonicSeconds()
        let old = carried.take(prompts, version: version, maxStaleness: maxStaleness)
        let fresh = prompts - old.groups.count
        let n = collective.size
        let mine = try generator.generate(step: s, indices: Array(stride(from: collective.rank, to: fresh, by: n)), version: version)
        var perRank: [[[Trajectory]]] = []
        var counts = EpisodeCounts()
        let message = GroupsMessage.encode(mine, trailer: generator.takeEpisodeCounts())
        for (r, bytes) in try collective.allgather(bytes: message).enumerated() {
            do {
                let m = try GroupsMessage.decode(bytes, trailer: EpisodeCounts.self)
                perRank.append(m.groups)
                counts += m.trailer
            } catch {
                throw RunError.badMessage(rank: r, reason: "\(error)")
            }
        }
        var batch = CollectedBatch(groups: old.groups + (0..<fresh).map { perRank[$0 % n][$0 / n] })
        batch.episodes = counts
        batch.droppedStale = old.dropped.trajectories
        batch.droppedStaleTokens = old.dropped.tokens
        batch.waitSeconds = monotonicSeconds() - t0
        return batch
    }

    func checkpoint() -> (fields: [(String, JSON)], files: [String: Data]) {
        carried.isEmpty ? ([], [:]) : BufferedRollouts.checkpoint(carried.groups.map(\.trajectories))
    }

    func restore(state: JSON, directory: String) throws {
        for g in try BufferedRollouts.load(state: state, directory: directory) { carried.append(g) }
    }
}

// MARK: - Offline

/// A trajectories file, read whole and checked before the first step: whole groups in
/// file order up to `batch.trajectories` per step, epochs reshuffled by the seed.
final class OfflineSource: BatchSource {
    var data: OfflineData
    let schedule: PhaseSchedule

    init(trajectories: [Trajectory], settings: RunSettings) {
        data = OfflineData(trajectories: trajectories, batchSize: settings.offlineBatch, shuffle: settings.shuffle,
                           seed: UInt64(settings.run.seed))
        schedule = PhaseSchedule(steps: settings.run.steps, optimizer: settings.optimizer)
    }

    var phase: Phase { .offline }

    func collect(step: Int, version: Int) throws -> CollectedBatch {
        let t0 = monotonicSeconds()
        var batch = CollectedBatch(groups: data.nextBatch().map { g in g.map { data.trajectories[$0] } })
        batch.epoch = data.epoch
        batch.waitSeconds = monotonicSeconds() - t0
        return batch
    }

    func checkpoint() -> (fields: [(String, JSON)], files: [String: Data]) {
        ([("data", ["epoch": JSON(data.epoch), "position": JSON(data.position)])], [:])
    }

    func restore(state: JSON, directory: String) throws {
        guard let cursor = state["data"], !cursor.isNull else { return }
        guard let e = cursor["epoch"]?.intValue, let p = cursor["position"]?.intValue, e >= 0, p >= 0, p <= data.groups.count else {
            throw RunError.checkpoint(path: directory + "/state.json",
                                      reason: "field data: must be {\"epoch\": >= 0, \"position\": 0...\(data.groups.count)} for this file, got \(cursor.serialized)")
        }
        data.seek(epoch: e, position: p)
    }
}
