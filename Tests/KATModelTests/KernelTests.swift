import XCTest
@testable import KATModel
import KATSupport

/// A GPT-2 wide enough that every element-wise kernel runs whole 16-float vectors and a tail
/// (C = 56: three vectors and 8; 4C = 224: fourteen vectors; head size 14, a tail only),
/// with weights far larger than GPT-2's init (as `tinyModel`), so no term hides.
func wideModel(seed: UInt64, vocab: Int = 300, positions: Int = 160) throws -> GPT2 {
    try tinyModel(seed: seed, vocab: vocab, c: 56, layers: 2, heads: 4, positions: positions)
}

/// A prompt segment longer than an attention block (66 rows), then three answers: one of
/// 70 rows (two blocks, with the prompt as ancestor run), one of 10 and one of a single row.
func longTrie(vocab: Int, seed: UInt64) -> (tokens: [Int], parents: [Int]) {
    var rng = SplitMix64(seed: seed)
    var tokens: [Int] = [], parents: [Int] = []
    func chain(_ n: Int, under p: Int) {
        for k in 0..<n {
            parents.append(k == 0 ? p : tokens.count - 1)
            tokens.append(Int(rng.next() % UInt64(vocab)))
        }
    }
    chain(66, under: -1)
    for n in [70, 10, 1] { chain(n, under: 65) }
    return (tokens, parents)
}

/// Worst difference between two gradients, per tensor relative to that tensor's largest entry.
func worstRelativeDifference(_ a: [Float], _ b: [Float], _ layout: any ParameterTable) -> Float {
    var worst: Float = 0
    for t in layout.tensors {
        let r = t.offset..<(t.offset + t.count)
        let scale = max(r.map { abs(b[$0]) }.max() ?? 0, 1e-12)
        worst = max(worst, r.map { abs(a[$0] - b[$0]) }.max().map { $0 / scale } ?? 0)
    }
    return worst
}

final class KernelTests: XCTestCase {
    override func tearDown() {
        InstructionSet.select(InstructionSet.best)
        OutputHead.tileFloats = 1 << 18
    }

    /// Every instruction set the CPU runs computes the Float64 reference forward through
    /// long segments, and the same gradient as every other set to float32 round-off, for
    /// both families.
    func testEveryInstructionSetAgreesWithTheFloat64Reference() throws {
        let sets = InstructionSet.allCases.filter { $0.rawValue <= InstructionSet.best.rawValue }
        XCTAssertTrue(sets.contains(.generic))
        let g = try wideModel(seed: 41)
        let (tokens, parents) = longTrie(vocab: 300, seed: 43)
        let batch = try PackedBatch(tokens: tokens, parents: parents, vocabSize: 300, maxPositions: 160)
        let ref = ReferenceGPT2(g).forward(tokens: tokens, parents: parents, tau: 0.9)
        var rng = SplitMix64(seed: 47)
        let d = tokens.indices.map { parents[$0] < 0 ? Float(0) : Float(2 * rng.nextDouble() - 1) }
        let llama = try trieLlama(seed: 53)
        var gradients: [[Float]] = [], llamaGradients: [[Float]] = []
        for set in sets {
            XCTAssertEqual(InstructionSet.select(set), set)
            let out = g.forward(batch, temperature: 0.9)
            // Float32 through two layers of a 56-wide model: round-off ~1e-6 on log-probs of
            // O(1-10); 1e-4 is ~100x that and far below any wrong term.
            for u in tokens.indices {
                XCTAssertEqual(Double(out.logprobs[u]), ref.logprobs[u], accuracy: 1e-4, "\(set.name) logprob \(u)")
                XCTAssertEqual(Double(out.entropies[u]), ref.entropies[u], accuracy: 1e-4, "\(set.name) entropy \(u)")
            }
            g.zeroGrad(); g.backward(dlogprobs: d)
            gradients.append(g.grads.array)
            llama.forward(batch, temperature: 0.9); llama.zeroGrad(); llama.backward(dlogprobs: d)
            llamaGradients.append(llama.grads.array)
        }
        // The sets differ only where AVX2 and AVX-512 fuse multiply-adds: float32 round-off
        // (~1e-6 of each tensor's scale); 1e-4 of it still catches a wrong or missing term.
        for k in 1..<sets.count {
            XCTAssertLessThan(worstRelativeDifference(gradients[k], gradients[0], g.layout), 1e-4, "GPT-2 \(sets[k].name)")
            XCTAssertLessThan(worstRelativeDifference(llamaGradients[k], llamaGradients[0], llama.layout), 1e-4, "Llama \(sets[k].name)")
        }
    }

