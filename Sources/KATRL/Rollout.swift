import Foundation
import KATModel
import KATEnv
import KATSupport
import KATTrie

/// Rollout settings (the `rollout.*` config keys).
public struct RolloutConfig: Sendable {
    public var groupSize = 8
    public var temperature: Float = 1
    public var topP: Float = 1
    public var maxNewTokens = 32
    public var turns = 1
    public var branchFactor = 1
    public var branchPoints: [Int] = []
    /// Partial rollouts: a rollout rank takes new weights between decode steps of an
    /// unfinished episode (else only between groups). Acted on by the runtime.
    public var partial = true
    public init() {}
}

/// A generation stopped mid-way by `Sampler.betweenSteps` (a rollout rank told to stop):
/// the groups being generated are given up, their `episodes` counted as unfinished.
public struct GenerationInterrupted: Error, Sendable {
    public var episodes: Int
}

/// An episode's result for evaluation.
public struct EpisodeResult: Sendable {
    public var reward: Double
    public var text: String
}

/// Generates tree-shaped groups of trajectories: the prompt is prefilled once for the
/// group, samples fork at the branch points, and each sample runs its own episode (turns
/// continue from its own cache rows).
public final class RolloutWorker {
    public let sampler: Sampler
    public let makeEnvironment: () -> Environment
    public var config: RolloutConfig
    /// Episodes cut short because the next turn would not fit the model's context; they
    /// are trained with the reward earned so far.
    public private(set) var truncatedEpisodes = 0
    /// Episodes abandoned because their environment failed (the failure is not counted
    /// as a reward; the sample is left out of its group).
    public private(set) var abandonedEpisodes = 0

    /// What made each abandoned episode fail.
    public private(set) var failures: [String] = []

    /// The counters and failures since the last call, which resets them.
    public func takeEpisodeCounts() -> (truncated: Int, abandoned: Int, failures: [String]) {
        defer { truncatedEpisodes = 0; abandonedEpisodes = 0; failures = [] }
        return (truncatedEpisodes, abandonedEpisodes, failures)
    }

    /// Runs `body`; an environment failure that does not end the run abandons the episode
    /// (nil), counted; one that ends the run is thrown.
    func episode<T>(_ body: () throws -> T) throws -> T? {
        do { return try body() } catch let e as EnvironmentError where !e.endsTheRun {
            abandonedEpisodes += 1
            failures.append(e.description)
            return nil
        }
    }

    /// Turns prompts and observations into tokens and sampled answers into text.
    public let tokenizer: any Tokenizer

    public init(model: any LanguageModel, seed: UInt64, config: RolloutConfig, tokenizer: any Tokenizer = ByteTokenizer(),
                makeEnvironment: @escaping () -> Environment) {
        sampler = Sampler(model: model, seed: seed)
        self.config = config
        self.tokenizer = tokenizer
        self.makeEnvironment = makeEnvironment
    }

    var samplingConfig: SamplingConfig {
        var s = SamplingConfig()
        s.temperature = config.temperature
        s.topP = config.topP
        s.maxNewTokens = config.maxNewTokens
        s.stopTokens = tokenizer.stopTokens
        return s
    }

    func promptTokens(_ prompt: String) -> [Int32] { tokenizer.promptTokens(prompt) }

    /// Room left under n_positions for an observation and the next answer.
    func fits(_ length: Int) -> Bool { length + config.maxNewTokens < sampler.cache.model.config.nPositions }

    /// One group to roll out: the prompt's seed and split, names, the policy version, and
    /// the seed of the samples' random draws.
    public struct GroupRequest {
        public var seed: UInt64
        public var split: String
        public var groupID: String
        public var idPrefix: String
        public var policyVersion: Int
        public var sampleSeed: UInt64
        public init(seed: UInt64, split: String, groupID: String, idPrefix: String, policyVersion: Int, sampleSeed: UInt64) {
            self.seed = seed; self.split = split; self.groupID = groupID; self.idPrefix = idPrefix
            self.policyVersion = policyVersion; self.sampleSeed = sampleSeed
        }
    }

