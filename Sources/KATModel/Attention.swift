import CBLAS
#if canImport(Glibc)
import Glibc
#endif

// Tree attention over a packed batch: each query sees its root path only (itself and
// its ancestors). Queries are processed one attention segment at a time: a segment's
// rows share the same ancestor runs, so each run is one sgemm over rows already laid
// out in qkv (stride 3C for GPT-2), and no key is gathered or copied. The scores of a segment,
// (rows x visible keys), are the only scratch: nothing is N x N. Backward recomputes the
// probabilities from the saved log-sum-exp instead of storing them.
//
// Cost: about sum over segments of rows * keys, that is the sum of depths, plus up to
// 2x on the triangle inside a segment (computed then masked).

/// The heads of one attention layer and where q, k and v sit in a row of the qkv buffer:
/// `heads` query heads, then `kvHeads` key heads, then `kvHeads` value heads, each
/// `headSize` floats. Query head h reads key/value head h / (heads / kvHeads)
/// (grouped-query attention; GPT-2 has kvHeads = heads). The output row holds the
/// `heads` heads' outputs, `queryWidth` floats.
struct AttentionShape {
    let heads: Int
    let kvHeads: Int
    let headSize: Int
    var queryWidth: Int { heads * headSize }
    var kvWidth: Int { kvHeads * headSize }
    /// Floats per row of the qkv buffer.
    var stride: Int { queryWidth + 2 * kvWidth }
    var keyOffset: Int { queryWidth }
    var valueOffset: Int { queryWidth + kvWidth }
    /// Offset in a row of the key/value head that query head h reads.
    @inline(__always) func kvHead(_ h: Int) -> Int { h / (heads / kvHeads) * headSize }

    /// GPT-2's shape: NH heads of C / NH, keys and values for every head.
    static func gpt2(c: Int, nh: Int) -> AttentionShape { AttentionShape(heads: nh, kvHeads: nh, headSize: c / nh) }
}

/// Scratch for one segment's scores and their gradient.
final class AttentionScratch {
    var scores = FloatBuffer(count: 0)
    var dscores = FloatBuffer(count: 0)
    func ensure(_ n: Int) {
        if scores.count < n { scores = FloatBuffer(count: n); dscores = FloatBuffer(count: n) }
    }
}

/// Visible key runs of a segment, self run last, with their column offsets.
@inline(__always)
private func keyRuns(_ seg: AttentionSegment) -> [(run: KeyRun, col: Int)] {
    var out: [(KeyRun, Int)] = []
    out.reserveCapacity(seg.ancestors.count + 1)
    var col = 0
    for r in seg.ancestors { out.append((r, col)); col += r.count }
    out.append((KeyRun(start: seg.start, end: seg.end), col))
    return out
}

/// Fills `s` (m x kt) with the probabilities of one head of one segment; when `lse` is
/// given (backward) uses it, otherwise computes and stores it.
@inline(__always)
private func segmentProbabilities(_ s: FPtr, _ seg: AttentionSegment, _ runs: [(run: KeyRun, col: Int)], kt: Int,
                                  qkv: FPtr, h: Int, shape: AttentionShape, lse: FPtr, recompute: Bool) {
    let m = seg.length, c3 = shape.stride, hs = shape.headSize, nh = shape.heads
    let scale = 1 / Float(hs).squareRoot()
    let q = qkv + seg.start * c3 + h * hs
    for (run, col) in runs {
        let k = qkv + run.start * c3 + shape.keyOffset + shape.kvHead(h)
        sgemm(transA: false, transB: true, m: m, n: run.count, k: hs, alpha: scale, a: q, lda: c3, b: k, ldb: c3,
              beta: 0, c: s + col, ldc: kt)
    }
    let selfCol = kt - m
    for i in 0..<m {
        let row = s + i * kt
        let valid = selfCol + i + 1 // keys 0..<valid are visible
        let l: Float
        if recompute {
            l = lse[(seg.start + i) * nh + h]
        } else {
            var mx = -Float.infinity
            for j in 0..<valid { mx = max(mx, row[j]) }
            var sum: Float = 0
            for j in 0..<valid { sum += fastExp(row[j] - mx) }
            l = mx + logf(sum)
            lse[(seg.start + i) * nh + h] = l
        }
        for j in 0..<valid { row[j] = fastExp(row[j] - l) }
        for j in valid..<kt { row[j] = 0 }
    }
}

