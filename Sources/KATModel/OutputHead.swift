#if canImport(Glibc)
import Glibc
#endif

/// The output head of every family over a packed batch: logits z = x W^T / tau for the
/// rows that have children, in chunks of rows so that a chunk's logits stay near 16 MB
/// (logits are never stored for the whole batch; backward recomputes each chunk).
///
/// x is the final norm's output (N, C); W is the head matrix (V, C): the token embedding
/// when the head is tied, `lm_head.weight` otherwise.
final class OutputHead {
    var input = FloatBuffer(count: 0)   // (chunk, C)
    var chunkLogits = FloatBuffer(count: 0) // (chunk, V)
    var dinput = FloatBuffer(count: 0)  // (chunk, C)

    /// Rows per chunk of the output head, so a chunk's logits stay near 16 MB.
    static func chunkRows(vocabSize v: Int) -> Int { max(64, (1 << 22) / v) }

    private func ensure(_ rows: Int, _ c: Int, _ v: Int) {
        if input.count < rows * c { input = FloatBuffer(count: rows * c); dinput = FloatBuffer(count: rows * c) }
        if chunkLogits.count < rows * v { chunkLogits = FloatBuffer(count: rows * v) }
    }

    /// z (rows x V) = x[headRows[k0..<k1]] @ W^T / tau.
    private func logitsChunk(_ batch: PackedBatch, _ x: FPtr, _ weight: FPtr, _ k0: Int, _ k1: Int, _ tau: Float, _ c: Int, _ v: Int) {
        let rows = k1 - k0
        let inp = input.pointer
        for k in k0..<k1 { (inp + (k - k0) * c).update(from: x + Int(batch.headRows[k]) * c, count: c) }
        sgemm(transA: false, transB: true, m: rows, n: v, k: c, alpha: 1 / tau, a: inp, lda: c,
              b: weight, ldb: c, beta: 0, c: chunkLogits.pointer, ldc: v)
    }

    /// Scores every row from its parent's logits; saves each head row's log-sum-exp in
    /// `rowLse` (N) for backward.
    func forward(_ rowLse: FPtr, _ batch: PackedBatch, _ x: FPtr, _ weight: FPtr, _ tau: Float, _ c: Int, _ v: Int) -> ForwardResult {
        let n = batch.count
        var logprobs = [Float](repeating: 0, count: n)
        var entropies = [Float](repeating: 0, count: n)
        let chunk = OutputHead.chunkRows(vocabSize: v)
        ensure(min(chunk, batch.headRows.count), c, v)
        var k0 = 0
        while k0 < batch.headRows.count {
            let k1 = min(k0 + chunk, batch.headRows.count)
            logitsChunk(batch, x, weight, k0, k1, tau, c, v)
            for k in k0..<k1 {
                let z = chunkLogits.pointer + (k - k0) * v
                var mx = -Float.infinity
                for j in 0..<v { mx = max(mx, z[j]) }
                var sum: Float = 0, wsum: Float = 0
                for j in 0..<v {
                    let e = fastExp(z[j] - mx)
                    sum += e
                    wsum += e * (z[j] - mx)
                }
                let lse = mx + logf(sum)
                let row = Int(batch.headRows[k])
                rowLse[row] = lse
                // H = lse - E_p[z] = log(sum) - E_p[z - mx]
                let h = logf(sum) - wsum / sum
                for ci in Int(batch.childStart[k])..<Int(batch.childStart[k + 1]) {
                    let u = Int(batch.children[ci])
                    logprobs[u] = z[Int(batch.tokens[u])] - lse
                    entropies[u] = h
                }
            }
            k0 = k1
        }
        return ForwardResult(logprobs: logprobs, entropies: entropies)
    }

    /// dx (N, C) = d(loss)/dx, overwritten (0 on rows without children); dweight (V, C) +=.
    /// dz = sum over children u of dl_u (onehot(token_u) - softmax(z)); d(logits) = dz / tau.
    func backward(_ dx: FPtr, _ dweight: FPtr, _ dlogprobs: [Float], _ batch: PackedBatch, _ x: FPtr, _ weight: FPtr,
                  _ rowLse: FPtr, _ tau: Float, _ c: Int, _ v: Int) {
        let n = batch.count
        dx.update(repeating: 0, count: n * c)
        let chunk = OutputHead.chunkRows(vocabSize: v)
        ensure(min(chunk, batch.headRows.count), c, v)
        var k0 = 0
        while k0 < batch.headRows.count {
            let k1 = min(k0 + chunk, batch.headRows.count)
            logitsChunk(batch, x, weight, k0, k1, tau, c, v)
            let rows = k1 - k0
            for k in k0..<k1 {
                let z = chunkLogits.pointer + (k - k0) * v
                let lse = rowLse[Int(batch.headRows[k])]
                var gsum: Float = 0
                for ci in Int(batch.childStart[k])..<Int(batch.childStart[k + 1]) { gsum += dlogprobs[Int(batch.children[ci])] }
                let invTau = 1 / tau
                for j in 0..<v { z[j] = -gsum * fastExp(z[j] - lse) * invTau }
                for ci in Int(batch.childStart[k])..<Int(batch.childStart[k + 1]) {
                    let u = Int(batch.children[ci])
                    z[Int(batch.tokens[u])] += dlogprobs[u] * invTau
                }
            }
            // dX = dlogits @ W; dW += dlogits^T @ X
            sgemm(transA: false, transB: false, m: rows, n: c, k: v, alpha: 1, a: chunkLogits.pointer, lda: v,
                  b: weight, ldb: c, beta: 0, c: dinput.pointer, ldc: c)
            sgemm(transA: true, transB: false, m: v, n: c, k: rows, alpha: 1, a: chunkLogits.pointer, lda: v,
                  b: input.pointer, ldb: c, beta: 1, c: dweight, ldc: c)
            for k in k0..<k1 {
                (dx + Int(batch.headRows[k]) * c).update(from: dinput.pointer + (k - k0) * c, count: c)
            }
            k0 = k1
        }
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
