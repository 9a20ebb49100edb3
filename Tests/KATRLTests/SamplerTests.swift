import XCTest
import KATModel
import KATSupport
@testable import KATRL

/// A small model of `family`: GPT-2, or Llama/Qwen2 with 4 query heads and 2 key-value heads.
func samplerModel(_ family: ModelFamily = .gpt2) throws -> any LanguageModel {
    let m: any LanguageModel
    switch family {
    case .gpt2: m = try GPT2(config: GPT2Config(vocabSize: 260, nPositions: 64, nEmbd: 32, nLayer: 2, nHead: 4))
    case .llama, .qwen2:
        m = try Llama(config: LlamaConfig(family: family, vocabSize: 260, nPositions: 64, nEmbd: 32, nLayer: 2, nHead: 4, nKVHead: 2,
                                          intermediateSize: 48, ropeTheta: 100, tieWordEmbeddings: family == .qwen2))
    }
    m.initialize(seed: 5)
    // Peaked distributions, not uniform ones (the Llama init is 0.02 where GPT-2's residual
    // projections are smaller, so it takes a larger factor).
    let factor: Float = family == .gpt2 ? 3 : 15
    for t in m.layout.tensors where !t.name.hasSuffix("norm.weight") {
        for i in t.offset..<(t.offset + t.count) { m.params[i] *= factor }
    }
    return m
}

final class SamplerTests: XCTestCase {
    /// The log-probs and entropies the sampler records equal those of a full forward over
    /// each finished sequence, branches included, for every model family.
    func testRecordedLogprobsEqualAFullForward() throws {
      for family in ModelFamily.allCases {
        let m = try samplerModel(family)
        let s = Sampler(model: m, seed: 3)
        var cfg = SamplingConfig()
        cfg.temperature = 0.8; cfg.maxNewTokens = 12; cfg.branchPoints = [3, 6]; cfg.branchFactor = 2
        cfg.stopTokens = [257]
        let prompt: [Int32] = [256, 72, 105, 33, 258]
        let (row, logits) = try s.prefill(prompt)
        let outs = try s.generate(from: row, logits: logits, streams: 2, config: cfg)
        XCTAssertGreaterThanOrEqual(outs.count, 2)
        for o in outs {
            let seq = (prompt + o.tokens.map(\.token)).map(Int.init)
            let full = m.forward(try PackedBatch(sequences: [seq], vocabSize: 260, maxPositions: 64), temperature: 0.8)
            for (k, t) in o.tokens.enumerated() {
                // Two float32 paths (scalar cache attention vs sgemm): ~1e-6 apart on
                // values of O(1-10); 1e-4 is a wide margin that still catches a wrong row.
                XCTAssertEqual(t.logprob, full.logprobs[prompt.count + k], accuracy: 1e-4, "\(family)")
                XCTAssertEqual(t.entropy, full.entropies[prompt.count + k], accuracy: 1e-4, "\(family)")
            }
        }
        XCTAssertEqual(outs.count, 8, "\(family): 2 streams forking twice into 2 give 8 leaves unless some stopped early")
        // Some tokens are far from certain, so a wrong position or head would show.
        XCTAssertGreaterThan(outs.flatMap(\.tokens).map(\.entropy).max() ?? 0, 0.5, "\(family)")
      }
    }

    /// Step by step, the next-token logits with one shared prompt cache equal those of
    /// separate caches that each prefill the prompt, for every model family.
    func testSharedPrefixCacheEqualsUnshared() throws {
      for family in ModelFamily.allCases {
        let m = try samplerModel(family)
        var rng = SplitMix64(seed: 9)
        let prompt: [Int32] = [256, 10, 20, 30, 40, 258]
        let answers: [[Int32]] = (0..<4).map { _ in (0..<7).map { _ in Int32(rng.next() % 256) } }
        let shared = KVCache(model: m)
        _ = try shared.extend(tokens: prompt, parents: prompt.indices.map { Int32($0) - 1 }, outputs: [])
        var last = [Int32](repeating: Int32(prompt.count - 1), count: 4)
        let separate = answers.map { _ in KVCache(model: m) }
        var sepLast = [Int32](repeating: 0, count: 4)
        for (k, c) in separate.enumerated() {
            _ = try c.extend(tokens: prompt, parents: prompt.indices.map { Int32($0) - 1 }, outputs: [])
            sepLast[k] = Int32(prompt.count - 1)
        }
        for step in 0..<7 {
            let sharedLogits = try shared.extend(tokens: answers.map { $0[step] }, parents: last, outputs: [0, 1, 2, 3])
            let base = Int32(shared.count - 4)
            last = (0..<4).map { base + Int32($0) }
            for k in 0..<4 {
                let own = try separate[k].extend(tokens: [answers[k][step]], parents: [sepLast[k]], outputs: [0])
                sepLast[k] = Int32(separate[k].count - 1)
                // The same rows in the same order: identical maths, so identical floats
                // up to sgemm blocking over a different row count (~1e-6).
                for j in 0..<260 { XCTAssertEqual(sharedLogits[k * 260 + j], own[j], accuracy: 1e-4, "\(family) step \(step) stream \(k)") }
            }
        }
        XCTAssertEqual(shared.count, prompt.count + 28)
        XCTAssertEqual(separate.reduce(0) { $0 + $1.count }, 4 * (prompt.count + 7))
      }
    }

