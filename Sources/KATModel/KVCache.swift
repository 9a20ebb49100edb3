import CKATKernels
#if canImport(Glibc)
import Glibc
#endif

/// Incremental inference over a tree of cached keys and values, for any model family.
///
/// Rows are appended, never removed; each row has a parent row (-1 at a root) and sees
/// its root path, exactly as in training; its position is its depth. Any number of
/// sequences can continue from any row, so a prompt prefilled once serves a whole group,
/// and a sample that branches mid-answer shares everything before the branch point.
///
/// Layout: keys and values live per layer in slot-major buffers (slot, W), W =
/// `config.keyValueWidth`. Rows are stored in *chains*: runs of consecutive slots where
/// each row's parent is the slot before it. A row that is the only new child of its chain's
/// last row continues that chain (while the chain has reserved room); any other row starts
/// a new chain with `reserveRows` free slots after it. So every root path is a few
/// contiguous runs of slots (a shared prompt, then one sample's answer), attention reads
/// whole runs, and a decoding step's rows that share a run (the samples of one prompt)
/// read it once, with one sgemm for all of them.
///
/// The model's family computes the layers (`LanguageModel.cachedForward`); the output head
/// runs here, in tiles handed to a consumer, so the logits of a step are never held whole.
public final class KVCache {
    public let model: any LanguageModel
    var keys: [FloatBuffer]
    var values: [FloatBuffer]
    var slotCapacity = 0
    var slotsUsed = 0
    public private(set) var parents: [Int32] = []
    public private(set) var depths: [Int32] = []
    public private(set) var tokens: [Int32] = []
    /// Slot and chain of each row.
    var slots: [Int32] = []
    var rowChain: [Int32] = []

    /// Rows of slots in a chain: its ancestors (slot runs, root first), its first slot, the
    /// next free slot, the end of its reservation and its last row.
    struct Chain {
        var ancestors: [KeyRun]
        var start: Int
        var next: Int
        var end: Int
        var tail: Int32
    }
    var chains: [Chain] = []

    /// Free slots reserved after the rows a new chain is created with, so that its
    /// continuation stays contiguous (the sampler sets it to the tokens it will generate).
    public var reserveRows = 0

    // The plan of the current `extend` call, the same for every layer.
    /// Slot of each new row.
    var newSlots: [Int] = []
    /// Key runs of new row i: `runs[runStart[i]..<runStart[i + 1]]`, root first, its own run last.
    var runs: [KeyRun] = []
    var runStart: [Int] = []
    /// How the new rows attend: a chain of several new rows (blocks of queries, as in
    /// training), rows sharing their first `shared` runs (one sgemm per shared run), or one row.
    enum Piece { case segment(Range<Int>), group(Range<Int>, shared: Int), single(Int) }
    var pieces: [Piece] = []
    /// Keys of the longest root path among the new rows.
    var longestPath = 0
    // Reused arrays of `extend` (no allocation per decoding step once they have grown).
    var runStartArg: [Int] = []
    var runLenArg: [Int] = []
    var newDepths: [Int32] = []
    var childCount: [Int32] = []
    var onlyChild: [Int] = []
    var chainRun: [Int] = []
    var existingParents: [Int32] = []

    /// Scratch buffers of the family's computation, by slot, reused while large enough.
    var scratchBuffers: [FloatBuffer] = []
    /// The final norm's output of the rows whose logits are wanted.   (outputs, C)
    var hidden = FloatBuffer(count: 0)
    var logitsTile = FloatBuffer(count: 0)

    public init(model: any LanguageModel) {
        self.model = model
        keys = (0..<model.config.nLayer).map { _ in FloatBuffer(count: 0) }
        values = (0..<model.config.nLayer).map { _ in FloatBuffer(count: 0) }
    }

    public var count: Int { parents.count }

    /// Bytes held by the cached keys and values (slots reserved included).
    public var bytes: Int { 4 * 2 * keys.count * slotCapacity * model.config.keyValueWidth }

    /// Drops every row (keeps the allocated capacity).
    public func reset() {
        parents.removeAll(keepingCapacity: true); depths.removeAll(keepingCapacity: true); tokens.removeAll(keepingCapacity: true)
        slots.removeAll(keepingCapacity: true); rowChain.removeAll(keepingCapacity: true); chains.removeAll(keepingCapacity: true)
        slotsUsed = 0
    }

