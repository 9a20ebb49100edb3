import CKATKernels
#if canImport(Glibc)
import Glibc
#endif

/// The output head of every family over a packed batch: logits z = x W^T / tau for the
/// rows that have scored children, computed in tiles of (rows x vocabulary slice) of about
/// 1 MB, so the logits of a tile stay in cache while their softmax is taken and are never
/// stored for a batch (with GPT-2's 50257-token vocabulary, or Qwen2's 151936, they would
/// dominate memory). Each row's softmax is summarised tile by tile (maximum, sum of
/// exponentials, and the sum that gives the entropy, merged as in online softmax);
/// backward recomputes each tile's logits.
///
/// x is the final norm's output (N, C); W is the head matrix (V, C): the token embedding
/// when the head is tied, `lm_head.weight` otherwise.
///
/// When the logits of all head rows take no more memory than `keepLimit` (the family passes
/// its activation workspace's size, so keeping them at most doubles it), forward keeps them
/// and backward reads them instead of recomputing: one sgemm of the four saved.
final class OutputHead {
    /// Logits / tau of every head row of the last forward, when kept.   (headRows, V)
    var kept = FloatBuffer(count: 0)
    var keptRows = 0
    var input = FloatBuffer(count: 0)   // (chunk, C) rows of x gathered
    var tile = FloatBuffer(count: 0)    // (chunk, vocabulary tile)
    var dinput = FloatBuffer(count: 0)  // (chunk, C)
    var summary = FloatBuffer(count: 0) // (chunk, 3) running softmax summary of each row

    /// Head rows per chunk: every vocabulary tile of the head weight is read once per chunk,
    /// so a chunk is large enough to make that read small beside its sgemm.
    static let chunkRows = 256

    /// Floats of logits in a tile (1 MB). Tests lower it to cut a small vocabulary into many tiles.
    nonisolated(unsafe) static var tileFloats = 1 << 18

    /// Vocabulary entries per tile for `rows` rows: about `tileFloats` logits, a multiple of 16.
    static func tileColumns(rows: Int, vocabSize v: Int) -> Int {
        let cols = max(16, tileFloats / max(1, rows) / 16 * 16)
        return min(v, cols)
    }

    private func ensure(_ rows: Int, _ cols: Int, _ c: Int) {
        if input.count < rows * c { input = FloatBuffer(count: rows * c); dinput = FloatBuffer(count: rows * c) }
        if tile.count < rows * cols { tile = FloatBuffer(count: rows * cols) }
        if summary.count < 3 * rows { summary = FloatBuffer(count: 3 * rows) }
    }

    /// Gathers x[headRows[k0..<k1]] into `input`.
    private func gather(_ batch: PackedBatch, _ x: FPtr, _ k0: Int, _ k1: Int, _ c: Int) {
        let inp = input.pointer
        batch.headRows.withUnsafeBufferPointer { hr in
            for k in k0..<k1 { (inp + (k - k0) * c).update(from: x + Int(hr[k]) * c, count: c) }
        }
    }

    /// z (rows x (v1 - v0), leading dimension ld) = input @ W[v0..<v1]^T / tau.
    @inline(__always)
    private func logitsTile(_ rows: Int, _ weight: FPtr, _ v0: Int, _ v1: Int, _ tau: Float, _ c: Int, into z: FPtr, ld: Int) {
        sgemm(transA: false, transB: true, m: rows, n: v1 - v0, k: c, alpha: 1 / tau, a: input.pointer, lda: c,
              b: weight + v0 * c, ldb: c, beta: 0, c: z, ldc: ld)
    }

    /// Bytes held between forward and backward (the kept logits).
    var bytes: Int { 4 * kept.count }

    /// Frees the kept logits and the scratch.
    func release() {
        kept = FloatBuffer(count: 0); keptRows = 0
        input = FloatBuffer(count: 0); dinput = FloatBuffer(count: 0); tile = FloatBuffer(count: 0)
    }

