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
    /// The model's tokenizer: turns the environments' text into tokens and answers back into text.
    let tokenizer: any Tokenizer

    /// - Parameter vocabSize: the model's vocabulary, which must cover the tokenizer's ids.
    init(_ settings: RunSettings, vocabSize: Int) throws(RunError) {
        tokenizer = try settings.tokenizer(vocabSize: vocabSize)
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
            let pool = ExternalEnvironmentPool(command: cmd, timeout: settings.envTimeout, workers: settings.envWorkers,
                                               guardian: settings.environmentGuardian)
            make = { pool.environment() }
        case .trajectories:
            throw .settings(key: "data.trajectories", reason: "offline training has no environment")
        }
    }
}

extension EnvironmentSource {
    /// Checks before anything is computed that episodes fit the model's context: a prompt
    /// (BOS, its tokens, the separator) plus `rollout.max_new_tokens`, and for a built-in task every
    /// prompt of both splits and every warm-start example.
    /// - Throws: `RunError.settings` naming the keys in conflict.
    func checkFits(contextLength p: Int, settings: RunSettings) throws(RunError) {
        let answer = settings.rollout.maxNewTokens
        guard answer + tokenizer.promptTokens("").count < p else {
            throw .settings(key: "rollout.max_new_tokens", reason: "\(answer) new tokens plus a prompt do not fit model.n_positions (\(p))")
        }
        try checkTurns(prompt: tokenizer.promptTokens("").count, contextLength: p, settings: settings)
        guard let task else { return }
        var longestPrompt = 0, longestExample = 0
        for split in ["train", "test"] {
            for i in 0..<task.promptCount(split: split) {
                let r = task.reference(seed: UInt64(i), split: split)
                let f = task.flawedDemonstration(seed: UInt64(i), split: split)
                let prompt = tokenizer.promptTokens(r.prompt).count
                longestPrompt = max(longestPrompt, prompt)
                longestExample = max(longestExample, prompt + max(tokenizer.answerTokens(r.answer).count,
                                                                  tokenizer.answerTokens(f.answer).count))
            }
        }
        if longestPrompt + answer > p {
            throw .settings(key: "rollout.max_new_tokens", reason: "the longest prompt of data.task \(task.name) (\(longestPrompt) tokens) plus \(answer) new tokens exceed model.n_positions (\(p))")
        }
        try checkTurns(prompt: longestPrompt, contextLength: p, settings: settings)
        if settings.warmStart.steps > 0, longestExample > p {
            throw .settings(key: "warmstart.steps", reason: "the longest warm-start example of data.task \(task.name) (\(longestExample) tokens) exceeds model.n_positions (\(p))")
        }
    }
}

