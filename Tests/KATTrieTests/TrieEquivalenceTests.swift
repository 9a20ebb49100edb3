import XCTest
import KATModel
import KATSupport
import KATRL
@testable import KATTrie

/// Seeded random trajectory sets of the shapes agentic RL produces.
struct TrajectoryFactory {
    var rng: SplitMix64
    let vocab: Int
    var next = 0

    init(seed: UInt64, vocab: Int) { rng = SplitMix64(seed: seed); self.vocab = vocab }

    mutating func tokens(_ n: Int) -> [Int32] { (0..<n).map { _ in Int32(rng.next() % UInt64(vocab)) } }
    mutating func uniform(_ lo: Double, _ hi: Double) -> Double { lo + (hi - lo) * rng.nextDouble() }

    /// A trajectory with loss on positions >= promptLen, behaviour log-probs drawn far
    /// enough from anything the model gives that some ratios leave the clip range.
    mutating func make(_ toks: [Int32], promptLen: Int, group: String, onPolicy: Bool = false) -> Trajectory {
        var mask = [UInt8](repeating: 0, count: toks.count)
        for k in max(1, promptLen)..<max(max(1, promptLen), toks.count) { mask[k] = 1 }
        let lp: [Float]? = onPolicy ? nil : (0..<toks.count).map { mask[$0] == 1 ? Float(uniform(-5, -0.5)) : .nan }
        next += 1
        return Trajectory(id: "t\(next)", group: group, tokens: toks, lossMask: mask, logprobs: lp,
                          reward: uniform(0, 1), advantage: uniform(-2, 2), entropy: uniform(0.1, 3))
    }

    /// Groups sharing a prompt, one-token responses among them.
    mutating func groups() -> [Trajectory] {
        var out: [Trajectory] = []
        for g in 0..<2 {
            let prompt = tokens(5 + Int(rng.next() % 5))
            for k in 0..<4 {
                let len = k == 0 ? 1 : 2 + Int(rng.next() % 6)
                out.append(make(prompt + tokens(len), promptLen: prompt.count, group: "g\(g)", onPolicy: k == 3))
            }
        }
        return out
    }

    /// Multi-turn: each call re-sends the growing history; loss on the newest action.
    mutating func multiTurn() -> [Trajectory] {
        var out: [Trajectory] = []
        var history = tokens(6)
        for _ in 0..<4 {
            let action = tokens(3), observation = tokens(2)
            out.append(make(history + action, promptLen: history.count, group: "agent"))
            history += action + observation
        }
        return out
    }

    /// Mid-answer branching, identical duplicates, a prefix of another trajectory, and a
    /// shared token that is prompt in one trajectory and answer in another.
    mutating func branching() -> [Trajectory] {
        let prompt = tokens(4), stem = tokens(5)
        var out: [Trajectory] = []
        let a = prompt + stem + tokens(4), b = prompt + stem + tokens(3), c = prompt + Array(stem.prefix(2)) + tokens(4)
        out.append(make(a, promptLen: prompt.count, group: "tree"))
        out.append(make(b, promptLen: prompt.count, group: "tree"))
        out.append(make(c, promptLen: prompt.count, group: "tree"))
        out.append(make(a, promptLen: prompt.count, group: "tree"))                    // duplicate of a
        out.append(make(Array(a.prefix(7)), promptLen: prompt.count, group: "tree"))  // prefix of a
        out.append(make(b, promptLen: prompt.count + 3, group: "tree2"))              // different mask on shared tokens
        out.append(make(tokens(1) + tokens(1), promptLen: 1, group: "tiny"))
        return out
    }
}