    /// The gradient through attention blocks (segments longer than a block, with ancestor
    /// runs) and a head cut into many vocabulary tiles agrees with central differences of
    /// the Float64 forward, with the head's logits kept or recomputed.
    func testBackwardThroughAttentionBlocksAndHeadTilesMatchesFiniteDifferences() throws {
        OutputHead.tileFloats = 2048 // 147 head rows: tiles of 16 columns, 19 of them over V = 300
        let (tokens, parents) = longTrie(vocab: 300, seed: 59)
        let batch = try PackedBatch(tokens: tokens, parents: parents, vocabSize: 300, maxPositions: 160)
        for keep in [true, false] {
            let m = try wideModel(seed: 61)
            m.keepsHeadLogits = keep
            var rng = SplitMix64(seed: 67)
            let w = tokens.indices.map { parents[$0] < 0 ? 0.0 : 2 * rng.nextDouble() - 1 }
            m.zeroGrad()
            m.forward(batch, temperature: 0.8)
            XCTAssertEqual(m.head.bytes > 0, keep, "logits kept only when asked")
            m.backward(dlogprobs: w.map(Float.init))
            var ref = ReferenceGPT2(m)
            func loss(_ r: ReferenceGPT2) -> Double {
                zip(r.forward(tokens: tokens, parents: parents, tau: 0.8).logprobs, w).reduce(0) { $0 + $1.0 * $1.1 }
            }
            // h = 1e-5 in Float64: truncation ~h^2 |L'''| ~ 1e-10, round-off ~1e-16 / h ~ 1e-11.
            let h = 1e-5
            for t in m.layout.tensors {
                var idx = (0..<3).map { _ in t.offset + Int(rng.next() % UInt64(t.count)) }
                if let largest = (t.offset..<(t.offset + t.count)).max(by: { abs(m.grads[$0]) < abs(m.grads[$1]) }) { idx.append(largest) }
                for i in idx {
                    let saved = ref.p[i]
                    ref.p[i] = saved + h
                    let lp = loss(ref)
                    ref.p[i] = saved - h
                    let lm = loss(ref)
                    ref.p[i] = saved
                    let fd = (lp - lm) / (2 * h)
                    // As GradientTests: float32 gradient of terms O(1), ~100x margin.
                    XCTAssertEqual(Double(m.grads[i]), fd, accuracy: 1e-4 + 1e-3 * abs(fd), "\(t.name)[\(i - t.offset)] keep \(keep)")
                }
            }
        }
    }

    /// Keeping the head's logits for backward gives the gradient of recomputing them, for
    /// both families (the kept and recomputed logits come from sgemms of different shapes,
    /// so float32 round-off only).
    func testKeptHeadLogitsGiveTheRecomputedGradient() throws {
        OutputHead.tileFloats = 4096
        let (tokens, parents) = longTrie(vocab: 300, seed: 71)
        let batch = try PackedBatch(tokens: tokens, parents: parents, vocabSize: 300, maxPositions: 160)
        let d = tokens.indices.map { Float(($0 % 7) - 3) / 10 }
        for family in ModelFamily.allCases {
            let m: any LanguageModel = family == .gpt2 ? try wideModel(seed: 73) : try trieLlama(seed: 79, family: family)
            var results: [[Float]] = []
            for keep in [true, false] {
                m.keepsHeadLogits = keep
                m.zeroGrad(); m.forward(batch); m.backward(dlogprobs: d)
                results.append(m.grads.array)
            }
            XCTAssertLessThan(worstRelativeDifference(results[0], results[1], m.layout), 1e-5, "\(family)")
            XCTAssertGreaterThan(results[0].map(abs).max() ?? 0, 1e-3, "\(family): a gradient with signal")
        }
    }