extension EnvironmentSource {
    /// Episodes of `rollout.turns` turns whose every answer and observation were a single
    /// token would still not fit: refused. Episodes whose answers use the full
    /// `rollout.max_new_tokens` may be cut, which is allowed (and counted).
    func checkTurns(prompt: Int, contextLength p: Int, settings: RunSettings) throws(RunError) {
        let turns = settings.rollout.turns
        guard turns > 1 else { return }
        let observation = max(1, tokenizer.observationTokens("").count)
        let shortest = prompt + turns + (turns - 1) * observation
        if shortest > p {
            throw .settings(key: "rollout.turns", reason: "\(turns) turns need at least \(shortest) positions even with one-token answers (prompt \(prompt) tokens), more than model.n_positions (\(p))")
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
        worker = RolloutWorker(model: model, seed: seed &+ 1, config: settings.rollout, tokenizer: environments.tokenizer,
                               makeEnvironment: environments.make)
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

    /// Episodes truncated by the context and abandoned since the last call; abandoned
    /// episodes are reported in one line on standard error, with the last failure.
    func takeEpisodeCounts() -> EpisodeCounts {
        let c = worker.takeEpisodeCounts()
        if let last = c.failures.last {
            let line = "kat-dist: rank \(LaunchEnvironment.worldRank): \(c.abandoned) episodes abandoned after environment failures; the last: \(last)\n"
            FileHandle.standardError.write(Data(line.utf8))
        }
        return EpisodeCounts(truncated: c.truncated, abandoned: c.abandoned)
    }
}

/// What one held-out evaluation measured.
struct EvaluationResult {
    /// Share of the held-out prompts solved (full reward) by greedy decoding, and their mean reward.
    var success: Double
    var reward: Double
    /// From k = rollout.group_size samples per prompt at the rollout temperature: the mean
    /// share of samples that solve their prompt (pass@1), and the share of prompts that at
    /// least one of the k solves (pass@k). nil when eval.pass_at_k is off.
    var passAt1: Double?
    var passAtK: Double?
}

/// Held-out evaluation: greedy episodes on the test split, and (with eval.pass_at_k) k
/// sampled episodes per prompt, the prompts shared out over the trainers and the tallies
/// summed. Samples draw from generators seeded by the run seed and the prompt, so every
/// evaluation of a run samples with the same random numbers.
final class Evaluator {
    let worker: RolloutWorker
    let prompts: Int
    let passAtK: Bool
    let seed: UInt64
    /// Prompts whose k samples are decoded together.
    static let promptsPerBatch = 16

    init(model: any LanguageModel, settings: RunSettings, environments: EnvironmentSource) {
        worker = RolloutWorker(model: model, seed: UInt64(settings.run.seed) &+ 2, config: settings.rollout,
                               tokenizer: environments.tokenizer, makeEnvironment: environments.make)
        prompts = settings.run.evalPrompts
        passAtK = settings.run.evalPassAtK
        seed = UInt64(settings.run.seed)
    }

    /// Greedy success and mean reward on the held-out prompts, and pass@1 / pass@k when
    /// on. `between` runs between episodes (the runtime's heartbeats); progress (this rank's
    /// share of the prompts, and the time left) goes to `console`.
    /// - Returns: nil when a stop was requested during the evaluation (it is cut short
    ///   and its partial result dropped, so that the run stops without waiting for it).
    func evaluate(_ collective: Collective, console: Console? = nil,
                  between: () throws -> Void = {}) throws -> EvaluationResult? {
        let mine = Array(stride(from: collective.rank, to: prompts, by: collective.size))
        let clock = PhaseClock(start: monotonicSeconds(), startStep: 0)
        var solved = 0, rewardSum = 0.0, done = 0, interrupted = 0.0
        var lastShown = monotonicSeconds()
        // Greedy episodes, then (with pass@k) the sampled ones: progress counts both.
        let total = mine.count * (passAtK ? 2 : 1)
        func show() {
            if done < total, monotonicSeconds() - lastShown > 1 {
                lastShown = monotonicSeconds()
                console?.status(String(format: "evaluating %d held-out prompts  %.0f%%  %@", prompts, 100 * Double(done) / Double(total),
                                       clock.leftText(done: done, total: total, now: monotonicSeconds()) as NSString))
            }
        }
        for seed in mine {
            try between()
            if Preemption.requested { interrupted = 1; break }
            let r = try worker.evaluate(seeds: [seed])
            solved += r.solved
            rewardSum += r.rewardSum
            done += 1
            show()
        }
        var sampledShare = 0.0, anySolved = 0.0
        if passAtK, interrupted == 0 {
            let k = worker.config.groupSize
            var chunk = mine[...]
            while !chunk.isEmpty {
                try between()
                if Preemption.requested { interrupted = 1; break }
                let part = chunk.prefix(Evaluator.promptsPerBatch)
                chunk = chunk.dropFirst(part.count)
                let requests = part.map { i -> RolloutWorker.GroupRequest in
                    var mix = SplitMix64(seed: seed &* 0x2545F4914F6CDD1D &+ UInt64(i) &* 0x9E3779B97F4A7C15 &+ 0xE7A1)
                    return RolloutWorker.GroupRequest(seed: UInt64(i), split: "test", groupID: "eval-\(i)", idPrefix: "eval-\(i)",
                                                      policyVersion: 0, sampleSeed: mix.next())
                }
                for group in try worker.rolloutGroups(requests) {
                    // An abandoned episode counts as unsolved.
                    let c = group.filter { ($0.reward ?? 0) >= 1 - 1e-9 }.count
                    sampledShare += Double(c) / Double(max(1, k))
                    if c > 0 { anySolved += 1 }
                }
                done += part.count
                show()
            }
            _ = worker.takeEpisodeCounts()
        }
        var tally = [Double(solved), rewardSum, interrupted, sampledShare, anySolved]
        try collective.allreduceSum(&tally)
        guard tally[2] == 0 else { return nil }
        let n = Double(prompts)
        let result = EvaluationResult(success: tally[0] / n, reward: tally[1] / n, passAt1: passAtK ? tally[3] / n : nil,
                                      passAtK: passAtK ? tally[4] / n : nil)
        let sampled = result.passAtK.map { String(format: ", pass@%d %.3f", worker.config.groupSize, $0) } ?? ""
        console?.status(String(format: "evaluated %d held-out prompts in %@: success %.3f, mean reward %.3f%@", prompts,
                               PhaseClock.duration(monotonicSeconds() - clock.start) as NSString, result.success, result.reward,
                               sampled as NSString), final: true)
        return result
    }
}