    /// Makes room for `total` slots, keeping the slots in use.
    func reserveSlots(_ total: Int) {
        let w = model.config.keyValueWidth
        guard total > slotCapacity else { return }
        let newCap = max(total, slotCapacity * 2, 256)
        for l in 0..<keys.count {
            let k = FloatBuffer(count: newCap * w), v = FloatBuffer(count: newCap * w)
            k.pointer.update(from: keys[l].pointer, count: slotsUsed * w)
            v.pointer.update(from: values[l].pointer, count: slotsUsed * w)
            keys[l] = k; values[l] = v
        }
        slotCapacity = newCap
    }

    /// Scratch buffer `slot` with room for at least `count` floats (contents undefined).
    func scratch(_ slot: Int, _ count: Int) -> FloatBuffer {
        while scratchBuffers.count <= slot { scratchBuffers.append(FloatBuffer(count: 0)) }
        if scratchBuffers[slot].count < count { scratchBuffers[slot] = FloatBuffer(count: max(count, scratchBuffers[slot].count * 2)) }
        return scratchBuffers[slot]
    }

    /// Room for the final norm's output of `rows` rows of C floats.
    func hiddenBuffer(_ rows: Int) -> FPtr {
        let need = rows * model.config.nEmbd
        if hidden.count < need { hidden = FloatBuffer(count: max(need, hidden.count * 2)) }
        return hidden.pointer
    }

    // MARK: - Appending rows

    /// How the output head hands over the logits of a step.
    public enum HeadTiling: Sendable {
        /// Every output row at once over a slice of the vocabulary, slice after slice: the
        /// head weight is read once per step. For consumers that need one pass (a running
        /// softmax summary, reservoir sampling, argmax).
        case vocabularyTiles
        /// Whole rows, a few at a time (for consumers that need a row's every logit at once).
        case wholeRows
    }

    /// A tile of logits (before temperature): output rows `firstOutput..<firstOutput + rows`
    /// (indices into `outputs`), vocabulary entries `vocabularyStart..<vocabularyStart + width`.
    public struct HeadTile {
        public let firstOutput: Int
        public let rows: Int
        public let vocabularyStart: Int
        public let width: Int
        /// (rows, width), row-major.
        public let logits: UnsafePointer<Float>
    }

    /// Appends rows and returns the logits (before temperature) of the rows in `outputs`.
    /// Holds them all: for a few rows or a small vocabulary; decoding uses
    /// `extend(tokens:parents:outputs:tiling:consume:)`.
    /// - Parameters:
    ///   - tokens: the new rows' tokens.
    ///   - parents: each new row's parent: an existing row, an earlier new row, or -1.
    ///   - outputs: indices into the new rows whose next-token logits are wanted.
    /// - Returns: (outputs.count, V) logits, row-major.
    /// - Throws: `ModelError.badInput` for a parent that is not an earlier row, a token
    ///   outside the vocabulary or a depth that reaches n_positions; nothing is appended then.
    public func extend(tokens newTokens: [Int32], parents newParents: [Int32], outputs: [Int]) throws(ModelError) -> [Float] {
        let v = model.config.vocabSize
        var all = [Float](repeating: 0, count: outputs.count * v)
        try all.withUnsafeMutableBufferPointer { (buf: inout UnsafeMutableBufferPointer<Float>) throws(ModelError) in
            let base = buf.baseAddress
            try extend(tokens: newTokens, parents: newParents, outputs: outputs, tiling: .vocabularyTiles) { t in
                guard let base else { return }
                for r in 0..<t.rows {
                    (base + (t.firstOutput + r) * v + t.vocabularyStart).update(from: t.logits + r * t.width, count: t.width)
                }
            }
        }
        return all
    }

