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
    /// The policy version of the weights that sampled it (`Sampler.version` at the draw).
    public var version: Int

    public init(token: Int32, logprob: Float, entropy: Float, version: Int = 0) {
        self.token = token; self.logprob = logprob; self.entropy = entropy; self.version = version
    }
}

/// What a decoding continues with after a step (`Sampler.betweenSteps`).
public enum DecodeAction: Sendable, Equatable {
    /// The same weights.
    case proceed
    /// The model's weights were replaced (in place) by those of policy `version`: the
    /// cache is recomputed with them before the next step.
    case newWeights(version: Int)
    /// Stop now: the unfinished samples are given up (`Sampler.unfinished` counts them).
    case stop
}

/// One sample being decoded: the start it belongs to, its tokens so far (in the cache),
/// the cache row of the last of them (the start's row before the first), its own random
/// generator, and the token drawn next (sampled, not yet in the cache).
public struct DecodingStream: Sendable {
    public var origin: Int
    public var tokens: [SampledToken]
    public var last: Int32
    public var rng: SplitMix64
    public var next: SampledToken
    public init(origin: Int, tokens: [SampledToken], last: Int32, rng: SplitMix64, next: SampledToken) {
        self.origin = origin; self.tokens = tokens; self.last = last; self.rng = rng; self.next = next
    }
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

/// One draw from pi_tau = softmax(z / tau) made while the logits arrive in vocabulary
/// slices, without holding a row: weighted reservoir sampling with a reservoir of one. Each
/// slice replaces the current pick with probability (its mass) / (the mass of every slice
/// so far), then a token within it is drawn in proportion to its probability; the pick
/// after the last slice is distributed as pi_tau. Greedy keeps the first largest logit.
struct TileDraw {
    /// The token picked so far (-1 before the first slice) and its scaled logit z / tau.
    var token = -1
    var logit: Float = 0

    /// Takes slice `z` (`width` logits from vocabulary entry `start`), whose summary is
    /// `part`, after `total` (the summary of every slice so far, this one merged in).
    mutating func add(_ z: UnsafePointer<Float>, width: Int, start: Int, scale: Float, part: SoftmaxSummary, total: SoftmaxSummary,
                      greedy: Bool, rng: inout SplitMix64) {
        if greedy {
            let i = LogitScan.argmax(z, count: width)
            if token < 0 || z[i] * scale > logit { token = start + i; logit = z[i] * scale }
            return
        }
        if token >= 0, Float(rng.nextDouble()) >= total.share(of: part) { return }
        let u = Float(rng.nextDouble()) * part.sum
        let i = LogitScan.sampleIndex(z, count: width, scale: scale, logSumExp: part.max, u: u) ?? LogitScan.argmax(z, count: width)
        token = start + i
        logit = z[i] * scale
    }
}

/// Samples continuations with a KV cache; the prompt is prefilled once and shared, and
/// branches share their parent's cache.
///
/// Each decoding step appends every live sample's token in one `KVCache.extend` call (one
/// sgemm per weight for all of them) and draws the next tokens while the output head
/// streams its logits by vocabulary tiles: a running softmax summary gives each row's
/// log-sum-exp and entropy, and weighted reservoir sampling over the tiles (a tile replaces
/// the current pick with probability its share of the mass seen so far, then a token
/// within it is drawn in proportion) draws exactly from pi_tau without holding a row.
/// Top-p below 1 needs a row's every logit and takes whole rows a few at a time.
public final class Sampler {
    public let cache: KVCache
    public var rng: SplitMix64
    /// The policy version of the model's weights, with which every cached row was
    /// computed; each draw records it.
    public var version = 0
    /// Called after every decode step of `generate` (the last one included) with the steps
    /// done so far in that call: partial rollouts take new weights mid-episode here, or
    /// stop. Nil: decode to the end with the same weights.
    public var betweenSteps: ((_ stepsDone: Int) -> DecodeAction)?
    /// Samples the last `generate` gave up unfinished because `betweenSteps` said stop (0
    /// when it ran to the end).
    public private(set) var unfinished = 0
    /// Candidate indices of a top-p draw, reused.
    var nucleusScratch: [Int32] = []

