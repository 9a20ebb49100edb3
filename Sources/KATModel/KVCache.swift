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
/// The cache keeps the rows, their root paths and every layer's keys and values; the
/// model's family computes the layers (`LanguageModel.cachedForward`).
public final class KVCache {
    public let model: any LanguageModel
    /// Keys and values of every row, per layer, in buffers that grow by doubling.  (rows, W) each,
    /// W = `config.keyValueWidth`.
    var keys: [FloatBuffer]
    var values: [FloatBuffer]
    var capacity = 0
    public private(set) var parents: [Int32] = []
    public private(set) var depths: [Int32] = []
    public private(set) var tokens: [Int32] = []
    /// Root paths of the rows of the current `extend` call, the same for every layer:
    /// new row i sees the rows `pathRows[pathStart[i]..<pathStart[i+1]]` (itself first).
    var pathStart: [Int] = []
    var pathRows: [Int] = []
    /// Scratch buffers of the family's computation, by slot, reused while large enough.
    var scratchBuffers: [FloatBuffer] = []

    public init(model: any LanguageModel) {
        self.model = model
        keys = (0..<model.config.nLayer).map { _ in FloatBuffer(count: 0) }
        values = (0..<model.config.nLayer).map { _ in FloatBuffer(count: 0) }
    }

    public var count: Int { parents.count }

    /// Drops every row (keeps the allocated capacity).
    public func reset() {
        parents.removeAll(keepingCapacity: true); depths.removeAll(keepingCapacity: true); tokens.removeAll(keepingCapacity: true)
    }

    func reserve(rows: Int) {
        let w = model.config.keyValueWidth
        if rows > capacity {
            let newCap = max(rows, capacity * 2, 256)
            for l in 0..<keys.count {
                let k = FloatBuffer(count: newCap * w), v = FloatBuffer(count: newCap * w)
                k.pointer.update(from: keys[l].pointer, count: count * w)
                v.pointer.update(from: values[l].pointer, count: count * w)
                keys[l] = k; values[l] = v
            }
            capacity = newCap
        }
    }

    /// Scratch buffer `slot` with room for at least `count` floats (contents undefined).
    func scratch(_ slot: Int, _ count: Int) -> FloatBuffer {
        while scratchBuffers.count <= slot { scratchBuffers.append(FloatBuffer(count: 0)) }
        if scratchBuffers[slot].count < count { scratchBuffers[slot] = FloatBuffer(count: max(count, scratchBuffers[slot].count * 2)) }
        return scratchBuffers[slot]
    }

    /// Appends rows and returns the logits (before temperature) of the rows in `outputs`.
    /// - Parameters:
    ///   - tokens: the new rows' tokens.
    ///   - parents: each new row's parent: an existing row, an earlier new row, or -1.
    ///   - outputs: indices into the new rows whose next-token logits are wanted.
    /// - Returns: (outputs.count, V) logits, row-major.
    /// - Throws: `ModelError.badInput` for a parent that is not an earlier row, a token
    ///   outside the vocabulary or a depth that reaches n_positions; nothing is appended then.
    public func extend(tokens newTokens: [Int32], parents newParents: [Int32], outputs: [Int]) throws(ModelError) -> [Float] {
        let cfg = model.config
        let v = cfg.vocabSize
        let n = newTokens.count, base = count
        precondition(newParents.count == n, "KVCache.extend: tokens and parents differ in length")
        var newDepths: [Int32] = []
        for i in 0..<n {
            let p = Int(newParents[i])
            guard p >= -1, p < base + i else { throw .badInput(reason: "KV cache: parent \(p) of new row \(i) is not an earlier row") }
            guard newTokens[i] >= 0, Int(newTokens[i]) < v else { throw .badInput(reason: "KV cache: token \(newTokens[i]) outside the vocabulary") }
            let d = p < 0 ? 0 : (p < base ? depths[p] : newDepths[p - base]) + 1
            guard Int(d) < cfg.nPositions else { throw .badInput(reason: "KV cache: depth \(d) reaches n_positions (\(cfg.nPositions))") }
            newDepths.append(d)
        }
        for i in outputs {
            guard i >= 0, i < n else { throw .badInput(reason: "KV cache: output \(i) is not one of the \(n) new rows") }
        }
        reserve(rows: base + n)
        parents += newParents; depths += newDepths; tokens += newTokens
        pathStart = [Int](repeating: 0, count: n + 1)
        pathRows.removeAll(keepingCapacity: true)
        for i in 0..<n {
            var r = base + i
            while r >= 0 { pathRows.append(r); r = Int(parents[r]) }
            pathStart[i + 1] = pathRows.count
        }
        return model.cachedForward(self, newRows: base..<(base + n), outputs: outputs)
    }

    /// Stores the keys and values of the new rows of `layer`, read from rows of `qkv`
    /// (stride `shape.stride`, keys at `shape.keyOffset`, values at `shape.valueOffset`).
    func store(layer l: Int, _ qkv: FPtr, _ newRows: Range<Int>, _ shape: AttentionShape) {
        let w = shape.kvWidth, c3 = shape.stride
        let kb = keys[l].pointer, vb = values[l].pointer
        for (i, row) in newRows.enumerated() {
            (kb + row * w).update(from: qkv + i * c3 + shape.keyOffset, count: w)
            (vb + row * w).update(from: qkv + i * c3 + shape.valueOffset, count: w)
        }
    }

    /// out (n, NH hs) = attention of the new rows' queries (rows of `qkv`, stride
    /// `shape.stride`, queries first) over the cached keys and values of their root paths.
    func attend(layer l: Int, _ out: FPtr, _ qkv: FPtr, _ n: Int, _ shape: AttentionShape) {
        let nh = shape.heads, hs = shape.headSize, w = shape.kvWidth, c3 = shape.stride, c = shape.queryWidth
        let kb = keys[l].pointer, vb = values[l].pointer
        let scale = 1 / Float(hs).squareRoot()
        var scores = [Float](repeating: 0, count: (0..<n).map { pathStart[$0 + 1] - pathStart[$0] }.max() ?? 0)
        scores.withUnsafeMutableBufferPointer { sc in
            pathRows.withUnsafeBufferPointer { path in
                for i in 0..<n {
                    let p0 = pathStart[i], len = pathStart[i + 1] - p0
                    for hd in 0..<nh {
                        let q = qkv + i * c3 + hd * hs
                        let kvh = shape.kvHead(hd)
                        var mx = -Float.infinity
                        for j in 0..<len {
                            let k = kb + path[p0 + j] * w + kvh
                            var s: Float = 0
                            for d in 0..<hs { s += q[d] * k[d] }
                            sc[j] = s * scale
                            mx = max(mx, sc[j])
                        }
                        var sum: Float = 0
                        for j in 0..<len { sc[j] = fastExp(sc[j] - mx); sum += sc[j] }
                        let o = out + i * c + hd * hs
                        o.update(repeating: 0, count: hs)
                        let inv = 1 / sum
                        for j in 0..<len {
                            let wt = sc[j] * inv
                            let vv = vb + path[p0 + j] * w + kvh
                            for d in 0..<hs { o[d] += wt * vv[d] }
                        }
                    }
                }
            }
        }
    }
}