    /// Appends rows and hands the logits of the rows in `outputs` to `consume`, tile by tile.
    /// With `.vocabularyTiles` the tiles come in vocabulary order, each covering every output
    /// row; with `.wholeRows`, in row order. A tile is valid only during the call.
    /// - Throws: as `extend(tokens:parents:outputs:)`.
    public func extend(tokens newTokens: [Int32], parents newParents: [Int32], outputs: [Int], tiling: HeadTiling,
                       consume: (HeadTile) -> Void) throws(ModelError) {
        let cfg = model.config
        let v = cfg.vocabSize
        let n = newTokens.count, base = count
        precondition(newParents.count == n, "KVCache.extend: tokens and parents differ in length")
        newDepths.removeAll(keepingCapacity: true)
        for i in 0..<n {
            let p = Int(newParents[i])
            guard p >= -1, p < base + i else { throw .badInput(reason: "KV cache: parent \(p) of new row \(i) is not an earlier row") }
            guard newTokens[i] >= 0, Int(newTokens[i]) < v else { throw .badInput(reason: "KV cache: token \(newTokens[i]) outside the vocabulary") }
            let d = p < 0 ? 0 : (p < base ? depths[p] : newDepths[p - base]) + 1
            guard Int(d) < cfg.nPositions else { throw .badInput(reason: "KV cache: depth \(d) reaches n_positions (\(cfg.nPositions))") }
            newDepths.append(d)
        }
        for i in outputs where i < 0 || i >= n {
            throw .badInput(reason: "KV cache: output \(i) is not one of the \(n) new rows")
        }
        parents += newParents; depths += newDepths; tokens += newTokens
        place(base: base, n: n)
        plan(base: base, n: n)
        let weight = model.cachedForward(self, newRows: base..<(base + n), outputs: outputs)
        runHead(weight, rows: outputs.count, tiling: tiling, consume: consume)
    }

    /// Chooses each new row's chain and slot.
    private func place(base: Int, n: Int) {
        // A new row continues its parent's chain only if it is the parent's one child in
        // this call; `chainRun[i]` counts the new rows that would follow row i that way.
        childCount.removeAll(keepingCapacity: true); childCount.append(contentsOf: repeatElement(0, count: n))
        onlyChild.removeAll(keepingCapacity: true); onlyChild.append(contentsOf: repeatElement(-1, count: n))
        chainRun.removeAll(keepingCapacity: true); chainRun.append(contentsOf: repeatElement(1, count: n))
        existingParents.removeAll(keepingCapacity: true)
        for i in 0..<n {
            let p = Int(parents[base + i])
            if p >= base { childCount[p - base] += 1; onlyChild[p - base] = i } else if p >= 0 { existingParents.append(Int32(p)) }
        }
        existingParents.sort()
        func existingChildren(_ p: Int) -> Int {
            // Rows of the sorted list equal to p.
            var lo = 0, hi = existingParents.count
            while lo < hi { let mid = (lo + hi) / 2; if existingParents[mid] < Int32(p) { lo = mid + 1 } else { hi = mid } }
            var k = lo
            while k < existingParents.count, existingParents[k] == Int32(p) { k += 1 }
            return k - lo
        }
        for i in stride(from: n - 1, through: 0, by: -1) where childCount[i] == 1 { chainRun[i] = 1 + chainRun[onlyChild[i]] }
        newSlots.removeAll(keepingCapacity: true)
        for i in 0..<n {
            let row = base + i
            let p = Int(parents[row])
            var chainID = -1
            if p >= 0 {
                let c = Int(rowChain[p])
                let only = p >= base ? childCount[p - base] == 1 : existingChildren(p) == 1
                if only, chains[c].tail == Int32(p), chains[c].next < chains[c].end { chainID = c }
            }
            if chainID < 0 {
                var ancestors: [KeyRun] = []
                if p >= 0 {
                    let pc = chains[Int(rowChain[p])]
                    ancestors = pc.ancestors + [KeyRun(start: pc.start, end: Int(slots[p]) + 1)]
                }
                let size = chainRun[i] + reserveRows
                reserveSlots(slotsUsed + size)
                chains.append(Chain(ancestors: ancestors, start: slotsUsed, next: slotsUsed, end: slotsUsed + size, tail: -1))
                slotsUsed += size
                chainID = chains.count - 1
            }
            let s = chains[chainID].next
            chains[chainID].next += 1
            chains[chainID].tail = Int32(row)
            slots.append(Int32(s))
            rowChain.append(Int32(chainID))
            newSlots.append(s)
        }
    }

