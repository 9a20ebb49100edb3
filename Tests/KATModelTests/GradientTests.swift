import XCTest
@testable import KATModel
import KATSupport

/// A small trie in depth-first pre-order plus a separate flat sequence:
///   0-1-2-3 ─┬─ 4-5 ─┬─ 6
///            │       └─ 7-8
///            └─ 9-10-11
///   12-13-14-15
let trieParents = [-1, 0, 1, 2, 3, 4, 5, 5, 7, 3, 9, 10, -1, 12, 13, 14]

func tinyModel(seed: UInt64, vocab: Int = 11, c: Int = 8, layers: Int = 2, heads: Int = 2, positions: Int = 16) throws -> GPT2 {
    let cfg = GPT2Config(vocabSize: vocab, nPositions: positions, nEmbd: c, nLayer: layers, nHead: heads,
                         bosTokenId: nil, eosTokenId: nil, sepTokenId: nil, padTokenId: nil)
    let m = try GPT2(config: cfg)
    // Weights far larger than GPT-2's init, so attention is peaked, LayerNorm gains matter
    // and GELU sees its non-linear range: a wrong term cannot hide behind near-zero values.
    var rng = SplitMix64(seed: seed)
    for i in 0..<m.params.count { m.params[i] = 0.5 * rng.nextGaussian() }
    for t in m.layout.tensors where t.name.contains("ln_") && t.name.hasSuffix("weight") {
        for i in 0..<t.count { m.params[t.offset + i] = 1 + 0.3 * rng.nextGaussian() }
    }
    return m
}

final class GradientTests: XCTestCase {
    func randomTokens(_ n: Int, vocab: Int, seed: UInt64) -> [Int] {
        var rng = SplitMix64(seed: seed)
        return (0..<n).map { _ in Int(rng.next() % UInt64(vocab)) }
    }

    /// The float32 forward agrees with the independent Float64 forward.
    func testFloat32ForwardMatchesFloat64Reference() throws {
        for tau in [1.0, 0.7] {
            let m = try tinyModel(seed: 3)
            let tokens = randomTokens(trieParents.count, vocab: 11, seed: 5)
            let batch = try PackedBatch(tokens: tokens, parents: trieParents, vocabSize: 11, maxPositions: 16)
            let out = m.forward(batch, temperature: Float(tau))
            let ref = ReferenceGPT2(m).forward(tokens: tokens, parents: trieParents, tau: tau)
            // Float32 carries ~7 digits; log-probs here are O(1-10) after ~20 sequential
            // float ops per layer, so 1e-4 absolute is ~100x the expected round-off.
            for u in 0..<tokens.count {
                XCTAssertEqual(Double(out.logprobs[u]), ref.logprobs[u], accuracy: 1e-4, "logprob row \(u) tau \(tau)")
                XCTAssertEqual(Double(out.entropies[u]), ref.entropies[u], accuracy: 1e-4, "entropy row \(u) tau \(tau)")
            }
            let logits = m.logits(rows: Array(0..<tokens.count))
            for u in 0..<tokens.count { for j in 0..<11 { XCTAssertEqual(Double(logits[u][j]), ref.logits[u][j], accuracy: 1e-4) } }
        }
    }

