import Foundation
import KATModel

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

    public init(model: GPT2, seed: UInt64) {
        cache = KVCache(model: model)
        rng = SplitMix64(seed: seed)
    }

    /// Picks a token from log-probs: argmax, or a draw from the top-p nucleus.
    func pick(_ logp: [Float], config: SamplingConfig) -> Int32 {
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
            return Int32(logp.indices.max { logp[$0] < logp[$1] }!)
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
        return Int32(kept.last!)
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
        struct Stream { var tokens: [SampledToken]; var last: Int32; var logits: ArraySlice<Float> }
        let v = cache.model.config.vocabSize
        var live = (0..<max(1, streams)).map { _ in Stream(tokens: [], last: row, logits: logits[...]) }
        var done: [Continuation] = []
        let branchAt = Set(config.branchPoints)
        while !live.isEmpty {
            var next: [Stream] = []
            var newTokens: [Int32] = [], newParents: [Int32] = []
            for var s in live {
                let (logp, h) = s.logits.withUnsafeBufferPointer { distribution($0, temperature: config.temperature) }
                let tok = pick(logp, config: config)
                s.tokens.append(SampledToken(token: tok, logprob: logp[Int(tok)], entropy: h))
                newTokens.append(tok)
                newParents.append(s.last)
                next.append(s)
            }
            let logitsAll = try cache.extend(tokens: newTokens, parents: newParents, outputs: Array(0..<newTokens.count))
            let base = Int32(cache.count - newTokens.count)
            live = []
            for (k, var s) in next.enumerated() {
                s.last = base + Int32(k)
                let tok = s.tokens.last!.token
                if config.stopTokens.contains(tok) || s.tokens.count >= config.maxNewTokens {
                    done.append(Continuation(tokens: s.tokens, lastRow: s.last, stopped: config.stopTokens.contains(tok)))
                    continue
                }
                s.logits = logitsAll[(k * v)..<((k + 1) * v)]
                let copies = branchAt.contains(s.tokens.count) ? max(1, config.branchFactor) : 1
                for _ in 0..<copies { live.append(s) }
            }
        }
        return done
    }
}