    public init(model: any LanguageModel, seed: UInt64) {
        cache = KVCache(model: model)
        rng = SplitMix64(seed: seed)
    }

    /// Picks a token from log-probs: argmax, or a draw from the top-p nucleus.
    func pick(_ logp: [Float], config: SamplingConfig) -> Int32 { Sampler.pick(logp, config: config, rng: &rng) }

    static func pick(_ logp: [Float], config: SamplingConfig, rng: inout SplitMix64) -> Int32 {
        var scratch: [Int32] = []
        return logp.withUnsafeBufferPointer { b -> Int32 in
            guard let z = b.baseAddress else { return 0 }
            let summary = SoftmaxSummary(z, count: b.count, scale: 1)
            return draw(z, count: b.count, scale: 1, summary: summary, config: config, rng: &rng, scratch: &scratch).token
        }
    }

    /// One draw from a whole row of logits z (V) at scale 1/tau, whose softmax summary is
    /// given: the argmax (greedy), a draw from the top-p nucleus, or from the full pi_tau.
    /// The log-prob and entropy are the full distribution's.
    static func draw(_ z: UnsafePointer<Float>, count v: Int, scale: Float, summary: SoftmaxSummary, config: SamplingConfig,
                     rng: inout SplitMix64, scratch: inout [Int32]) -> SampledToken {
        let lse = summary.logSumExp
        let tok: Int
        if config.greedy {
            tok = LogitScan.argmax(z, count: v)
        } else if config.topP >= 1 {
            let u = Float(rng.nextDouble())
            tok = LogitScan.sampleIndex(z, count: v, scale: scale, logSumExp: lse, u: u) ?? LogitScan.argmax(z, count: v)
        } else {
            tok = nucleus(z, count: v, scale: scale, logSumExp: lse, topP: config.topP, rng: &rng, scratch: &scratch)
        }
        return SampledToken(token: Int32(tok), logprob: z[tok] * scale - lse, entropy: summary.entropy)
    }

    /// A draw from the smallest set of most likely tokens whose mass reaches topP (ties by
    /// index). Only tokens above a probability threshold are sorted: the threshold starts
    /// at 1e-3 and falls by 64x until the tokens above it hold topP of the mass (they are
    /// then a prefix of the sorted order that contains the nucleus).
    static func nucleus(_ z: UnsafePointer<Float>, count v: Int, scale: Float, logSumExp lse: Float, topP: Float,
                        rng: inout SplitMix64, scratch: inout [Int32]) -> Int {
        if scratch.count < v { scratch = [Int32](repeating: 0, count: v) }
        var pmin: Float = 1e-3
        var k = 0
        while true {
            let threshold = pmin > 0 ? lse + logf(pmin) : -Float.infinity
            k = scratch.withUnsafeMutableBufferPointer { b in
                b.baseAddress.map { LogitScan.indices(atLeast: threshold, z, count: v, scale: scale, into: $0) } ?? 0
            }
            var mass = 0.0
            for i in 0..<k { mass += Foundation.exp(Double(z[Int(scratch[i])] * scale - lse)) }
            if mass >= Double(topP) || pmin == 0 { break }
            pmin = pmin > 1e-12 ? pmin / 64 : 0
        }
        var order = Array(scratch[0..<k])
        order.sort { z[Int($0)] != z[Int($1)] ? z[Int($0)] > z[Int($1)] : $0 < $1 }
        var kept = 0, mass = 0.0
        for i in order {
            kept += 1
            mass += Foundation.exp(Double(z[Int(i)] * scale - lse))
            if mass >= Double(topP) { break }
        }
        var u = rng.nextDouble() * mass
        for i in order.prefix(kept) {
            u -= Foundation.exp(Double(z[Int(i)] * scale - lse))
            if u <= 0 { return Int(i) }
        }
        return Int(order[max(0, kept - 1)])
    }