    func testTopPAndGreedy() throws {
        let s = Sampler(model: try samplerModel(), seed: 1)
        let logp: [Float] = [log(0.5), log(0.3), log(0.15), log(0.05)]
        var cfg = SamplingConfig()
        cfg.greedy = true
        XCTAssertEqual(s.pick(logp, config: cfg), 0)
        cfg.greedy = false; cfg.topP = 0.7
        var seen = Set<Int32>()
        for _ in 0..<400 { seen.insert(s.pick(logp, config: cfg)) }
        XCTAssertEqual(seen, [0, 1], "top-p 0.7 keeps the two most likely tokens")
        cfg.topP = 1
        seen = []
        for _ in 0..<2000 { seen.insert(s.pick(logp, config: cfg)) }
        XCTAssertEqual(seen, [0, 1, 2, 3])
    }

    /// Draws made while the logits arrive in vocabulary slices (a reservoir of one) follow
    /// pi_tau: over 40000 draws from 7 slices of a 700-token distribution, every slice's and
    /// every likely token's frequency is within 5 standard deviations of its probability,
    /// and the recorded logit is the drawn token's.
    func testDrawsOverSlicesFollowTheSoftmax() {
        var rng = SplitMix64(seed: 21)
        let v = 700, width = 100, draws = 40000
        let z: [Float] = (0..<v).map { i in i % 97 == 5 ? 3 : Float(rng.nextDouble() * 4 - 2) }
        let scale: Float = 1 / 0.7
        let mx = Double(z.max() ?? 0) * Double(scale)
        let w = z.map { exp(Double($0) * Double(scale) - mx) }
        let p = w.map { $0 / w.reduce(0, +) }
        var counts = [Int](repeating: 0, count: v)
        z.withUnsafeBufferPointer { zb in
            guard let base = zb.baseAddress else { return }
            for _ in 0..<draws {
                var total = SoftmaxSummary(), pick = TileDraw()
                for start in stride(from: 0, to: v, by: width) {
                    let part = SoftmaxSummary(base + start, count: width, scale: scale)
                    total.merge(part)
                    pick.add(base + start, width: width, start: start, scale: scale, part: part, total: total, greedy: false, rng: &rng)
                }
                XCTAssertEqual(pick.logit, z[pick.token] * scale)
                counts[pick.token] += 1
            }
        }
        func check(_ tokens: [Int], _ name: String) {
            let q = tokens.reduce(0) { $0 + p[$1] }, seen = Double(tokens.reduce(0) { $0 + counts[$1] })
            let sigma = (Double(draws) * q * (1 - q)).squareRoot()
            XCTAssertLessThan(abs(seen - Double(draws) * q), 5 * sigma + 1, "\(name): \(seen) draws, expected \(Double(draws) * q)")
        }
        for start in stride(from: 0, to: v, by: width) { check(Array(start..<(start + width)), "slice at \(start)") }
        for t in 0..<v where t % 97 == 5 { check([t], "token \(t)") }
    }

    /// A top-p draw picks only from the smallest set of most likely tokens whose mass
    /// reaches p, and spreads over it: for a peaked distribution and for a nearly flat one
    /// (a nucleus of thousands, where the candidates' threshold has to fall).
    func testTopPDrawsFromTheNucleusOnly() {
        var rng = SplitMix64(seed: 23)
        for flat in [false, true] {
            let v = 3000
            let z: [Float] = (0..<v).map { _ in flat ? Float(rng.nextDouble() * 1e-3) : Float(rng.nextGaussian() * 3) }
            let w = z.map { exp(Double($0)) }, total = w.reduce(0, +)
            let order = z.indices.sorted { z[$0] > z[$1] }
            var nucleus = Set<Int>(), mass = 0.0
            for i in order where mass < 0.9 { nucleus.insert(i); mass += w[i] / total }
            var cfg = SamplingConfig()
            cfg.topP = 0.9
            var seen = Set<Int>()
            for _ in 0..<3000 {
                let t = Int(Sampler.pick(z, config: cfg, rng: &rng))
                XCTAssertTrue(nucleus.contains(t), "flat \(flat): token \(t) is outside the nucleus of \(nucleus.count)")
                seen.insert(t)
            }
            XCTAssertGreaterThan(seen.count, min(nucleus.count, 3000) / 3, "flat \(flat): draws spread over the nucleus")
        }
    }

