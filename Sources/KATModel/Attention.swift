import CBLAS
import CKATKernels
#if canImport(Glibc)
import Glibc
#endif

// Tree attention over a packed batch: each query sees its root path only (itself and
// its ancestors). Queries are processed in blocks of up to 64 rows of one attention
// segment: a segment's rows share the same ancestor runs, so each run is one sgemm over
// rows already laid out in qkv (stride 3C for GPT-2), and no key is gathered or copied.
// The scores of a block, (rows x visible keys), are the only scratch: nothing is N x N.
// Backward recomputes the probabilities from the saved log-sum-exp instead of storing them.
//
// Cost: the sum of depths (the causal pairs), plus about 32 keys per query for the part of
// each block's diagonal square that is computed and then masked.

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

/// Scratch for one block's scores and their gradient, and a value per query row.
final class AttentionScratch {
    var scores = FloatBuffer(count: 0)
    var dscores = FloatBuffer(count: 0)
    var perRow = FloatBuffer(count: 0)
    func ensure(_ n: Int, rows: Int) {
        if scores.count < n { scores = FloatBuffer(count: n); dscores = FloatBuffer(count: n) }
        if perRow.count < rows { perRow = FloatBuffer(count: rows) }
    }
}

/// Query rows that attend together. A block's scores are (rows x the keys its last row
/// sees), so of the segment's own triangle only the part inside each block's diagonal
/// square is computed and then masked: about rows/2 keys per query more than needed,
/// instead of half the segment.
let attentionBlockRows = 64

/// One block of queries `[q0, q1)` of a segment: its key runs (ancestors, then the
/// segment's own rows up to q1) with their column offsets in the score rows, the number
/// of columns, and the keys the block's first row sees.
struct AttentionBlock {
    var q0: Int
    var q1: Int
    var runs: [(run: KeyRun, col: Int)]
    var keys: Int
    var valid0: Int
    var rows: Int { q1 - q0 }

    /// The blocks of a segment, in order.
    static func blocks(of seg: AttentionSegment) -> [AttentionBlock] {
        var ancestorRuns: [(run: KeyRun, col: Int)] = []
        var col = 0
        for r in seg.ancestors { ancestorRuns.append((r, col)); col += r.count }
        var out: [AttentionBlock] = []
        var q0 = seg.start
        while q0 < seg.end {
            let q1 = min(q0 + attentionBlockRows, seg.end)
            let own = KeyRun(start: seg.start, end: q1)
            out.append(AttentionBlock(q0: q0, q1: q1, runs: ancestorRuns + [(own, col)], keys: col + own.count,
                                      valid0: col + (q0 - seg.start) + 1))
            q0 = q1
        }
        return out
    }
}

/// s (rows x keys) = q k^T / sqrt(hs) for head h of one block, run by run.
@inline(__always)
private func blockScores(_ s: FPtr, _ b: AttentionBlock, qkv: FPtr, h: Int, shape: AttentionShape) {
    let c3 = shape.stride, hs = shape.headSize
    let scale = 1 / Float(hs).squareRoot()
    let q = qkv + b.q0 * c3 + h * hs
    for (run, col) in b.runs {
        let k = qkv + run.start * c3 + shape.keyOffset + shape.kvHead(h)
        sgemm(transA: false, transB: true, m: b.rows, n: run.count, k: hs, alpha: scale, a: q, lda: c3, b: k, ldb: c3,
              beta: 0, c: s + col, ldc: b.keys)
    }
}

/// out (N, NH hs) from qkv (N, stride); lse (N, NH) saves each query's log-sum-exp for backward.
/// Per block and head: the scores (sgemm), one pass for the maximum, one for exp and the
/// sum, the unnormalised output (sgemm), and the output rows scaled by 1 / sum.
func attentionForward(_ out: FPtr, _ lse: FPtr, _ qkv: FPtr, _ batch: PackedBatch, _ shape: AttentionShape,
                      _ scratch: AttentionScratch) {
    let hs = shape.headSize, c3 = shape.stride, nh = shape.heads, c = shape.queryWidth
    for seg in batch.segments {
        for b in AttentionBlock.blocks(of: seg) {
            let m = b.rows, kt = b.keys
            scratch.ensure(m * kt, rows: m)
            let s = scratch.scores.pointer, inv = scratch.perRow.pointer
            for h in 0..<nh {
                blockScores(s, b, qkv: qkv, h: h, shape: shape)
                kat_softmax_rows(s, kt, m, kt, b.valid0, lse + b.q0 * nh + h, nh, inv)
                let o = out + b.q0 * c + h * hs
                for (idx, (run, col)) in b.runs.enumerated() {
                    let v = qkv + run.start * c3 + shape.valueOffset + shape.kvHead(h)
                    sgemm(transA: false, transB: false, m: m, n: hs, k: run.count, alpha: 1, a: s + col, lda: kt,
                          b: v, ldb: c3, beta: idx == 0 ? 0 : 1, c: o, ldc: c)
                }
                kat_scale_rows(o, c, m, hs, inv)
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
        for b in AttentionBlock.blocks(of: seg) {
            let m = b.rows, kt = b.keys
            scratch.ensure(m * kt, rows: m)
            let p = scratch.scores.pointer, dp = scratch.dscores.pointer, dot = scratch.perRow.pointer
            for h in 0..<nh {
                // P from the saved log-sum-exp (0 where masked).
                blockScores(p, b, qkv: qkv, h: h, shape: shape)
                kat_exp_rows(p, kt, m, kt, b.valid0, lse + b.q0 * nh + h, nh)
                let q = qkv + b.q0 * c3 + h * hs
                let dq = dqkv + b.q0 * c3 + h * hs
                let d = dout + b.q0 * c + h * hs
                let o = out + b.q0 * c + h * hs
                // dP = dO V^T, and dV += P^T dO, run by run.
                for (run, col) in b.runs {
                    let v = qkv + run.start * c3 + shape.valueOffset + shape.kvHead(h)
                    let dv = dqkv + run.start * c3 + shape.valueOffset + shape.kvHead(h)
                    sgemm(transA: false, transB: true, m: m, n: run.count, k: hs, alpha: 1, a: d, lda: c, b: v, ldb: c3,
                          beta: 0, c: dp + col, ldc: kt)
                    sgemm(transA: true, transB: false, m: run.count, n: hs, k: m, alpha: 1, a: p + col, lda: kt, b: d, ldb: c,
                          beta: 1, c: dv, ldc: c3)
                }
                // dS = P * (dP - rowdot(dO, O)) * scale; masked entries have P = 0.
                kat_row_dots(dot, d, c, o, c, m, hs)
                kat_softmax_backward_rows(dp, p, kt, m, kt, dot, scale)
                // dQ += dS K, dK += dS^T Q, run by run.
                for (run, col) in b.runs {
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
}
