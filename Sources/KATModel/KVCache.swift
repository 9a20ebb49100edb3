#if canImport(Glibc)
import Glibc
#endif

/// Incremental GPT-2 inference over a tree of cached keys and values.
///
/// Rows are appended, never removed; each row has a parent row (-1 at a root) and sees
/// its root path, exactly as in training. Any number of sequences can continue from any
/// row, so a prompt prefilled once serves a whole group, and a sample that branches
/// mid-answer shares everything before the branch point.
public final class KVCache {
    public let model: GPT2
    /// Keys and values of every row, per layer.        (rows, C) each
    var keys: [[Float]]
    var values: [[Float]]
    public private(set) var parents: [Int32] = []
    public private(set) var depths: [Int32] = []
    public private(set) var tokens: [Int32] = []

    public init(model: GPT2) {
        self.model = model
        keys = Array(repeating: [], count: model.config.nLayer)
        values = Array(repeating: [], count: model.config.nLayer)
    }

    public var count: Int { parents.count }

    /// Drops every row (keeps the allocated capacity).
    public func reset() {
        for l in 0..<keys.count { keys[l].removeAll(keepingCapacity: true); values[l].removeAll(keepingCapacity: true) }
        parents.removeAll(keepingCapacity: true); depths.removeAll(keepingCapacity: true); tokens.removeAll(keepingCapacity: true)
    }

    /// Appends rows and returns the logits (before temperature) of the rows in `outputs`.
    /// - Parameters:
    ///   - tokens: the new rows' tokens.
    ///   - parents: each new row's parent: an existing row, an earlier new row, or -1.
    ///   - outputs: indices into the new rows whose next-token logits are wanted.
    /// - Returns: (outputs.count, V) logits, row-major.
    public func extend(tokens newTokens: [Int32], parents newParents: [Int32], outputs: [Int]) throws(ModelError) -> [Float] {
        let cfg = model.config
        let c = cfg.nEmbd, nh = cfg.nHead, hs = c / nh, v = cfg.vocabSize
        let n = newTokens.count, base = count
        precondition(newParents.count == n, "KVCache.extend: tokens and parents differ in length")
        for i in 0..<n {
            let p = Int(newParents[i])
            guard p >= -1, p < base + i else { throw .badInput(reason: "KV cache: parent \(p) of new row \(i) is not an earlier row") }
            guard newTokens[i] >= 0, Int(newTokens[i]) < v else { throw .badInput(reason: "KV cache: token \(newTokens[i]) outside the vocabulary") }
            let d = p < 0 ? 0 : depths[p] + 1
            guard Int(d) < cfg.nPositions else { throw .badInput(reason: "KV cache: depth \(d) reaches n_positions (\(cfg.nPositions))") }
            parents.append(Int32(p)); depths.append(d); tokens.append(newTokens[i])
        }
        let p = model.params.pointer, lay = model.layout
        let x = FloatBuffer(count: n * c), h = FloatBuffer(count: n * c), qkv = FloatBuffer(count: n * 3 * c)
        let att = FloatBuffer(count: n * c), tmp = FloatBuffer(count: n * c), fc = FloatBuffer(count: n * 4 * c)
        let fcg = FloatBuffer(count: n * 4 * c), mean = FloatBuffer(count: n), rstd = FloatBuffer(count: n)
        encoderForward(x.pointer, Array(tokens[base...]), Array(depths[base...]), p + lay.wte, p + lay.wpe, n, c)
        let scale = 1 / Float(hs).squareRoot()
        var path: [Int] = []
        var scores: [Float] = []
        for (l, o) in lay.layers.enumerated() {
            layernormForward(h.pointer, mean.pointer, rstd.pointer, x.pointer, p + o.ln1w, p + o.ln1b, n, c)
            matmulForward(qkv.pointer, h.pointer, p + o.attnw, p + o.attnb, n, c, 3 * c)
            keys[l].reserveCapacity((base + n) * c)
            values[l].reserveCapacity((base + n) * c)
            for i in 0..<n {
                keys[l].append(contentsOf: UnsafeBufferPointer(start: qkv.pointer + i * 3 * c + c, count: c))
                values[l].append(contentsOf: UnsafeBufferPointer(start: qkv.pointer + i * 3 * c + 2 * c, count: c))
            }
            keys[l].withUnsafeBufferPointer { kb in
                values[l].withUnsafeBufferPointer { vb in
                    for i in 0..<n {
                        path.removeAll(keepingCapacity: true)
                        var r = base + i
                        while r >= 0 { path.append(r); r = Int(parents[r]) }
                        if scores.count < path.count { scores = [Float](repeating: 0, count: path.count) }
                        for hd in 0..<nh {
                            let q = qkv.pointer + i * 3 * c + hd * hs
                            var mx = -Float.infinity
                            for (j, row) in path.enumerated() {
                                let k = kb.baseAddress! + row * c + hd * hs
                                var s: Float = 0
                                for d in 0..<hs { s += q[d] * k[d] }
                                scores[j] = s * scale
                                mx = max(mx, scores[j])
                            }
                            var sum: Float = 0
                            for j in 0..<path.count { scores[j] = fastExp(scores[j] - mx); sum += scores[j] }
                            let out = att.pointer + i * c + hd * hs
                            out.update(repeating: 0, count: hs)
                            for (j, row) in path.enumerated() {
                                let w = scores[j] / sum
                                let vv = vb.baseAddress! + row * c + hd * hs
                                for d in 0..<hs { out[d] += w * vv[d] }
                            }
                        }
                    }
                }
            }
            matmulForward(tmp.pointer, att.pointer, p + o.attprojw, p + o.attprojb, n, c, c)
            accumulate(x.pointer, tmp.pointer, n * c)
            layernormForward(h.pointer, mean.pointer, rstd.pointer, x.pointer, p + o.ln2w, p + o.ln2b, n, c)
            matmulForward(fc.pointer, h.pointer, p + o.fcw, p + o.fcb, n, c, 4 * c)
            geluForward(fcg.pointer, fc.pointer, n * 4 * c)
            matmulForward(tmp.pointer, fcg.pointer, p + o.fcprojw, p + o.fcprojb, n, 4 * c, c)
            accumulate(x.pointer, tmp.pointer, n * c)
        }
        // ln_f and the head, for the requested rows only.
        let m = outputs.count
        if m == 0 { return [] }
        let sel = FloatBuffer(count: m * c), seln = FloatBuffer(count: m * c)
        let mean2 = FloatBuffer(count: m), rstd2 = FloatBuffer(count: m)
        for (k, i) in outputs.enumerated() { (sel.pointer + k * c).update(from: x.pointer + i * c, count: c) }
        layernormForward(seln.pointer, mean2.pointer, rstd2.pointer, sel.pointer, p + lay.lnfw, p + lay.lnfb, m, c)
        var logits = [Float](repeating: 0, count: m * v)
        logits.withUnsafeMutableBufferPointer { lb in
            sgemm(transA: false, transB: true, m: m, n: v, k: c, alpha: 1, a: seln.pointer, lda: c, b: p + lay.wte, ldb: c,
                  beta: 0, c: lb.baseAddress!, ldc: v)
        }
        return logits
    }
}