/// Asserts every parameter tensor's gradient matches the expected one within `tol` of that
/// tensor's largest expected entry. Two orders of the same fp32 sums differ by ~1e-6 of
/// that scale; a missing or double-counted term differs by O(1) of it.
func assertGradientsClose(_ got: [Float], _ expected: [Float], _ layout: any ParameterTable, tol: Float = 1e-4,
                          _ what: String, file: StaticString = #filePath, line: UInt = #line) {
    for t in layout.tensors {
        let range = t.offset..<(t.offset + t.count)
        let scale = range.reduce(Float(0)) { max($0, abs(expected[$1])) }
        let worst = range.reduce(Float(0)) { max($0, abs(got[$1] - expected[$1])) }
        XCTAssertLessThanOrEqual(worst, tol * max(scale, 1e-6), "\(what): \(t.name) worst \(worst) scale \(scale)", file: file, line: line)
    }
}

/// The families the trie properties are checked for: GPT-2; Llama with grouped-query
/// attention (4 query heads, 2 key-value heads) and an untied head, rotary positions at
/// each row's depth; Qwen2 with its q/k/v biases and a tied head.
let trieTestFamilies: [ModelFamily] = [.gpt2, .llama, .qwen2]

/// A tiny model with weights large enough that log-probs vary and some ratios clip.
func trieTestModel(seed: UInt64, family: ModelFamily = .gpt2) throws -> any LanguageModel {
    let m: any LanguageModel
    switch family {
    case .gpt2: m = try GPT2(config: GPT2Config(vocabSize: 13, nPositions: 64, nEmbd: 16, nLayer: 2, nHead: 2))
    case .llama, .qwen2:
        // A small rotary base so every pair of the 4-wide heads turns noticeably over 20 positions.
        m = try Llama(config: LlamaConfig(family: family, vocabSize: 13, nPositions: 64, nEmbd: 16, nLayer: 2, nHead: 4, nKVHead: 2,
                                          intermediateSize: 24, ropeTheta: 50, tieWordEmbeddings: family == .qwen2))
    }
    m.initialize(seed: seed)
    // Larger weights than the initialisation so log-probs vary and some ratios clip.
    for i in 0..<m.params.count { m.params[i] *= 10 }
    for t in m.layout.tensors where (t.name.contains("ln_") || t.name.contains("norm")) && t.name.hasSuffix("weight") {
        for i in 0..<t.count { m.params[t.offset + i] = 1 }
    }
    return m
}

final class TrieEquivalenceTests: XCTestCase {
    func model(seed: UInt64, family: ModelFamily = .gpt2) throws -> any LanguageModel { try trieTestModel(seed: seed, family: family) }

    /// Trains each trajectory as its own flat sequence, written out plainly: the reference.
    func flatLossAndGradient(_ m: any LanguageModel, _ trajs: [Trajectory], _ adv: [Double], _ cfg: PolicyLossConfig, tau: Float = 1) throws -> (Double, [Float], Int) {
        let norm = LossNormaliser(trajs)
        m.zeroGrad()
        var loss = 0.0, clipped = 0
        for (s, t) in trajs.enumerated() {
            let batch = try PackedBatch(sequences: [t.tokens.map(Int.init)], vocabSize: 13, maxPositions: 64)
            let lp = m.forward(batch, temperature: tau).logprobs
            var d = [Float](repeating: 0, count: t.tokens.count)
            let w = norm.weight(mode: cfg.mode, sequenceTokens: t.lossTokens)
            for k in 0..<t.tokens.count where t.lossMask[k] == 1 {
                let b = t.logprobs.map { Double($0[k]) } ?? Double(lp[k])
                let r = ppoClipTerm(l: Double(lp[k]), b: b, advantage: adv[s], epsLow: cfg.epsLow, epsHigh: cfg.epsHigh)
                loss += w * r.loss
                d[k] = Float(w * r.dl)
                if r.clipped { clipped += 1 }
            }
            m.backward(dlogprobs: d)
        }
        return (loss, m.grads.array, clipped)
    }