    /// Forward and backward repeated on the same batch give the same bits: the kernels sum
    /// in one fixed order (what deterministic runs and bitwise resume rely on).
    func testRepeatedPassesAreBitwiseIdentical() throws {
        let (tokens, parents) = longTrie(vocab: 300, seed: 83)
        let batch = try PackedBatch(tokens: tokens, parents: parents, vocabSize: 300, maxPositions: 160)
        let d = tokens.indices.map { Float(($0 % 5) - 2) / 10 }
        for m in [try wideModel(seed: 89) as any LanguageModel, try trieLlama(seed: 97)] {
            var runs: [([Float], [UInt32])] = []
            for _ in 0..<2 {
                let out = m.forward(batch)
                m.zeroGrad(); m.backward(dlogprobs: d)
                runs.append((out.logprobs, m.grads.array.map(\.bitPattern)))
            }
            XCTAssertEqual(runs[0].0.map(\.bitPattern), runs[1].0.map(\.bitPattern))
            XCTAssertTrue(runs[0].1 == runs[1].1, "gradients differ between two identical passes")
        }
    }

    /// Packing with `scoring` computes the scored rows' log-probs and entropies unchanged,
    /// 0 for the others, and the same gradient for a loss on the scored rows.
    func testScoringOnlySomeRowsKeepsTheirLogprobsAndGradient() throws {
        let (tokens, parents) = longTrie(vocab: 300, seed: 101)
        let scored = tokens.indices.map { $0 >= 66 && $0 % 3 != 0 } // answer rows only, some of them
        let full = try PackedBatch(tokens: tokens, parents: parents, vocabSize: 300, maxPositions: 160)
        let part = try PackedBatch(tokens: tokens, parents: parents, vocabSize: 300, maxPositions: 160, scoring: scored)
        XCTAssertLessThan(part.headRows.count, full.headRows.count)
        let d = tokens.indices.map { scored[$0] ? Float(($0 % 7) - 3) / 10 : 0 }
        let m = try wideModel(seed: 103)
        let a = m.forward(full)
        m.zeroGrad(); m.backward(dlogprobs: d)
        let ga = m.grads.array
        let b = m.forward(part)
        m.zeroGrad(); m.backward(dlogprobs: d)
        for u in tokens.indices {
            if scored[u] {
                // The same rows through sgemms of other shapes: float32 round-off.
                XCTAssertEqual(b.logprobs[u], a.logprobs[u], accuracy: 1e-5 * max(1, abs(a.logprobs[u])), "row \(u)")
                XCTAssertEqual(b.entropies[u], a.entropies[u], accuracy: 1e-5 * max(1, abs(a.entropies[u])), "row \(u)")
            } else {
                XCTAssertEqual(b.logprobs[u], 0, "unscored row \(u)")
            }
        }
        XCTAssertLessThan(worstRelativeDifference(m.grads.array, ga, m.layout), 1e-5)
    }
}

/// A Llama-family model of `KernelTests`' width (C = 56, 4 query heads of 14, 2 key-value
/// heads, F = 152) with large weights, over the same 300-token vocabulary.
func trieLlama(seed: UInt64, family: ModelFamily = .qwen2) throws -> Llama {
    let cfg = LlamaConfig(family: family, vocabSize: 300, nPositions: 160, nEmbd: 56, nLayer: 2, nHead: 4, nKVHead: 2,
                          intermediateSize: 152, ropeTheta: 100, tieWordEmbeddings: family == .qwen2)
    let m = try Llama(config: cfg)
    var rng = SplitMix64(seed: seed)
    for i in 0..<m.params.count { m.params[i] = 0.3 * rng.nextGaussian() }
    for t in m.layout.tensors where t.name.hasSuffix("norm.weight") {
        for i in 0..<t.count { m.params[t.offset + i] = 1 + 0.2 * rng.nextGaussian() }
    }
    return m
}