/// out (N, NH hs) from qkv (N, stride); lse (N, NH) saves each query's log-sum-exp for backward.
func attentionForward(_ out: FPtr, _ lse: FPtr, _ qkv: FPtr, _ batch: PackedBatch, _ shape: AttentionShape,
                      _ scratch: AttentionScratch) {
    let hs = shape.headSize, c3 = shape.stride, nh = shape.heads, c = shape.queryWidth
    for seg in batch.segments {
        let runs = keyRuns(seg)
        let kt = seg.keyCount, m = seg.length
        scratch.ensure(m * kt)
        let s = scratch.scores.pointer
        for h in 0..<nh {
            segmentProbabilities(s, seg, runs, kt: kt, qkv: qkv, h: h, shape: shape, lse: lse, recompute: false)
            let o = out + seg.start * c + h * hs
            for (idx, (run, col)) in runs.enumerated() {
                let v = qkv + run.start * c3 + shape.valueOffset + shape.kvHead(h)
                sgemm(transA: false, transB: false, m: m, n: hs, k: run.count, alpha: 1, a: s + col, lda: kt,
                      b: v, ldb: c3, beta: idx == 0 ? 0 : 1, c: o, ldc: c)
            }
        }
    }
}

/// dqkv (N, stride) += gradient of attention given dout (N, NH hs), out (N, NH hs), qkv and
/// lse. Key and value heads shared by several query heads accumulate each one's part.
func attentionBackward(_ dqkv: FPtr, _ dout: FPtr, _ out: FPtr, _ qkv: FPtr, _ lse: FPtr, _ batch: PackedBatch,
                       _ shape: AttentionShape, _ scratch: AttentionScratch) {
    let hs = shape.headSize, c3 = shape.stride, nh = shape.heads, c = shape.queryWidth
    let scale = 1 / Float(hs).squareRoot()
    for seg in batch.segments {
        let runs = keyRuns(seg)
        let kt = seg.keyCount, m = seg.length
        scratch.ensure(m * kt)
        let p = scratch.scores.pointer, dp = scratch.dscores.pointer
        for h in 0..<nh {
            segmentProbabilities(p, seg, runs, kt: kt, qkv: qkv, h: h, shape: shape, lse: lse, recompute: true)
            let q = qkv + seg.start * c3 + h * hs
            let dq = dqkv + seg.start * c3 + h * hs
            let d = dout + seg.start * c + h * hs
            let o = out + seg.start * c + h * hs
            // dP = dO V^T, and dV += P^T dO, run by run.
            for (run, col) in runs {
                let v = qkv + run.start * c3 + shape.valueOffset + shape.kvHead(h)
                let dv = dqkv + run.start * c3 + shape.valueOffset + shape.kvHead(h)
                sgemm(transA: false, transB: true, m: m, n: run.count, k: hs, alpha: 1, a: d, lda: c, b: v, ldb: c3,
                      beta: 0, c: dp + col, ldc: kt)
                sgemm(transA: true, transB: false, m: run.count, n: hs, k: m, alpha: 1, a: p + col, lda: kt, b: d, ldb: c,
                      beta: 1, c: dv, ldc: c3)
            }
            // dS = P * (dP - rowdot(dO, O)) * scale; masked entries have P = 0.
            for i in 0..<m {
                var dot: Float = 0
                let di = d + i * c, oi = o + i * c
                for j in 0..<hs { dot += di[j] * oi[j] }
                let pr = p + i * kt, dr = dp + i * kt
                for j in 0..<kt { dr[j] = pr[j] * (dr[j] - dot) * scale }
            }
            // dQ += dS K, dK += dS^T Q, run by run.
            for (run, col) in runs {
                let k = qkv + run.start * c3 + shape.keyOffset + shape.kvHead(h)
                let dk = dqkv + run.start * c3 + shape.keyOffset + shape.kvHead(h)
                sgemm(transA: false, transB: false, m: m, n: hs, k: run.count, alpha: 1, a: dp + col, lda: kt, b: k, ldb: c3,
                      beta: 1, c: dq, ldc: c3)
                sgemm(transA: true, transB: false, m: run.count, n: hs, k: m, alpha: 1, a: dp + col, lda: kt, b: q, ldb: c3,
                      beta: 1, c: dk, ldc: c3)
            }
        }
    }
}