    /// Partial rollouts: a generation whose weights change after k decode steps gives the
    /// same tokens, log-probs and entropies as decoding k steps with the old weights and then
    /// continuing the same samples (same random generators) from a fresh prefill of prompt
    /// and prefix with the new weights; every token records the version that sampled it (the
    /// token drawn at step k with the old weights keeps the old version). Every model family.
    func testNewWeightsMidGenerationEqualPrefixThenFreshPrefill() throws {
      for family in ModelFamily.allCases {
        var cfg = SamplingConfig()
        cfg.temperature = 0.9; cfg.maxNewTokens = 12; cfg.stopTokens = [257]
        let prompts: [[Int32]] = [[256, 72, 105, 33, 258], [256, 40, 41, 258]]
        let k = 4, oldVersion = 3, newVersion = 4
        let old = try samplerModel(family), new = try samplerModel(family)
        var noise = SplitMix64(seed: 21)
        for i in 0..<new.params.count { new.params[i] *= Float(0.5 + noise.nextDouble()) }
        func starts(_ s: Sampler) throws -> [Sampler.GenerationStart] {
            try prompts.enumerated().map { (g, p) in
                let (row, logits) = try s.prefill(p)
                return Sampler.GenerationStart(row: row, logits: logits, streams: 3, seed: UInt64(40 + g))
            }
        }

        // The weights change in place after step k.
        let live = try samplerModel(family)
        let swapped = Sampler(model: live, seed: 1)
        swapped.version = oldVersion
        var calls = 0
        swapped.betweenSteps = { step in
            calls += 1
            guard step == k else { return .proceed }
            live.params.pointer.update(from: new.params.pointer, count: new.params.count)
            return .newWeights(version: newVersion)
        }
        let got = try swapped.generate(starts: try starts(swapped), config: cfg)

        // k steps with the old weights; then a fresh cache with the new weights.
        let before = Sampler(model: old, seed: 1)
        before.version = oldVersion
        let first = try before.decode(before.streams(try starts(before), config: cfg), origins: prompts.count, config: cfg, maxSteps: k)
        let after = Sampler(model: new, seed: 1)
        after.version = newVersion
        var rest = first.live
        XCTAssertFalse(rest.isEmpty, "\(family): some samples outlive step \(k)")
        for i in rest.indices {
            let p = try after.prefill(prompts[rest[i].origin])
            rest[i].last = try after.prefill(rest[i].tokens.map(\.token), parent: p.row).row
        }
        let second = try after.decode(rest, origins: prompts.count, config: cfg)
        // With the old weights throughout: the same samples would differ after step k.
        let unchanged = Sampler(model: old, seed: 1)
        unchanged.version = oldVersion
        let oldOnly = try unchanged.generate(starts: try starts(unchanged), config: cfg)

        var compared = 0, differsFromOld = false
        for g in prompts.indices {
            let expected = first.finished[g] + second.finished[g]
            XCTAssertEqual(got[g].map { $0.tokens.map(\.token) }, expected.map { $0.tokens.map(\.token) }, "\(family)")
            guard got[g].count == expected.count else { continue }
            for (a, b) in zip(got[g], expected) {
                for (j, (x, y)) in zip(a.tokens, b.tokens).enumerated() {
                    // The cache of the swapped run is recomputed in one prefill of every
                    // row; the reference prefills prompt and prefix separately: the same
                    // float32 sums grouped differently, ~1e-6 apart on log-probs of O(1-10).
                    XCTAssertEqual(x.logprob, y.logprob, accuracy: 1e-4, "\(family) group \(g) token \(j)")
                    XCTAssertEqual(x.entropy, y.entropy, accuracy: 1e-4, "\(family) group \(g) token \(j)")
                    XCTAssertEqual(x.version, j <= k ? oldVersion : newVersion, "\(family) token \(j)")
                    XCTAssertEqual(y.version, x.version)
                    compared += 1
                }
                if let o = oldOnly[g].first(where: { $0.tokens.prefix(k + 1).map(\.token) == a.tokens.prefix(k + 1).map(\.token) }),
                   zip(o.tokens, a.tokens).dropFirst(k + 1).contains(where: { abs($0.logprob - $1.logprob) > 1e-3 }) {
                    differsFromOld = true
                }
            }
        }
        XCTAssertGreaterThan(compared, 6 * (k + 2), "\(family): most samples run past the change")
        XCTAssertTrue(differsFromOld, "\(family): the new weights change what is sampled after step \(k)")
        XCTAssertGreaterThan(calls, k, "\(family): the hook runs after every step")
      }
    }
}
