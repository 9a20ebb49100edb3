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
    /// Keys and values of every row, per layer, in buffers that grow by doubling.  (rows, C) each
    var keys: [FloatBuffer]
    var values: [FloatBuffer]
    var capacity = 0
    public private(set) var parents: [Int32] = []
    public private(set) var depths: [Int32] = []
    public private(set) var tokens: [Int32] = []
    /// Scratch for one extend call, reused while it is large enough.
    var scratchRows = 0
    var x = FloatBuffer(count: 0), h = FloatBuffer(count: 0), qkv = FloatBuffer(count: 0), att = FloatBuffer(count: 0)
    var tmp = FloatBuffer(count: 0), fc = FloatBuffer(count: 0), fcg = FloatBuffer(count: 0)
    var mean = FloatBuffer(count: 0), rstd = FloatBuffer(count: 0)

    public init(model: GPT2) {
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
        let c = model.config.nEmbd
        if rows > capacity {
            let newCap = max(rows, capacity * 2, 256)
            for l in 0..<keys.count {
                let k = FloatBuffer(count: newCap * c), v = FloatBuffer(count: newCap * c)
                k.pointer.update(from: keys[l].pointer, count: count * c)
                v.pointer.update(from: values[l].pointer, count: count * c)
                keys[l] = k; values[l] = v
            }
            capacity = newCap
        }
    }

    func reserveScratch(_ n: Int) {
        guard n > scratchRows else { return }
        let c = model.config.nEmbd, r = max(n, scratchRows * 2)
        x = FloatBuffer(count: r * c); h = FloatBuffer(count: r * c); qkv = FloatBuffer(count: r * 3 * c)
        att = FloatBuffer(count: r * c); tmp = FloatBuffer(count: r * c); fc = FloatBuffer(count: r * 4 * c)
        fcg = FloatBuffer(count: r * 4 * c); mean = FloatBuffer(count: r); rstd = FloatBuffer(count: r)
        scratchRows = r
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
        reserve(rows: base + n)
        reserveScratch(n)
        for i in 0..<n {
            let p = Int(newParents[i])
            guard p >= -1, p < base + i else { throw .badInput(reason: "KV cache: parent \(p) of new row \(i) is not an earlier row") }
            guard newTokens[i] >= 0, Int(newTokens[i]) < v else { throw .badInput(reason: "KV cache: token \(newTokens[i]) outside the vocabulary") }
            let d = p < 0 ? 0 : depths[p] + 1
            guard Int(d) < cfg.nPositions else { throw .badInput(reason: "KV cache: depth \(d) reaches n_positions (\(cfg.nPositions))") }
            parents.append(Int32(p)); depths.append(d); tokens.append(newTokens[i])
        }
        let p = model.params.pointer, lay = model.layout
        let x = self.x, h = self.h, qkv = self.qkv, att = self.att, tmp = self.tmp, fc = self.fc, fcg = self.fcg
        let mean = self.mean, rstd = self.rstd
        encoderForward(x.pointer, Array(tokens[base...]), Array(depths[base...]), p + lay.wte, p + lay.wpe, n, c)
        let scale = 1 / Float(hs).squareRoot()
        // Root paths of the new rows, the same for every layer: pathRows[pathStart[i]..<pathStart[i+1]].
        var pathStart = [Int](repeating: 0, count: n + 1), pathRows: [Int] = []
        for i in 0..<n {
            var r = base + i
            while r >= 0 { pathRows.append(r); r = Int(parents[r]) }
            pathStart[i + 1] = pathRows.count
        }
        var scores = [Float](repeating: 0, count: (0..<n).map { pathStart[$0 + 1] - pathStart[$0] }.max() ?? 0)
        for (l, o) in lay.layers.enumerated() {
            layernormForward(h.pointer, mean.pointer, rstd.pointer, x.pointer, p + o.ln1w, p + o.ln1b, n, c)
            matmulForward(qkv.pointer, h.pointer, p + o.attnw, p + o.attnb, n, c, 3 * c)
            let kb = keys[l].pointer, vb = values[l].pointer
            for i in 0..<n {
                (kb + (base + i) * c).update(from: qkv.pointer + i * 3 * c + c, count: c)
                (vb + (base + i) * c).update(from: qkv.pointer + i * 3 * c + 2 * c, count: c)
            }
            scores.withUnsafeMutableBufferPointer { sc in
                pathRows.withUnsafeBufferPointer { path in
                    for i in 0..<n {
                        let p0 = pathStart[i], len = pathStart[i + 1] - p0
                        for hd in 0..<nh {
                            let q = qkv.pointer + i * 3 * c + hd * hs
                            var mx = -Float.infinity
                            for j in 0..<len {
                                let k = kb + path[p0 + j] * c + hd * hs
                                var s: Float = 0
                                for d in 0..<hs { s += q[d] * k[d] }
                                sc[j] = s * scale
                                mx = max(mx, sc[j])
                            }
                            var sum: Float = 0
                            for j in 0..<len { sc[j] = fastExp(sc[j] - mx); sum += sc[j] }
                            let out = att.pointer + i * c + hd * hs
                            out.update(repeating: 0, count: hs)
                            let inv = 1 / sum
                            for j in 0..<len {
                                let w = sc[j] * inv
                                let vv = vb + path[p0 + j] * c + hd * hs
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
            guard let dst = lb.baseAddress else { return }
            sgemm(transA: false, transB: true, m: m, n: v, k: c, alpha: 1, a: seln.pointer, lda: c, b: p + lay.wte, ldb: c,
                  beta: 0, c: dst, ldc: v)
        }
        return logits
    }
}