    /// One group for the prompt of `seed`: up to `groupSize` trajectories.
    public func rolloutGroup(seed: UInt64, split: String, groupID: String, policyVersion: Int, idPrefix: String) throws -> [Trajectory] {
        try rolloutGroups([GroupRequest(seed: seed, split: split, groupID: groupID, idPrefix: idPrefix, policyVersion: policyVersion,
                                        sampleSeed: sampler.rng.next())])[0]
    }

    /// Several groups at once: every prompt is prefilled once, and the first turns of all
    /// samples of all groups are decoded together, one cache call per token. Later turns
    /// continue each sample from its own cache rows.
    /// - Throws: `GenerationInterrupted` when `sampler.betweenSteps` stopped a decoding
    ///   (every episode of the requests is given up).
    public func rolloutGroups(_ requests: [GroupRequest]) throws -> [[Trajectory]] {
        sampler.cache.reset()
        // The weights the prompts are prefilled with; partial rollouts may change them
        // between decode steps (each token records its version).
        sampler.version = requests.first?.policyVersion ?? sampler.version
        let interrupted = GenerationInterrupted(episodes: requests.count * config.groupSize)
        // Every episode starts with its own reset, so that episodes never interleave on
        // an environment process: first each group's prompt, then each sample's episode.
        var prompts: [[Int32]?] = [], starts: [Sampler.GenerationStart] = []
        let forks = config.branchPoints.filter { $0 < config.maxNewTokens }.count
        let fanOut = Int(pow(Double(max(1, config.branchFactor)), Double(forks)))
        let streams = max(1, config.groupSize / max(1, fanOut))
        for req in requests {
            guard let prompt = try episode({ try makeEnvironment().reset(seed: req.seed, split: req.split) }) else {
                // The group's every episode is lost with its prompt.
                abandonedEpisodes += max(0, config.groupSize - 1)
                prompts.append(nil)
                continue
            }
            let ptoks = promptTokens(prompt)
            guard fits(ptoks.count) else {
                throw EnvironmentError.promptTooLong(source: "prompt of seed \(req.seed)", tokens: ptoks.count, limit: sampler.cache.model.config.nPositions)
            }
            let (row, logits) = try sampler.prefill(ptoks)
            prompts.append(ptoks)
            starts.append(Sampler.GenerationStart(row: row, logits: logits, streams: streams, seed: req.sampleSeed))
        }
        var cfg = samplingConfig
        cfg.branchPoints = config.branchPoints
        cfg.branchFactor = config.branchFactor
        var leavesPerGroup = try sampler.generate(starts: starts, config: cfg)[...]
        if sampler.unfinished > 0 { throw interrupted }
        var out: [[Trajectory]] = []
        for (g, req) in requests.enumerated() {
            guard let prompt = prompts[g] else { out.append([]); continue }
            let leaves = leavesPerGroup.removeFirst()
            var group: [Trajectory] = []
            var turnSeed = SplitMix64(seed: req.sampleSeed ^ 0x5EED)
            for (k, leaf) in leaves.prefix(config.groupSize).enumerated() {
                let seed = turnSeed.next()
                guard let t = try episode({ try runEpisode(req, k: k, prompt: prompt, first: leaf, turnSeed: seed) }) else { continue }
                if sampler.unfinished > 0 { throw interrupted }
                group.append(t)
            }
            out.append(group)
        }
        return out
    }

