import CBLAS
import CKATKernels
#if canImport(Glibc)
import Glibc
#endif

// Forward/backward pairs of GPT-2's layers, in the style of llm.c: outputs, inputs,
// weights, then dimensions. Backward functions accumulate (+=) into their gradient
// outputs; callers zero explicitly. Pointers are raw so that hot loops carry no bounds
// checks and no copy-on-write.

typealias FPtr = UnsafeMutablePointer<Float>

// MARK: - sgemm

/// Row-major C (m x n) = alpha * op(A) (m x k) * op(B) (k x n) + beta * C.
@inline(__always)
func sgemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
           a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
           beta: Float, c: FPtr, ldc: Int) {
    if m == 0 || n == 0 { return }
    if k == 0 {
        if beta == 0 {
            for i in 0..<m { (c + i * ldc).update(repeating: 0, count: n) }
        } else if beta != 1 {
            for i in 0..<m { for j in 0..<n { c[i * ldc + j] *= beta } }
        }
        return
    }
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
}

// MARK: - Encoder

/// out[i] = wte[tokens[i]] + wpe[depths[i]].                 out (N, C)
func encoderForward(_ out: FPtr, _ tokens: [Int32], _ depths: [Int32], _ wte: FPtr, _ wpe: FPtr, _ n: Int, _ c: Int) {
    tokens.withUnsafeBufferPointer { tk in
        depths.withUnsafeBufferPointer { dp in
            guard let t = tk.baseAddress, let d = dp.baseAddress else { return }
            encoderForward(out, t, d, wte, wpe, n, c)
        }
    }
}

/// The same from pointers to the N tokens and depths.
func encoderForward(_ out: FPtr, _ tokens: UnsafePointer<Int32>, _ depths: UnsafePointer<Int32>, _ wte: FPtr, _ wpe: FPtr,
                    _ n: Int, _ c: Int) {
    for i in 0..<n { kat_add_bias_rows(out + i * c, wte + Int(tokens[i]) * c, wpe + Int(depths[i]) * c, 1, c) }
}

func encoderBackward(_ dwte: FPtr, _ dwpe: FPtr, _ dout: FPtr, _ tokens: [Int32], _ depths: [Int32], _ n: Int, _ c: Int) {
    tokens.withUnsafeBufferPointer { tk in
        depths.withUnsafeBufferPointer { dp in
            for i in 0..<n {
                let d = dout + i * c, w = dwte + Int(tk[i]) * c, p = dwpe + Int(dp[i]) * c
                for j in 0..<c { w[j] += d[j]; p[j] += d[j] }
            }
        }
    }
}

// MARK: - LayerNorm (eps 1e-5)

/// out (N, C), mean (N), rstd (N) from inp (N, C).
@inline(__always)
func layernormForward(_ out: FPtr, _ mean: FPtr, _ rstd: FPtr, _ inp: FPtr, _ weight: FPtr, _ bias: FPtr, _ n: Int, _ c: Int) {
    kat_layernorm_forward(out, mean, rstd, inp, weight, bias, n, c, 1e-5)
}

/// dinp (N, C) +=, dweight (C) +=, dbias (C) += the LayerNorm gradients given dout (N, C).
@inline(__always)
func layernormBackward(_ dinp: FPtr, _ dweight: FPtr, _ dbias: FPtr, _ dout: FPtr, _ inp: FPtr, _ weight: FPtr,
                       _ mean: FPtr, _ rstd: FPtr, _ n: Int, _ c: Int) {
    kat_layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, n, c)
}

// MARK: - Matmul (Hugging Face Conv1D: weight stored (C, OC))

/// out (N, OC) = inp (N, C) @ weight (C, OC) + bias (OC).
func matmulForward(_ out: FPtr, _ inp: FPtr, _ weight: FPtr, _ bias: FPtr, _ n: Int, _ c: Int, _ oc: Int) {
    kat_fill_rows(out, bias, n, oc)
    sgemm(transA: false, transB: false, m: n, n: oc, k: c, alpha: 1, a: inp, lda: c, b: weight, ldb: oc, beta: 1, c: out, ldc: oc)
}

/// out (N, OC) = residual (N, OC) + inp (N, C) @ weight (C, OC) + bias (OC): the residual
/// and bias written in one pass, then the product added by sgemm (beta 1).
func matmulForwardResidual(_ out: FPtr, _ inp: FPtr, _ weight: FPtr, _ bias: FPtr, _ residual: FPtr, _ n: Int, _ c: Int, _ oc: Int) {
    kat_add_bias_rows(out, residual, bias, n, oc)
    sgemm(transA: false, transB: false, m: n, n: oc, k: c, alpha: 1, a: inp, lda: c, b: weight, ldb: oc, beta: 1, c: out, ldc: oc)
}

/// pre (N, OC) = inp (N, C) @ weight (C, OC) + bias, out (N, OC) = gelu(pre): sgemm, then
/// one pass for the bias and GELU.
func matmulForwardGelu(_ pre: FPtr, _ out: FPtr, _ inp: FPtr, _ weight: FPtr, _ bias: FPtr, _ n: Int, _ c: Int, _ oc: Int) {
    sgemm(transA: false, transB: false, m: n, n: oc, k: c, alpha: 1, a: inp, lda: c, b: weight, ldb: oc, beta: 0, c: pre, ldc: oc)
    kat_bias_gelu_forward(pre, out, bias, n, oc)
}

/// dinp (N, C) += dout @ weight^T (or = when `setInput`, which saves zeroing a scratch
/// buffer); dweight (C, OC) += inp^T @ dout; dbias += column sums of dout.
func matmulBackward(_ dinp: FPtr, _ dweight: FPtr, _ dbias: FPtr, _ dout: FPtr, _ inp: FPtr, _ weight: FPtr,
                    _ n: Int, _ c: Int, _ oc: Int, setInput: Bool = false) {
    sgemm(transA: false, transB: true, m: n, n: c, k: oc, alpha: 1, a: dout, lda: oc, b: weight, ldb: oc,
          beta: setInput ? 0 : 1, c: dinp, ldc: c)
    sgemm(transA: true, transB: false, m: c, n: oc, k: n, alpha: 1, a: inp, lda: c, b: dout, ldb: oc, beta: 1, c: dweight, ldc: oc)
    kat_column_sums(dbias, dout, n, oc)
}

// MARK: - GELU (tanh approximation)

/// out (count) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
@inline(__always)
func geluForward(_ out: FPtr, _ inp: FPtr, _ count: Int) { kat_gelu_forward(out, inp, count) }

/// dinp (count) = gelu'(inp) * dout: overwrites (its callers' buffer is scratch).
@inline(__always)
func geluBackward(_ dinp: FPtr, _ inp: FPtr, _ dout: FPtr, _ count: Int) { kat_gelu_backward(dinp, inp, dout, count) }

// MARK: - Residual

/// dst (count) += src (count).
@inline(__always)
func accumulate(_ dst: FPtr, _ src: FPtr, _ count: Int) { kat_accumulate(dst, src, count) }

/// Plain BLAS entry points for benchmarks and tools outside this module.
public enum BLASKernels {
    /// c (m x n) = a (m x k) @ b (k x n), row-major.
    public static func gemm(m: Int, n: Int, k: Int, a: FloatBuffer, b: FloatBuffer, c: FloatBuffer) {
        sgemm(transA: false, transB: false, m: m, n: n, k: k, alpha: 1, a: a.pointer, lda: k, b: b.pointer, ldb: n, beta: 0, c: c.pointer, ldc: n)
    }
}
