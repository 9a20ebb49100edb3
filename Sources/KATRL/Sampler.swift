import Foundation
import KATModel
import KATSupport

/// One generated token with what the behaviour policy said of it.
public struct SampledToken: Sendable, Equatable {
    public var token: Int32
    /// log pi_tau(token | root path), from the full distribution (top-p not reflected).
    public var logprob: Float
    /// Entropy of the full pi_tau at this position.
    public var entropy: Float
}

public struct SamplingConfig: Sendable {
    public var temperature: Float = 1
    public var topP: Float = 1
    public var maxNewTokens = 64
    /// Tokens that end a continuation (included in it).
    public var stopTokens: Set<Int32> = []
    /// Argmax instead of sampling (evaluation).
    public var greedy = false
    /// Answer depths at which every live continuation forks into `branchFactor`.
    public var branchPoints: [Int] = []
    public var branchFactor = 1
    public init() {}
}

/// A finished continuation: its tokens and the cache row of its last token.
public struct Continuation: Sendable {
    public var tokens: [SampledToken]
    public var lastRow: Int32
    /// Whether it ended on a stop token (else it hit maxNewTokens).
    public var stopped: Bool
}

/// log-probs, entropy and the sampling distribution of one logits row at temperature tau.
public func distribution(_ logits: UnsafeBufferPointer<Float>, temperature: Float) -> (logp: [Float], entropy: Float) {
    let inv = 1 / temperature
    var mx = -Float.infinity
    for z in logits { mx = max(mx, z * inv) }
    var sum: Double = 0
    for z in logits { sum += Double(Foundation.exp(z * inv - mx)) }
    let lse = mx + Float(Foundation.log(sum))
    var logp = [Float](repeating: 0, count: logits.count)
    var h: Double = 0
    for (i, z) in logits.enumerated() {
        let lp = z * inv - lse
        logp[i] = lp
        h -= Double(Foundation.exp(lp)) * Double(lp)
    }
    return (logp, Float(h))
}

/// Samples continuations with a KV cache; the prompt is prefilled once and shared, and
/// branches share their parent's cache.
public final class Sampler {
    public let cache: KVCache
    public var rng: SplitMix64

    public init(model: any LanguageModel, seed: UInt64) {
        cache = KVCache(model: model)
        rng = SplitMix64(seed: seed)
    }

    /// Picks a token from log-probs: argmax, or a draw from the top-p nucleus.
    func pick(_ logp: [Float], config: SamplingConfig) -> Int32 { Sampler.pick(logp, config: config, rng: &rng) }

    static func pick(_ logp: [Float], config: SamplingConfig, rng: inout SplitMix64) -> Int32 {
        if config.greedy {
            var best = 0
            for i in 1..<logp.count where logp[i] > logp[best] { best = i }
            return Int32(best)
        }
        if config.topP >= 1 {
            var u = rng.nextDouble()
            for (i, lp) in logp.enumerated() {
                u -= Double(Foundation.exp(lp))
                if u <= 0 { return Int32(i) }
            }
            return Int32(logp.indices.max { logp[$0] < logp[$1] } ?? 0)
        }
        let order = logp.indices.sorted { logp[$0] > logp[$1] }
        var kept: [Int] = [], mass = 0.0
        for i in order {
            kept.append(i)
            mass += Double(Foundation.exp(logp[i]))
            if mass >= Double(config.topP) { break }
        }
        var u = rng.nextDouble() * mass
        for i in kept {
            u -= Double(Foundation.exp(logp[i]))
            if u <= 0 { return Int32(i) }
        }
        return Int32(kept.last ?? 0)
    }

    /// Appends `tokens` as a chain under `parent` (-1: a new root) and returns the last
    /// row and its next-token logits.
    public func prefill(_ tokens: [Int32], parent: Int32 = -1) throws(ModelError) -> (row: Int32, logits: [Float]) {
        precondition(!tokens.isEmpty, "Sampler.prefill: no tokens")
        let base = Int32(cache.count)
        let parents = tokens.indices.map { $0 == 0 ? parent : base + Int32($0) - 1 }
        let logits = try cache.extend(tokens: tokens, parents: parents, outputs: [tokens.count - 1])
        return (base + Int32(tokens.count) - 1, logits)
    }

    /// Generates `streams` continuations from one row whose logits are given, forking at
    /// the branch points; every step extends all live continuations in one cache call.
    public func generate(from row: Int32, logits: [Float], streams: Int, config: SamplingConfig) throws(ModelError) -> [Continuation] {
        try generate(starts: [GenerationStart(row: row, logits: logits, streams: streams, seed: rng.next())], config: config)[0]
    }

    /// Where a batch of continuations starts: a cache row, its logits, how many samples,
    /// and the seed of their random draws.
    public struct GenerationStart {
        public var row: Int32
        public var logits: [Float]
        public var streams: Int
        public var seed: UInt64
        public init(row: Int32, logits: [Float], streams: Int, seed: UInt64) {
            self.row = row; self.logits = logits; self.streams = streams; self.seed = seed
        }
    }

    /// Generates from several starts at once (the groups of a step), all live samples
    /// extended in one cache call per token. Each sample draws from its own generator,
    /// seeded from its start's seed, so the result of a start does not depend on what else
    /// is generated beside it. Returns the continuations of each start.
    public func generate(starts: [GenerationStart], config: SamplingConfig) throws(ModelError) -> [[Continuation]] {
        struct Stream { var origin: Int; var tokens: [SampledToken]; var last: Int32; var logits: ArraySlice<Float>; var rng: SplitMix64 }
        let v = cache.model.config.vocabSize
        var live: [Stream] = []
        for (k, st) in starts.enumerated() {
            var base = SplitMix64(seed: st.seed)
            for _ in 0..<max(1, st.streams) {
                live.append(Stream(origin: k, tokens: [], last: st.row, logits: st.logits[...], rng: SplitMix64(seed: base.next())))
            }
        }
        var done = [[Continuation]](repeating: [], count: starts.count)
        let branchAt = Set(config.branchPoints)
        while !live.isEmpty {
            var newTokens: [Int32] = [], newParents: [Int32] = []
            for k in live.indices {
                let (logp, h) = live[k].logits.withUnsafeBufferPointer { distribution($0, temperature: config.temperature) }
                let tok = Sampler.pick(logp, config: config, rng: &live[k].rng)
                live[k].tokens.append(SampledToken(token: tok, logprob: logp[Int(tok)], entropy: h))
                newTokens.append(tok)
                newParents.append(live[k].last)
            }
            let logitsAll = try cache.extend(tokens: newTokens, parents: newParents, outputs: Array(0..<newTokens.count))
            let base = Int32(cache.count - newTokens.count)
            let current = live
            live = []
            for (k, var s) in current.enumerated() {
                s.last = base + Int32(k)
                let tok = newTokens[k]
                if config.stopTokens.contains(tok) || s.tokens.count >= config.maxNewTokens {
                    done[s.origin].append(Continuation(tokens: s.tokens, lastRow: s.last, stopped: config.stopTokens.contains(tok)))
                    continue
                }
                s.logits = logitsAll[(k * v)..<((k + 1) * v)]
                if branchAt.contains(s.tokens.count), config.branchFactor > 1 {
                    for _ in 0..<config.branchFactor {
                        var child = s
                        child.rng = SplitMix64(seed: s.rng.next())
                        live.append(child)
                    }
                } else {
                    live.append(s)
                }
            }
        }
        return done
    }
}