    /// Each new row's key runs, and how the rows are grouped for attention.
    private func plan(base: Int, n: Int) {
        runs.removeAll(keepingCapacity: true)
        runStart.removeAll(keepingCapacity: true)
        runStart.append(0)
        longestPath = 0
        for i in 0..<n {
            let c = chains[Int(rowChain[base + i])]
            runs += c.ancestors
            runs.append(KeyRun(start: c.start, end: newSlots[i] + 1))
            runStart.append(runs.count)
            longestPath = max(longestPath, Int(depths[base + i]) + 1)
        }
        pieces.removeAll(keepingCapacity: true)
        var i = 0
        while i < n {
            // A chain of new rows in consecutive slots attends like a training segment.
            var j = i + 1
            while j < n, continuesChain(base, j) { j += 1 }
            if j - i >= 2 { pieces.append(.segment(i..<j)); i = j; continue }
            // Single rows that share their first runs (the samples of one prompt) form a group.
            var shared = runStart[i + 1] - runStart[i] - 1
            j = i + 1
            while j < n, shared > 0 {
                if j + 1 < n, continuesChain(base, j + 1) { break }
                let own = runStart[j + 1] - runStart[j] - 1
                var common = 0
                while common < min(shared, own), runs[runStart[i] + common] == runs[runStart[j] + common] { common += 1 }
                if common == 0 { break }
                shared = common
                j += 1
            }
            if j - i >= 2 { pieces.append(.group(i..<j, shared: shared)) } else { pieces.append(.single(i)); j = i + 1 }
            i = j
        }
    }

    /// Whether new row j is the row after new row j - 1 in the same chain.
    @inline(__always)
    private func continuesChain(_ base: Int, _ j: Int) -> Bool {
        Int(parents[base + j]) == base + j - 1 && rowChain[base + j] == rowChain[base + j - 1] && newSlots[j] == newSlots[j - 1] + 1
    }

    /// Runs the output head over `hidden` (rows, C) with head matrix `weight` (V, C).
    private func runHead(_ weight: FPtr, rows m: Int, tiling: HeadTiling, consume: (HeadTile) -> Void) {
        guard m > 0 else { return }
        let c = model.config.nEmbd, v = model.config.vocabSize
        let budget = OutputHead.tileFloats
        switch tiling {
        case .vocabularyTiles:
            let width = OutputHead.tileColumns(rows: m, vocabSize: v)
            if logitsTile.count < m * width { logitsTile = FloatBuffer(count: m * width) }
            var v0 = 0
            while v0 < v {
                let w = min(width, v - v0)
                sgemm(transA: false, transB: true, m: m, n: w, k: c, alpha: 1, a: hidden.pointer, lda: c, b: weight + v0 * c, ldb: c,
                      beta: 0, c: logitsTile.pointer, ldc: w)
                consume(HeadTile(firstOutput: 0, rows: m, vocabularyStart: v0, width: w, logits: logitsTile.pointer))
                v0 += w
            }
        case .wholeRows:
            let chunk = max(1, min(m, budget / v))
            if logitsTile.count < chunk * v { logitsTile = FloatBuffer(count: chunk * v) }
            var r0 = 0
            while r0 < m {
                let r = min(chunk, m - r0)
                sgemm(transA: false, transB: true, m: r, n: v, k: c, alpha: 1, a: hidden.pointer + r0 * c, lda: c, b: weight, ldb: c,
                      beta: 0, c: logitsTile.pointer, ldc: v)
                consume(HeadTile(firstOutput: r0, rows: r, vocabularyStart: 0, width: v, logits: logitsTile.pointer))
                r0 += r
            }
        }
    }

    // MARK: - Attention (called by the families, layer by layer)

    /// Stores the keys and values of the new rows of `layer`, read from rows of `qkv`
    /// (stride `shape.stride`, keys at `shape.keyOffset`, values at `shape.valueOffset`).
    func store(layer l: Int, _ qkv: FPtr, _ n: Int, _ shape: AttentionShape) {
        let w = shape.kvWidth, c3 = shape.stride
        let kb = keys[l].pointer, vb = values[l].pointer
        for i in 0..<n {
            let s = newSlots[i]
            (kb + s * w).update(from: qkv + i * c3 + shape.keyOffset, count: w)
            (vb + s * w).update(from: qkv + i * c3 + shape.valueOffset, count: w)
        }
    }