    /// Appends `tokens` as a chain under `parent` (-1: a new root) and returns the last
    /// row and its next-token logits.
    public func prefill(_ tokens: [Int32], parent: Int32 = -1) throws(ModelError) -> (row: Int32, logits: [Float]) {
        precondition(!tokens.isEmpty, "Sampler.prefill: no tokens")
        let base = Int32(cache.count)
        let parents = tokens.indices.map { $0 == 0 ? parent : base + Int32($0) - 1 }
        cache.reserveRows = 0
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
        let r = try decode(streams(starts, config: config), origins: starts.count, config: config, betweenSteps: betweenSteps)
        unfinished = r.stopped ? r.live.count : 0
        return r.finished
    }

    /// The samples of `starts` with their first tokens drawn from the starts' logits.
    public func streams(_ starts: [GenerationStart], config: SamplingConfig) -> [DecodingStream] {
        let v = cache.model.config.vocabSize
        let scale = 1 / config.temperature
        var live: [DecodingStream] = []
        for (k, st) in starts.enumerated() {
            var base = SplitMix64(seed: st.seed)
            let summary = st.logits.withUnsafeBufferPointer { b in b.baseAddress.map { SoftmaxSummary($0, count: v, scale: scale) } }
            for _ in 0..<max(1, st.streams) {
                var r = SplitMix64(seed: base.next())
                let first = st.logits.withUnsafeBufferPointer { b in
                    b.baseAddress.map { Sampler.draw($0, count: v, scale: scale, summary: summary ?? SoftmaxSummary(), config: config,
                                                     rng: &r, scratch: &nucleusScratch) }
                }
                guard var first else { continue }
                first.version = version
                live.append(DecodingStream(origin: k, tokens: [], last: st.row, rng: r, next: first))
            }
        }
        return live
    }

    /// Recomputes every cached row with the model's current weights: the rows are dropped
    /// and appended again in one `KVCache.extend` call (one prefill) with the same tokens
    /// and parents, so every row keeps its index, and each chain gets `reserveRows` free
    /// slots after it so that samples continue contiguously.
    public func recomputeCache(reserveRows: Int) throws(ModelError) {
        let tokens = cache.tokens, parents = cache.parents
        cache.reset()
        cache.reserveRows = reserveRows
        guard !tokens.isEmpty else { return }
        try cache.extend(tokens: tokens, parents: parents, outputs: [], tiling: .vocabularyTiles) { _ in }
    }