    /// One sample's episode: its first answer was decoded with the group; later turns
    /// continue from its own cache rows.
    func runEpisode(_ req: GroupRequest, k: Int, prompt: [Int32], first leaf: Continuation, turnSeed seed: UInt64) throws -> Trajectory {
        let env = makeEnvironment()
        _ = try env.reset(seed: req.seed, split: req.split)
        var turnSeed = SplitMix64(seed: seed)
        var tokens = prompt, mask = [UInt8](repeating: 0, count: prompt.count)
        var lps = [Float](repeating: .nan, count: prompt.count)
        // Per position: the behaviour entropy where the mask is 1, NaN elsewhere.
        var ents = [Float](repeating: .nan, count: prompt.count)
        // Per position: the policy version that sampled the token where the mask is 1, -1 elsewhere.
        var versions = [Int](repeating: -1, count: prompt.count)
        var reward = 0.0
        var cont = leaf
        var turn = 0
        while true {
            turn += 1
            for t in cont.tokens {
                tokens.append(t.token); mask.append(1); lps.append(t.logprob); ents.append(t.entropy); versions.append(t.version)
            }
            let reply = try env.step(action: tokenizer.actionText(cont.tokens.map(\.token)))
            reward += reply.reward
            if reply.done || turn >= config.turns { break }
            let obs = tokenizer.observationTokens(reply.observation)
            guard fits(tokens.count + obs.count) else {
                truncatedEpisodes += 1
                break
            }
            let (r2, l2) = try sampler.prefill(obs, parent: cont.lastRow)
            tokens += obs; mask += [UInt8](repeating: 0, count: obs.count); lps += [Float](repeating: .nan, count: obs.count)
            ents += [Float](repeating: .nan, count: obs.count)
            versions += [Int](repeating: -1, count: obs.count)
            let next = try sampler.generate(starts: [Sampler.GenerationStart(row: r2, logits: l2, streams: 1, seed: turnSeed.next())],
                                            config: samplingConfig)
            // Stopped mid-turn: the caller gives the episode up.
            guard let c = next.first?.first, sampler.unfinished == 0 else { break }
            cont = c
        }
        let answer = ents.indices.filter { mask[$0] == 1 }.map { ents[$0] }
        let h = answer.isEmpty ? 0 : Double(answer.reduce(0, +)) / Double(answer.count)
        // A trajectory's policy version is its oldest token's (its lag counts from there).
        let oldest = versions.filter { $0 >= 0 }.min() ?? req.policyVersion
        return Trajectory(id: "\(req.idPrefix)-\(k)", group: req.groupID, tokens: tokens, lossMask: mask, logprobs: lps,
                          reward: reward, entropy: h, policyVersion: oldest, versions: versions, entropies: ents,
                          source: "rollout \(req.idPrefix)-\(k)")
    }

    /// Greedy episodes on the held-out prompts `seeds` of `split`.
    /// - Returns: how many reached full reward (1), and the sum of their rewards.
    public func evaluate(seeds: some Sequence<Int>, split: String = "test") throws -> (solved: Int, rewardSum: Double) {
        var solved = 0, total = 0.0
        for i in seeds {
            // An abandoned episode counts as unsolved with no reward.
            guard let r = try episode({ try greedyEpisode(seed: UInt64(i), split: split) }) else { continue }
            total += r.reward
            if r.reward >= 1 - 1e-9 { solved += 1 }
        }
        return (solved, total)
    }

    /// One greedy episode (evaluation).
    public func greedyEpisode(seed: UInt64, split: String) throws -> EpisodeResult {
        sampler.cache.reset()
        let env = makeEnvironment()
        let ptoks = promptTokens(try env.reset(seed: seed, split: split))
        var (row, logits) = try sampler.prefill(ptoks)
        var cfg = samplingConfig
        cfg.greedy = true
        var reward = 0.0, text = "", length = ptoks.count, turn = 0
        while true {
            turn += 1
            let cont = try sampler.generate(from: row, logits: logits, streams: 1, config: cfg)[0]
            let action = tokenizer.actionText(cont.tokens.map(\.token))
            text += (text.isEmpty ? "" : " | ") + action
            length += cont.tokens.count
            let reply = try env.step(action: action)
            reward += reply.reward
            if reply.done || turn >= config.turns { break }
            let obs = tokenizer.observationTokens(reply.observation)
            guard fits(length + obs.count) else { break }
            (row, logits) = try sampler.prefill(obs, parent: cont.lastRow)
            length += obs.count
        }
        return EpisodeResult(reward: reward, text: text)
    }
}
