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

    init(model: GPT2, settings: RunSettings, environments: EnvironmentSource) {
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

    init(model: GPT2, settings: RunSettings, environments: EnvironmentSource) {
        worker = RolloutWorker(model: model, seed: UInt64(settings.run.seed) &+ 2, config: settings.rollout,
                               makeEnvironment: environments.make)
        prompts = settings.run.evalPrompts
    }

    /// Share of held-out prompts solved (full reward) and their mean reward. Progress (this
    /// rank's share of the prompts, and the time left) goes to `console`.
    func evaluate(_ collective: Collective, console: Console? = nil) throws -> (success: Double, reward: Double) {
        let mine = Array(stride(from: collective.rank, to: prompts, by: collective.size))
        let clock = PhaseClock(start: monotonicSeconds(), startStep: 0)
        // Episodes run one at a time, so evaluating in parts gives the same results.
        let part = max(1, mine.count / 20)
        var solved = 0, rewardSum = 0.0, done = 0
        while done < mine.count {
            let seeds = mine[done..<min(mine.count, done + part)]
            let r = try worker.evaluate(seeds: seeds)
            solved += r.solved
            rewardSum += r.rewardSum
            done += seeds.count
            if done < mine.count {
                console?.status(String(format: "evaluating %d held-out prompts  %.0f%%  %@", prompts, 100 * Double(done) / Double(mine.count),
                                       clock.leftText(done: done, total: mine.count, now: monotonicSeconds()) as NSString))
            }
        }
        var tally = [Double(solved), rewardSum]
        try collective.allreduceSum(&tally)
        let result = (success: tally[0] / Double(prompts), reward: tally[1] / Double(prompts))
        console?.status(String(format: "evaluated %d held-out prompts in %@: success %.3f, mean reward %.3f", prompts,
                               PhaseClock.duration(monotonicSeconds() - clock.start) as NSString, result.success, result.reward), final: true)
        return result
    }
}