    /// Decodes `streams` (of starts `0..<origins`) until each ends or `maxSteps` decode steps
    /// were made. After every step (but the `maxSteps`-th) `betweenSteps` may install new weights (the cache is
    /// then recomputed, `version` set, and later draws record the new version; the token
    /// drawn before it keeps the old one, whose weights sampled it) or stop.
    /// - Returns: the finished continuations of each start, the samples still unfinished
    ///   (their state, to continue), and whether `betweenSteps` stopped the decoding.
    public func decode(_ streams: [DecodingStream], origins: Int, config: SamplingConfig, maxSteps: Int = .max,
                       betweenSteps: ((Int) -> DecodeAction)? = nil) throws(ModelError)
        -> (finished: [[Continuation]], live: [DecodingStream], stopped: Bool) {
        typealias Stream = DecodingStream
        let scale = 1 / config.temperature
        var live = streams
        var steps = 0
        var done = [[Continuation]](repeating: [], count: origins)
        let branchAt = Set(config.branchPoints)
        // Each chain keeps room for the rest of its sample, so its answer stays contiguous.
        cache.reserveRows = config.maxNewTokens
        let tiling: KVCache.HeadTiling = config.greedy || config.topP >= 1 ? .vocabularyTiles : .wholeRows
        // Reused from step to step.
        var newTokens: [Int32] = [], newParents: [Int32] = [], outputs: [Int] = []
        var drawStart: [Int] = [], drawRng: [SplitMix64] = [], summaries: [SoftmaxSummary] = []
        var picks: [TileDraw] = [], results: [SampledToken] = []
        var next: [Stream] = []
        while !live.isEmpty, steps < maxSteps {
            newTokens.removeAll(keepingCapacity: true); newParents.removeAll(keepingCapacity: true)
            outputs.removeAll(keepingCapacity: true); drawStart.removeAll(keepingCapacity: true); drawRng.removeAll(keepingCapacity: true)
            for k in live.indices {
                live[k].tokens.append(live[k].next)
                newTokens.append(live[k].next.token)
                newParents.append(live[k].last)
            }
            // The samples that go on, and the draws each makes: one, or one per branch.
            for k in live.indices {
                let tok = live[k].next.token
                if config.stopTokens.contains(tok) || live[k].tokens.count >= config.maxNewTokens { continue }
                outputs.append(k)
                drawStart.append(drawRng.count)
                if branchAt.contains(live[k].tokens.count), config.branchFactor > 1 {
                    for _ in 0..<config.branchFactor { drawRng.append(SplitMix64(seed: live[k].rng.next())) }
                } else {
                    drawRng.append(live[k].rng)
                }
            }
            drawStart.append(drawRng.count)
            summaries.removeAll(keepingCapacity: true); summaries.append(contentsOf: repeatElement(SoftmaxSummary(), count: outputs.count))
            picks.removeAll(keepingCapacity: true); picks.append(contentsOf: repeatElement(TileDraw(), count: drawRng.count))
            results.removeAll(keepingCapacity: true)
            try cache.extend(tokens: newTokens, parents: newParents, outputs: outputs, tiling: tiling) { tile in
                for r in 0..<tile.rows {
                    let o = tile.firstOutput + r, z = tile.logits + r * tile.width, w = tile.width
                    if tiling == .wholeRows {
                        let summary = SoftmaxSummary(z, count: w, scale: scale)
                        for d in drawStart[o]..<drawStart[o + 1] {
                            var t = Sampler.draw(z, count: w, scale: scale, summary: summary, config: config, rng: &drawRng[d],
                                                 scratch: &nucleusScratch)
                            t.version = version
                            results.append(t)
                        }
                        continue
                    }
                    let part = SoftmaxSummary(z, count: w, scale: scale)
                    summaries[o].merge(part)
                    for d in drawStart[o]..<drawStart[o + 1] {
                        picks[d].add(z, width: w, start: tile.vocabularyStart, scale: scale, part: part, total: summaries[o],
                                     greedy: config.greedy, rng: &drawRng[d])
                    }
                }
            }
            if tiling == .vocabularyTiles {
                for (o, _) in outputs.enumerated() {
                    let lse = summaries[o].logSumExp, h = summaries[o].entropy
                    for d in drawStart[o]..<drawStart[o + 1] {
                        results.append(SampledToken(token: Int32(picks[d].token), logprob: picks[d].logit - lse, entropy: h, version: version))
                    }
                }
            }
            let base = Int32(cache.count - newTokens.count)
            next.removeAll(keepingCapacity: true)
            var o = 0
            for (k, var s) in live.enumerated() {
                s.last = base + Int32(k)
                guard o < outputs.count, outputs[o] == k else {
                    done[s.origin].append(Continuation(tokens: s.tokens, lastRow: s.last, stopped: config.stopTokens.contains(s.next.token)))
                    continue
                }
                for d in drawStart[o]..<drawStart[o + 1] {
                    var child = s
                    child.rng = drawRng[d]
                    child.next = results[d]
                    next.append(child)
                }
                o += 1
            }
            swap(&live, &next)
            steps += 1
            // Also after the last step: later turns prefill from these rows with the
            // weights the hook leaves in the model, so the cache must match them.
            guard steps < maxSteps, let betweenSteps else { continue }
            switch betweenSteps(steps) {
            case .proceed: break
            case let .newWeights(v):
                try recomputeCache(reserveRows: config.maxNewTokens)
                version = v
            case .stop: return (done, live, true)
            }
        }
        return (done, live, false)
    }
}