    /// out (n, NH hs) = attention of the new rows' queries (rows of `qkv`, stride
    /// `shape.stride`, queries first) over the cached keys and values of their root paths.
    func attend(layer l: Int, _ out: FPtr, _ qkv: FPtr, _ n: Int, _ shape: AttentionShape) {
        let nh = shape.heads, hs = shape.headSize, w = shape.kvWidth, c3 = shape.stride, c = shape.queryWidth
        let group = shape.heads / shape.kvHeads
        let kb = keys[l].pointer, vb = values[l].pointer
        let scale = 1 / Float(hs).squareRoot()
        let rowScores = scratch(20, nh * longestPath).pointer

        /// Row i over its runs from index `from`, merged with a partial softmax when given.
        func row(_ i: Int, from: Int, m0: FPtr?, s0: FPtr?, o0: FPtr?) {
            runStartArg.removeAll(keepingCapacity: true); runLenArg.removeAll(keepingCapacity: true)
            for r in (runStart[i] + from)..<runStart[i + 1] { runStartArg.append(runs[r].start); runLenArg.append(runs[r].count) }
            runStartArg.withUnsafeBufferPointer { st in
                runLenArg.withUnsafeBufferPointer { ln in
                    kat_attend_row(out + i * c, qkv + i * c3, kb, vb, w, st.baseAddress, ln.baseAddress, st.count, nh, group, hs, scale,
                                   rowScores, m0, s0, o0)
                }
            }
        }

        for piece in pieces {
            switch piece {
            case let .single(i):
                row(i, from: 0, m0: nil, s0: nil, o0: nil)
            case let .group(rows, shared):
                // The shared runs once for all rows: scores and unnormalised outputs by sgemm.
                let m = rows.count, first = rows.lowerBound
                let sharedRuns = runs[runStart[first]..<(runStart[first] + shared)]
                let keysShared = sharedRuns.reduce(0) { $0 + $1.count }
                let s = scratch(21, m * keysShared).pointer
                let mx = scratch(22, m * nh).pointer, sum = scratch(23, m * nh).pointer, partial = scratch(24, m * c).pointer
                for h in 0..<nh {
                    let kvh = (h / group) * hs
                    var col = 0
                    for run in sharedRuns {
                        sgemm(transA: false, transB: true, m: m, n: run.count, k: hs, alpha: scale, a: qkv + first * c3 + h * hs, lda: c3,
                              b: kb + run.start * w + kvh, ldb: w, beta: 0, c: s + col, ldc: keysShared)
                        col += run.count
                    }
                    kat_exp_rows_partial(s, keysShared, m, keysShared, mx + h, sum + h, nh)
                    col = 0
                    for (k, run) in sharedRuns.enumerated() {
                        sgemm(transA: false, transB: false, m: m, n: hs, k: run.count, alpha: 1, a: s + col, lda: keysShared,
                              b: vb + run.start * w + kvh, ldb: w, beta: k == 0 ? 0 : 1, c: partial + h * hs, ldc: c)
                        col += run.count
                    }
                }
                for i in rows {
                    let k = i - first
                    row(i, from: shared, m0: mx + k * nh, s0: sum + k * nh, o0: partial + k * c)
                }
            case let .segment(rows):
                // New rows in consecutive slots of one chain: blocks of queries over the
                // chain's ancestors and its own slots, as training attends a segment.
                let chain = chains[Int(rowChain[count - n + rows.lowerBound])]
                let ancestorKeys = chain.ancestors.reduce(0) { $0 + $1.count }
                var blockRuns = chain.ancestors
                var q0 = rows.lowerBound
                while q0 < rows.upperBound {
                    let q1 = min(q0 + attentionBlockRows, rows.upperBound), m = q1 - q0
                    let own = KeyRun(start: chain.start, end: newSlots[q1 - 1] + 1)
                    blockRuns.removeLast(blockRuns.count - chain.ancestors.count)
                    blockRuns.append(own)
                    let kt = ancestorKeys + own.count
                    let valid0 = ancestorKeys + (newSlots[q0] - chain.start) + 1
                    let s = scratch(21, m * kt).pointer, lse = scratch(22, m).pointer, inv = scratch(23, m).pointer
                    for h in 0..<nh {
                        let kvh = (h / group) * hs
                        var col = 0
                        for run in blockRuns {
                            sgemm(transA: false, transB: true, m: m, n: run.count, k: hs, alpha: scale, a: qkv + q0 * c3 + h * hs, lda: c3,
                                  b: kb + run.start * w + kvh, ldb: w, beta: 0, c: s + col, ldc: kt)
                            col += run.count
                        }
                        kat_softmax_rows(s, kt, m, kt, valid0, lse, 1, inv)
                        col = 0
                        let o = out + q0 * c + h * hs
                        for (k, run) in blockRuns.enumerated() {
                            sgemm(transA: false, transB: false, m: m, n: hs, k: run.count, alpha: 1, a: s + col, lda: kt,
                                  b: vb + run.start * w + kvh, ldb: w, beta: k == 0 ? 0 : 1, c: o, ldc: c)
                            col += run.count
                        }
                        kat_scale_rows(o, c, m, hs, inv)
                    }
                    q0 = q1
                }
            }
        }
    }
}