    func trieLossAndGradient(_ m: any LanguageModel, _ trajs: [Trajectory], _ adv: [Double], _ cfg: PolicyLossConfig, tau: Float = 1) throws -> (Double, [Float], Int, Trie) {
        let trie = Trie(trajs)
        m.zeroGrad()
        let lp = m.forward(try trie.packedBatch(config: m.config), temperature: tau).logprobs
        let r = policyLoss(trie: trie, trajectories: trajs, advantages: adv, logprobs: lp, config: cfg, normaliser: LossNormaliser(trajs))
        m.backward(dlogprobs: r.dlogprobs)
        return (r.loss, m.grads.array, r.clippedTokens, trie)
    }

    /// A trie gives the flat loss and the flat gradient, for every shape, loss mode and
    /// model family.
    func testTrieGivesTheFlatLossAndGradient() throws {
        for family in trieTestFamilies {
          for seed in UInt64(1)...4 {
            var f = TrajectoryFactory(seed: seed, vocab: 13)
            let sets: [(String, [Trajectory])] = [("groups", f.groups()), ("multi-turn", f.multiTurn()), ("branching", f.branching())]
            let all = sets.flatMap(\.1)
            for (name, trajs) in sets + [("all", all)] {
                let m = try model(seed: seed, family: family)
                let adv = trajs.map { $0.advantage ?? 0 }
                for mode in LossMode.allCases {
                  for tau: Float in name == "all" ? [1, 0.7] : [1] {
                    let cfg = PolicyLossConfig(mode: mode, epsLow: 0.2, epsHigh: 0.28)
                    let (fl, fg, fc) = try flatLossAndGradient(m, trajs, adv, cfg, tau: tau)
                    let (tl, tg, tc, trie) = try trieLossAndGradient(m, trajs, adv, cfg, tau: tau)
                    let what = "\(family) \(name) seed \(seed) \(mode.rawValue) tau \(tau)"
                    XCTAssertLessThan(trie.count, trie.flatTokens, "\(what): the trie shares nothing")
                    XCTAssertEqual(tc, fc, "\(what): clipped token counts")
                    // Sums of O(100) float32 terms of size O(1): 1e-5 relative is ~10x round-off.
                    XCTAssertEqual(tl, fl, accuracy: 1e-5 * max(1, abs(fl)), what)
                    // Shared rows add the branches' gradients once instead of per copy.
                    assertGradientsClose(tg, fg, m.layout, what)
                  }
                }
            }
          }
        }
    }

    /// Clipping is exercised: some tokens clip, not all.
    func testSomeTokensClip() throws {
        for family in trieTestFamilies {
            var f = TrajectoryFactory(seed: 9, vocab: 13)
            let trajs = f.groups() + f.branching()
            let m = try model(seed: 9, family: family)
            let (_, _, clipped, _) = try trieLossAndGradient(m, trajs, trajs.map { $0.advantage ?? 0 }, PolicyLossConfig())
            let total = trajs.reduce(0) { $0 + $1.lossTokens }
            XCTAssertGreaterThan(clipped, 0, "\(family)")
            XCTAssertLessThan(clipped, total, "\(family)")
        }
    }

    func testTrieLayoutIsPreOrderWithDepthPositions() {
        let t = Trie(sequences: [[1, 2, 3], [1, 2, 4], [1, 5], [1, 2, 3], [7]])
        XCTAssertEqual(t.tokens, [1, 2, 3, 4, 5, 7])
        XCTAssertEqual(t.parents, [-1, 0, 1, 1, 0, -1])
        XCTAssertEqual(t.depths, [0, 1, 2, 2, 1, 0])
        XCTAssertEqual(t.flatTokens, 12)
        XCTAssertEqual(t.terms(of: 0).count, 4)
        XCTAssertEqual(t.terms(of: 2).map(\.trajectory), [0, 3])
        XCTAssertEqual(t.endRow, [2, 3, 4, 2, 5])
    }
}