    /// Every parameter tensor's gradient (a sample of entries, plus each tensor's largest)
    /// agrees with central finite differences of the Float64 forward.
    func testBackwardMatchesFiniteDifferences() throws {
        let tau = 0.8
        let m = try tinyModel(seed: 11)
        let tokens = randomTokens(trieParents.count, vocab: 11, seed: 13)
        let batch = try PackedBatch(tokens: tokens, parents: trieParents, vocabSize: 11, maxPositions: 16)
        var rng = SplitMix64(seed: 17)
        // Loss = sum_u w_u * logprob_u with signed weights, so every row's term matters.
        let w = (0..<tokens.count).map { trieParents[$0] < 0 ? 0.0 : 2 * rng.nextDouble() - 1 }
        m.zeroGrad()
        m.forward(batch, temperature: Float(tau))
        m.backward(dlogprobs: w.map(Float.init))
        var ref = ReferenceGPT2(m)
        func loss(_ r: ReferenceGPT2) -> Double {
            let lp = r.forward(tokens: tokens, parents: trieParents, tau: tau).logprobs
            return zip(lp, w).reduce(0) { $0 + $1.0 * $1.1 }
        }
        // h = 1e-5 in Float64: truncation error ~h^2 |L'''| ~ 1e-10, round-off ~1e-16/h ~ 1e-11.
        let h = 1e-5
        var checked = 0
        for t in m.layout.tensors {
            var idx = (0..<5).map { _ in t.offset + Int(rng.next() % UInt64(t.count)) }
            let largest = (t.offset..<(t.offset + t.count)).max { abs(m.grads[$0]) < abs(m.grads[$1]) }!
            idx.append(largest)
            for i in idx {
                let saved = ref.p[i]
                ref.p[i] = saved + h
                let lp = loss(ref)
                ref.p[i] = saved - h
                let lm = loss(ref)
                ref.p[i] = saved
                let fd = (lp - lm) / (2 * h)
                let g = Double(m.grads[i])
                // The analytic gradient is float32: relative error ~1e-6 on values that sum
                // terms of size O(1). 1e-4 absolute plus 1e-3 relative leaves ~100x margin
                // and still catches any missing or wrongly scaled term (errors of O(|g|)).
                XCTAssertEqual(g, fd, accuracy: 1e-4 + 1e-3 * abs(fd), "\(t.name)[\(i - t.offset)]")
                checked += 1
            }
            // The sampled entries must include real signal (the largest entry is non-zero).
            XCTAssertGreaterThan(abs(m.grads[largest]), 1e-6, "\(t.name) has a zero gradient")
        }
        XCTAssertEqual(checked, m.layout.tensors.count * 6)
    }

    /// Tree attention is exactly "each token sees its root path": every trie row's log-prob
    /// equals that of the same token at the end of its root path packed as a flat sequence.
    func testTrieRowsEqualTheirFlatRootPaths() throws {
        let m = try tinyModel(seed: 23)
        let tokens = randomTokens(trieParents.count, vocab: 11, seed: 29)
        let batch = try PackedBatch(tokens: tokens, parents: trieParents, vocabSize: 11, maxPositions: 16)
        let trie = m.forward(batch).logprobs
        for u in 0..<tokens.count where trieParents[u] >= 0 {
            var path: [Int] = []
            var a = u
            while a >= 0 { path.append(tokens[a]); a = trieParents[a] }
            let flat = try PackedBatch(sequences: [path.reversed()], vocabSize: 11, maxPositions: 16)
            let lp = m.forward(flat).logprobs
            // Same maths on a different packing: only summation order differs in sgemm.
            XCTAssertEqual(trie[u], lp[path.count - 1], accuracy: 2e-5, "row \(u)")
        }
    }

    /// Backward accumulates: two backward passes give twice the gradient.
    func testBackwardAccumulates() throws {
        let m = try tinyModel(seed: 31)
        let batch = try PackedBatch(sequences: [randomTokens(9, vocab: 11, seed: 1)], vocabSize: 11, maxPositions: 16)
        let d = [Float](repeating: 0.5, count: 9)
        m.zeroGrad()
        m.forward(batch); m.backward(dlogprobs: d)
        let once = m.grads.array
        m.forward(batch); m.backward(dlogprobs: d)
        for i in stride(from: 0, to: once.count, by: 7) { XCTAssertEqual(m.grads[i], 2 * once[i], accuracy: 1e-6 + 1e-5 * abs(once[i])) }
    }

    func testPackedBatchRejectsBadParents() {
        XCTAssertThrowsError(try PackedBatch(tokens: [1, 2], parents: [-1, 1], vocabSize: 11, maxPositions: 16))
        XCTAssertThrowsError(try PackedBatch(tokens: [1, 20], parents: [-1, 0], vocabSize: 11, maxPositions: 16))
        XCTAssertThrowsError(try PackedBatch(sequences: [Array(repeating: 1, count: 17)], vocabSize: 11, maxPositions: 16))
    }
}
