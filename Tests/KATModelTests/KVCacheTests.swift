import XCTest
@testable import KATModel
import KATSupport

final class KVCacheTests: XCTestCase {
    override func tearDown() { OutputHead.tileFloats = 1 << 18 }

    /// The cache's logits equal the packed forward of the same tree, whatever the chains its
    /// rows land in: prompts prefilled whole (blocks of queries), groups of samples decoded
    /// together from a shared prompt (one sgemm over the shared run), branches, rows that
    /// continue a chain past its reservation, single rows added later: for every family, and
    /// with the head cut into many vocabulary tiles.
    func testCacheLogitsEqualTheForwardOfTheSameTree() throws {
        OutputHead.tileFloats = 512
        for family in ModelFamily.allCases {
            let m: any LanguageModel = family == .gpt2 ? try wideModel(seed: 7) : try trieLlama(seed: 11, family: family)
            let cache = KVCache(model: m)
            var rng = SplitMix64(seed: 13)
            var cached: [Int: [Float]] = [:] // row -> logits from the cache
            func token() -> Int32 { Int32(rng.next() % 300) }
            func append(_ toks: [Int32], _ pars: [Int32], outputs: [Int]) throws {
                let base = cache.count
                let logits = try cache.extend(tokens: toks, parents: pars, outputs: outputs)
                for (k, i) in outputs.enumerated() { cached[base + i] = Array(logits[(k * 300)..<((k + 1) * 300)]) }
            }
            func prefill(_ n: Int, under parent: Int32) throws {
                let base = Int32(cache.count)
                try append((0..<n).map { _ in token() }, (0..<n).map { $0 == 0 ? parent : base + Int32($0) - 1 }, outputs: Array(0..<n))
            }
            // Decodes `steps` tokens for each of `streams` samples of `parent`, all in one call per step.
            func decode(from parent: Int32, streams: Int, steps: Int) throws -> [Int32] {
                var last = [Int32](repeating: parent, count: streams)
                for _ in 0..<steps {
                    try append(last.map { _ in token() }, last, outputs: Array(0..<streams))
                    let base = Int32(cache.count - streams)
                    last = (0..<streams).map { base + Int32($0) }
                }
                return last
            }
            cache.reserveRows = 0
            try prefill(70, under: -1)                                    // longer than a block
            cache.reserveRows = 4
            let leaves = try decode(from: 69, streams: 5, steps: 7)       // past the reservation of 4
            cache.reserveRows = 16
            _ = try decode(from: leaves[2], streams: 3, steps: 3)         // a branch mid-answer
            try prefill(20, under: leaves[0])                             // a later turn continues a sample
            try prefill(12, under: 30)                                    // a branch from the middle of the prompt
            _ = try decode(from: Int32(cache.count - 1), streams: 1, steps: 4)
            try prefill(9, under: -1)                                     // a second root
            // Two samples of two different prompts decoded in one call.
            try append([token(), token(), token(), token()], [Int32(cache.count - 1), Int32(cache.count - 1), 69, 69], outputs: [0, 1, 2, 3])

            let batch = try PackedBatch(tokens: cache.tokens.map(Int.init), parents: cache.parents.map(Int.init), vocabSize: 300,
                                        maxPositions: 160)
            m.forward(batch)
            let rows = cached.keys.sorted()
            XCTAssertEqual(rows.count, cache.count)
            let full = m.logits(rows: rows)
            for (k, r) in rows.enumerated() {
                // Scalar-kernel and sgemm attention over the same keys: float32 round-off on
                // logits of O(10); 1e-4 relative is ~100x that and far from any wrong key.
                let scale = max(1, full[k].map(abs).max() ?? 0)
                let worst = zip(cached[r] ?? [], full[k]).map { abs($0 - $1) }.max() ?? .infinity
                XCTAssertLessThan(worst, 1e-4 * scale, "\(family) row \(r)")
            }
            XCTAssertGreaterThan(Set(cache.slots).count, cache.count - 1, "\(family): every row has its own slot")
        }
    }

    /// Samples of one prompt decoded together keep their answers in contiguous slots (one
    /// run each after the shared prompt), so attention reads whole runs.
    func testSamplesOfOnePromptGetContiguousAnswers() throws {
        let m = try wideModel(seed: 17)
        let cache = KVCache(model: m)
        _ = try cache.extend(tokens: (0..<10).map { Int32($0) }, parents: (0..<10).map { Int32($0) - 1 }, outputs: [])
        cache.reserveRows = 8
        var last = [Int32](repeating: 9, count: 4)
        var answers = [[Int32]](repeating: [], count: 4)
        for _ in 0..<8 {
            _ = try cache.extend(tokens: [1, 2, 3, 4], parents: last, outputs: [])
            let base = Int32(cache.count - 4)
            last = (0..<4).map { base + Int32($0) }
            for k in 0..<4 { answers[k].append(cache.slots[Int(last[k])]) }
        }
        for a in answers { XCTAssertEqual(a, Array(a[0]..<(a[0] + 8)), "an answer's slots are consecutive") }
        // The last step's rows share the prompt run and were grouped for one sgemm over it.
        XCTAssertTrue(cache.pieces.contains { if case let .group(rows, shared) = $0 { rows.count == 4 && shared == 1 } else { false } })
    }
}
