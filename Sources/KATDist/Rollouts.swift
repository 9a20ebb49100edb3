import Foundation
import KATEnv
import KATModel
import KATRL
import KATSupport
import KATTrie

extension RunError {
    /// `data.task` names no built-in task.
    static func unknownTask(_ name: String) -> RunError {
        .settings(key: "data.task", reason: "\"\(name)\" is not a built-in task (\(builtinTaskNames.joined(separator: ", ")))")
    }
}

/// The environments of an online run: a built-in task or an external command.
struct EnvironmentSource {
    let task: Task?
    /// "task code", "environment python3 env.py".
    let name: String
    let make: () -> Environment

    init(_ settings: RunSettings) throws(RunError) {
        let turns = settings.rollout.turns
        switch settings.data {
        case let .task(taskName):
            guard let t = builtinTask(taskName) else { throw RunError.unknownTask(taskName) }
            task = t
            name = "task \(taskName)"
            make = { t.makeEnvironment(maxTurns: turns) }
        case let .external(cmd):
            task = nil
            name = "environment \(cmd)"
            let timeout = settings.envTimeout
            make = { ExternalEnvironment(command: cmd, timeout: timeout) }
        case .trajectories:
            throw .settings(key: "data.trajectories", reason: "offline training has no environment")
        }
    }
}

/// Generates the groups of a step with the model's current weights. A group's prompt and
/// samples depend on the run seed, the step and the group's index only (each sample draws
/// from its own generator), so any rank generating it gets the same group up to the float
/// round-off of a different batch shape.
final class GroupGenerator {
    let worker: RolloutWorker
    let seed: UInt64
    let trainPrompts: UInt64

    init(model: any LanguageModel, settings: RunSettings, environments: EnvironmentSource) {
        seed = UInt64(settings.run.seed)
        worker = RolloutWorker(model: model, seed: seed &+ 1, config: settings.rollout, makeEnvironment: environments.make)
        trainPrompts = UInt64(environments.task?.promptCount(split: "train") ?? Int(Int32.max))
    }

    /// The groups `indices` of step `step`, decoded together, tagged with `version`.
    /// - Parameter names: group ids (default "s<step>-g<index>").
    func generate(step s: Int, indices: [Int], version: Int, names: [String]? = nil) throws -> [[Trajectory]] {
        let requests = indices.enumerated().map { (k, g) -> RolloutWorker.GroupRequest in
            var mix = SplitMix64(seed: seed &* 0x100000001B3 &+ UInt64(s) &* 0x9E3779B97F4A7C15 &+ UInt64(g))
            let prompt = mix.next() % trainPrompts
            let id = names?[k] ?? "s\(s)-g\(g)"
            return RolloutWorker.GroupRequest(seed: prompt, split: "train", groupID: id, idPrefix: id, policyVersion: version,
                                              sampleSeed: mix.next())
        }
        return try worker.rolloutGroups(requests)
    }
}

/// Held-out evaluation: greedy episodes on the test split, the prompts shared out over the
/// trainers and the tallies summed.
final class Evaluator {
    let worker: RolloutWorker
    let prompts: Int

    init(model: any LanguageModel, settings: RunSettings, environments: EnvironmentSource) {
        worker = RolloutWorker(model: model, seed: UInt64(settings.run.seed) &+ 2, config: settings.rollout,
                               makeEnvironment: environments.make)
        prompts = settings.run.evalPrompts
    }

    /// Share of held-out prompts solved (full reward) and their mean reward.
    func evaluate(_ collective: Collective) throws -> (success: Double, reward: Double) {
        let mine = try worker.evaluate(seeds: stride(from: collective.rank, to: prompts, by: collective.size))
        var tally = [Double(mine.solved), mine.rewardSum]
        try collective.allreduceSum(&tally)
        return (tally[0] / Double(prompts), tally[1] / Double(prompts))
    }
}