    /// Scores every scored row from its parent's logits; saves each head row's log-sum-exp
    /// in `rowLse` (N) for backward, and the logits too when they fit in `keepLimit` bytes.
    func forward(_ rowLse: FPtr, _ batch: PackedBatch, _ x: FPtr, _ weight: FPtr, _ tau: Float, _ c: Int, _ v: Int,
                 keepLimit: Int = 0) -> ForwardResult {
        let n = batch.count
        var logprobs = [Float](repeating: 0, count: n)
        var entropies = [Float](repeating: 0, count: n)
        let heads = batch.headRows.count
        let chunk = min(OutputHead.chunkRows, heads)
        keptRows = 0
        guard chunk > 0 else { return ForwardResult(logprobs: logprobs, entropies: entropies) }
        let keep = 4 * heads * v <= keepLimit
        if keep {
            if kept.count < heads * v { kept = FloatBuffer(count: 0); kept = FloatBuffer(count: heads * v) }
            keptRows = heads
        } else if kept.count > 0 {
            kept = FloatBuffer(count: 0)
        }
        let cols = OutputHead.tileColumns(rows: chunk, vocabSize: v)
        ensure(chunk, cols, c)
        let state = summary.pointer
        var k0 = 0
        while k0 < heads {
            let k1 = min(k0 + chunk, heads), rows = k1 - k0
            gather(batch, x, k0, k1, c)
            for r in 0..<rows { state[3 * r] = -.infinity; state[3 * r + 1] = 0; state[3 * r + 2] = 0 }
            var v0 = 0
            while v0 < v {
                let v1 = min(v0 + cols, v), w = v1 - v0
                // Into the kept logits (leading dimension V) or the tile (leading dimension w).
                let z = keep ? kept.pointer + k0 * v + v0 : tile.pointer, ld = keep ? v : w
                logitsTile(rows, weight, v0, v1, tau, c, into: z, ld: ld)
                for r in 0..<rows { kat_softmax_summary(z + r * ld, w, 1, state + 3 * r) }
                // The logits of the children's tokens that fall in this tile.
                for k in k0..<k1 {
                    for ci in Int(batch.childStart[k])..<Int(batch.childStart[k + 1]) {
                        let u = Int(batch.children[ci]), t = Int(batch.tokens[u])
                        if t >= v0 && t < v1 { logprobs[u] = z[(k - k0) * ld + t - v0] }
                    }
                }
                v0 = v1
            }
            for k in k0..<k1 {
                let r = k - k0
                let logSum = logf(state[3 * r + 1])
                let lse = state[3 * r] + logSum
                rowLse[Int(batch.headRows[k])] = lse
                // H = log S - W / S, with S and W taken relative to the maximum.
                let h = logSum - state[3 * r + 2] / state[3 * r + 1]
                for ci in Int(batch.childStart[k])..<Int(batch.childStart[k + 1]) {
                    let u = Int(batch.children[ci])
                    logprobs[u] -= lse
                    entropies[u] = h
                }
            }
            k0 = k1
        }
        return ForwardResult(logprobs: logprobs, entropies: entropies)
    }

    /// dx (N, C) = d(loss)/dx, overwritten (0 on rows without scored children); dweight (V, C) +=.
    /// dz = sum over children u of dl_u (onehot(token_u) - softmax(z)); d(logits) = dz / tau.
    func backward(_ dx: FPtr, _ dweight: FPtr, _ dlogprobs: [Float], _ batch: PackedBatch, _ x: FPtr, _ weight: FPtr,
                  _ rowLse: FPtr, _ tau: Float, _ c: Int, _ v: Int) {
        let n = batch.count
        dx.update(repeating: 0, count: n * c)
        let heads = batch.headRows.count
        let chunk = min(OutputHead.chunkRows, heads)
        guard chunk > 0 else { return }
        let cols = OutputHead.tileColumns(rows: chunk, vocabSize: v)
        ensure(chunk, cols, c)
        let invTau = 1 / tau
        var k0 = 0
        while k0 < heads {
            let k1 = min(k0 + chunk, heads), rows = k1 - k0
            gather(batch, x, k0, k1, c)
            var gsum = [Float](repeating: 0, count: rows)
            for k in k0..<k1 {
                for ci in Int(batch.childStart[k])..<Int(batch.childStart[k + 1]) { gsum[k - k0] += dlogprobs[Int(batch.children[ci])] }
            }
            var v0 = 0
            while v0 < v {
                let v1 = min(v0 + cols, v), w = v1 - v0
                // The kept logits (overwritten by their gradient), or the tile recomputed.
                let keep = keptRows == heads
                let z = keep ? kept.pointer + k0 * v + v0 : tile.pointer, ld = keep ? v : w
                if !keep { logitsTile(rows, weight, v0, v1, tau, c, into: z, ld: ld) }
                for k in k0..<k1 {
                    let r = k - k0
                    kat_scaled_probabilities(z + r * ld, w, rowLse[Int(batch.headRows[k])], -gsum[r] * invTau)
                    for ci in Int(batch.childStart[k])..<Int(batch.childStart[k + 1]) {
                        let u = Int(batch.children[ci]), t = Int(batch.tokens[u])
                        if t >= v0 && t < v1 { z[r * ld + t - v0] += dlogprobs[u] * invTau }
                    }
                }
                // dX += dlogits @ W[v0..<v1]; dW[v0..<v1] += dlogits^T @ X
                sgemm(transA: false, transB: false, m: rows, n: c, k: w, alpha: 1, a: z, lda: ld,
                      b: weight + v0 * c, ldb: c, beta: v0 == 0 ? 0 : 1, c: dinput.pointer, ldc: c)
                sgemm(transA: true, transB: false, m: w, n: c, k: rows, alpha: 1, a: z, lda: ld,
                      b: input.pointer, ldb: c, beta: 1, c: dweight + v0 * c, ldc: c)
                v0 = v1
            }
            for k in k0..<k1 {
                (dx + Int(batch.headRows[k]) * c).update(from: dinput.pointer + (k - k0) * c, count: c)
            }
            k0 = k1
        }
        keptRows = 0 // consumed
    }

    /// Logits (before temperature) of the given rows of x.   (rows, V)
    static func logits(rows: [Int], _ x: FPtr, _ weight: FPtr, _ n: Int, _ c: Int, _ v: Int) -> [[Float]] {
        rows.map { r in
            precondition(r >= 0 && r < n, "logits: row \(r) outside the batch")
            var out = [Float](repeating: 0, count: v)
            out.withUnsafeMutableBufferPointer { o in
                guard let base = o.baseAddress else { return }
                sgemm(transA: false, transB: true, m: 1, n: v, k: c, alpha: 1, a: x + r * c, lda: c,
                      b: weight, ldb: c, beta: 0, c: base, ldc: v)
            }
            return out
        }
    }
}