/// The loss and gradient of the whole trie in one pass: what shards and micro-batches must add up to.
func wholeTrie(_ m: any LanguageModel, _ trie: Trie, _ trajs: [Trajectory], _ adv: [Double], _ cfg: PolicyLossConfig,
               _ norm: LossNormaliser) throws -> (PolicyLossResult, [Float]) {
    m.zeroGrad()
    let whole = policyLoss(trie: trie, trajectories: trajs, advantages: adv,
                           logprobs: m.forward(try trie.packedBatch(config: m.config)).logprobs, config: cfg, normaliser: norm)
    m.backward(dlogprobs: whole.dlogprobs)
    return (whole, m.grads.array)
}

final class ShardTests: XCTestCase {
    /// The sum of K shards' losses and gradients is the whole trie's, for K = 1..4,
    /// including a batch whose single prompt subtree must be cut below branch points, for
    /// every model family.
    func testShardsSumToTheWholeTrie() throws {
      for family in trieTestFamilies {
        for seed in UInt64(1)...3 {
            var f = TrajectoryFactory(seed: seed, vocab: 13)
            let sets: [(String, [Trajectory])] = [("one prompt", f.branching().filter { $0.group == "tree" }),
                                                  ("mixed", f.groups() + f.multiTurn() + f.branching())]
            for (name, trajs) in sets {
                let m = try trieTestModel(seed: seed, family: family)
                let adv = trajs.map { $0.advantage ?? 0 }
                let cfg = PolicyLossConfig(mode: .seqMeanTokenMean)
                let norm = LossNormaliser(trajs)
                let trie = Trie(trajs)
                let (whole, wholeGrad) = try wholeTrie(m, trie, trajs, adv, cfg, norm)
                for k in 1...4 {
                    let shards = trie.shards(k)
                    XCTAssertEqual(shards.count, k)
                    // Every trie row is computed somewhere and carries its loss exactly once.
                    var carried = [Int](repeating: 0, count: trie.count)
                    for s in shards { for (i, r) in s.rowMap.enumerated() where s.carriesLoss[i] { carried[Int(r)] += 1 } }
                    XCTAssertEqual(carried, [Int](repeating: 1, count: trie.count), "\(name) k=\(k)")
                    m.zeroGrad()
                    var loss = 0.0, tokens = 0
                    for s in shards where s.count > 0 {
                        let lp = m.forward(try s.packedBatch(of: trie, config: m.config)).logprobs
                        let r = policyLoss(trie: trie, trajectories: trajs, advantages: adv, logprobs: lp, config: cfg, normaliser: norm, shard: s)
                        m.backward(dlogprobs: r.dlogprobs)
                        loss += r.loss
                        tokens += r.lossTokens
                    }
                    XCTAssertEqual(tokens, whole.lossTokens, "\(name) k=\(k)")
                    XCTAssertEqual(loss, whole.loss, accuracy: 1e-6 * max(1, abs(whole.loss)), "\(name) k=\(k)")
                    if name == "one prompt" && k > 1 {
                        XCTAssertGreaterThan(shards.reduce(0) { $0 + $1.count }, trie.count, "the single subtree was cut")
                    }
                    assertGradientsClose(m.grads.array, wholeGrad, m.layout, "\(family) \(name) k=\(k)")
                }
            }
        }
      }
    }
}

final class MicroBatchTests: XCTestCase {
    /// Micro-batches of at most max_tokens rows, over K shards, sum to the whole trie, for
    /// every model family.
    func testMicroBatchesSumToTheWholeTrie() throws {
      for family in trieTestFamilies {
        var f = TrajectoryFactory(seed: 21, vocab: 13)
        let trajs = f.groups() + f.multiTurn() + f.branching()
        let m = try trieTestModel(seed: 21, family: family)
        let adv = trajs.map { $0.advantage ?? 0 }
        let cfg = PolicyLossConfig(mode: .tokenMean)
        let norm = LossNormaliser(trajs)
        let trie = Trie(trajs)
        let (whole, wholeGrad) = try wholeTrie(m, trie, trajs, adv, cfg, norm)
        let longestPath = trajs.map(\.tokens.count).max()!
        for k in [1, 2, 3] {
            for maxTokens in [longestPath, 24, 40, 1000] {
                let parts = trie.shards(k, maxTokens: maxTokens)
                if maxTokens == 24 { XCTAssertGreaterThan(parts.reduce(0) { $0 + $1.count }, k, "the limit split shards into micro-batches") }
                m.zeroGrad()
                var loss = 0.0
                for shard in parts {
                    for mb in shard where mb.count > 0 {
                        // A micro-batch exceeds the limit only when it is one uncuttable path.
                        XCTAssertTrue(mb.count <= maxTokens || mb.parents.dropFirst().allSatisfy { $0 >= 0 }, "k=\(k) max=\(maxTokens)")
                        let lp = m.forward(try mb.packedBatch(of: trie, config: m.config)).logprobs
                        let r = policyLoss(trie: trie, trajectories: trajs, advantages: adv, logprobs: lp, config: cfg, normaliser: norm, shard: mb)
                        m.backward(dlogprobs: r.dlogprobs)
                        loss += r.loss
                    }
                }
                XCTAssertEqual(loss, whole.loss, accuracy: 1e-6 * max(1, abs(whole.loss)), "k=\(k) max=\(maxTokens)")
                assertGradientsClose(m.grads.array, wholeGrad, m.layout, "\(family) k=\(k) max=\(maxTokens)")
            }
        }
      }
    }
}

final class PolicyLossDerivativeTests: XCTestCase {
    /// dL/dl from policyLoss matches central differences of L in each row's log-prob, with
    /// clipping and the KL-to-reference penalty on, for every loss mode.
    func testDerivativeMatchesFiniteDifferences() {
        var f = TrajectoryFactory(seed: 5, vocab: 13)
        let trajs = f.branching()
        let trie = Trie(trajs)
        var rng = SplitMix64(seed: 8)
        let lp = (0..<trie.count).map { _ in Float(-3 * rng.nextDouble()) }
        let ref = (0..<trie.count).map { _ in Float(-3 * rng.nextDouble()) }
        let adv = trajs.map { $0.advantage ?? 0 }
        for mode in LossMode.allCases {
            let cfg = PolicyLossConfig(mode: mode, epsLow: 0.2, epsHigh: 0.28, klCoef: 0.3)
            let norm = LossNormaliser(trajs)
            let base = policyLoss(trie: trie, trajectories: trajs, advantages: adv, logprobs: lp, config: cfg, normaliser: norm, referenceLogprobs: ref)
            XCTAssertGreaterThan(base.klReferenceSum, 0)
            for u in 0..<trie.count {
                // A step of 1e-3 in float log-probs: the clip kinks are at |r - 1| = eps, and
                // a row whose ratio sits within 1e-3 of a kink is skipped (one-sided there).
                var up = lp, down = lp
                up[u] += 1e-3; down[u] -= 1e-3
                let lu = policyLoss(trie: trie, trajectories: trajs, advantages: adv, logprobs: up, config: cfg, normaliser: norm, referenceLogprobs: ref).loss
                let ld = policyLoss(trie: trie, trajectories: trajs, advantages: adv, logprobs: down, config: cfg, normaliser: norm, referenceLogprobs: ref).loss
                let nearKink = trie.terms(of: u).contains { term in
                    guard let b = trajs[Int(term.trajectory)].logprobs?[Int(term.position)], !b.isNaN else { return false }
                    let r = exp(Double(lp[u]) - Double(b))
                    return abs(r - 0.8) < 2e-3 || abs(r - 1.28) < 2e-3
                }
                if nearKink { continue }
                XCTAssertEqual(Double(base.dlogprobs[u]), (lu - ld) / 2e-3, accuracy: 1e-4 + 1e-3 * abs((lu - ld) / 2e-3), "\(mode) row \(u)")
            }
        }
    }
}
