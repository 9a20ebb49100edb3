import CBLAS
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
            for i in 0..<n {
                let o = out + i * c, w = wte + Int(tk[i]) * c, p = wpe + Int(dp[i]) * c
                for j in 0..<c { o[j] = w[j] + p[j] }
            }
        }
    }
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
func layernormForward(_ out: FPtr, _ mean: FPtr, _ rstd: FPtr, _ inp: FPtr, _ weight: FPtr, _ bias: FPtr, _ n: Int, _ c: Int) {
    let eps: Float = 1e-5
    for i in 0..<n {
        let x = inp + i * c
        var m: Float = 0
        for j in 0..<c { m += x[j] }
        m /= Float(c)
        var v: Float = 0
        for j in 0..<c { let d = x[j] - m; v += d * d }
        v /= Float(c)
        let s = 1 / (v + eps).squareRoot()
        let o = out + i * c
        for j in 0..<c { o[j] = (x[j] - m) * s * weight[j] + bias[j] }
        mean[i] = m
        rstd[i] = s
    }
}

func layernormBackward(_ dinp: FPtr, _ dweight: FPtr, _ dbias: FPtr, _ dout: FPtr, _ inp: FPtr, _ weight: FPtr,
                       _ mean: FPtr, _ rstd: FPtr, _ n: Int, _ c: Int) {
    for i in 0..<n {
        let d = dout + i * c, x = inp + i * c, di = dinp + i * c
        let m = mean[i], s = rstd[i]
        var dnormMean: Float = 0, dnormNormMean: Float = 0
        for j in 0..<c {
            let norm = (x[j] - m) * s
            let dn = weight[j] * d[j]
            dnormMean += dn
            dnormNormMean += dn * norm
        }
        dnormMean /= Float(c)
        dnormNormMean /= Float(c)
        for j in 0..<c {
            let norm = (x[j] - m) * s
            let dn = weight[j] * d[j]
            dbias[j] += d[j]
            dweight[j] += norm * d[j]
            di[j] += (dn - dnormMean - norm * dnormNormMean) * s
        }
    }
}

// MARK: - Matmul (Hugging Face Conv1D: weight stored (C, OC))

/// out (N, OC) = inp (N, C) @ weight (C, OC) + bias (OC).
func matmulForward(_ out: FPtr, _ inp: FPtr, _ weight: FPtr, _ bias: FPtr, _ n: Int, _ c: Int, _ oc: Int) {
    for i in 0..<n { (out + i * oc).update(from: bias, count: oc) }
    sgemm(transA: false, transB: false, m: n, n: oc, k: c, alpha: 1, a: inp, lda: c, b: weight, ldb: oc, beta: 1, c: out, ldc: oc)
}

/// dinp (N, C) += dout @ weight^T; dweight (C, OC) += inp^T @ dout; dbias += column sums.
func matmulBackward(_ dinp: FPtr, _ dweight: FPtr, _ dbias: FPtr, _ dout: FPtr, _ inp: FPtr, _ weight: FPtr,
                    _ n: Int, _ c: Int, _ oc: Int) {
    sgemm(transA: false, transB: true, m: n, n: c, k: oc, alpha: 1, a: dout, lda: oc, b: weight, ldb: oc, beta: 1, c: dinp, ldc: c)
    sgemm(transA: true, transB: false, m: c, n: oc, k: n, alpha: 1, a: inp, lda: c, b: dout, ldb: oc, beta: 1, c: dweight, ldc: oc)
    for i in 0..<n {
        let d = dout + i * oc
        for j in 0..<oc { dbias[j] += d[j] }
    }
}

// MARK: - GELU (tanh approximation)

private let geluScale: Float = (2 / Float.pi).squareRoot()

func geluForward(_ out: FPtr, _ inp: FPtr, _ count: Int) {
    for i in 0..<count {
        let x = inp[i]
        let u = geluScale * (x + 0.044715 * x * x * x)
        out[i] = 0.5 * x * (1 + fastTanh(u))
    }
}

func geluBackward(_ dinp: FPtr, _ inp: FPtr, _ dout: FPtr, _ count: Int) {
    for i in 0..<count {
        let x = inp[i]
        let u = geluScale * (x + 0.044715 * x * x * x)
        let t = fastTanh(u)
        let du = geluScale * (1 + 3 * 0.044715 * x * x)
        let g = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du
        dinp[i] += g * dout[i]
    }
}

/// tanh(x) = sign(x) (1 - e) / (1 + e), e = exp(-2|x|); exact to float round-off.
@inline(__always)
func fastTanh(_ x: Float) -> Float {
    let a = abs(x)
    if a < 0.0004 { return x } // tanh(x) = x - x^3/3: the cubic term is below half an ulp
    let e = fastExp(-2 * a)
    let t = (1 - e) / (1 + e)
    return x < 0 ? -t : t
}

/// exp(x) for float, to about 1 ulp: x = k ln2 + r with |r| <= ln2/2, a degree-6
/// polynomial for exp(r), and 2^k built in the exponent bits. Inlined and branch-light
/// so the GELU and softmax loops vectorise; about 10x faster than calling expf.
@inline(__always)
func fastExp(_ x: Float) -> Float {
    let xc = min(max(x, -87.3), 88.7)
    // Round to nearest by adding and subtracting 1.5 * 2^23 (no libm call, vectorises).
    let k = (xc * 1.44269504088896341 + 12582912) - 12582912
    // Cody-Waite reduction with ln2 split in two.
    let r = (xc - k * 0.693359375) + k * 2.12194440e-4
    var p: Float = 1.9875691500e-4
    p = p * r + 1.3981999507e-3
    p = p * r + 8.3334519073e-3
    p = p * r + 4.1665795894e-2
    p = p * r + 1.6666665459e-1
    p = p * r + 5.0000001201e-1
    let er = (p * r * r + r) + 1
    let bits = UInt32(bitPattern: Int32(k) + 127) << 23
    return er * Float(bitPattern: bits)
}

// MARK: - Residual

func residualForward(_ out: FPtr, _ a: FPtr, _ b: FPtr, _ count: Int) {
    for i in 0..<count { out[i] = a[i] + b[i] }
}

func accumulate(_ dst: FPtr, _ src: FPtr, _ count: Int) {
    for i in 0..<count { dst[i] += src[i] }
}

/// Plain BLAS entry points for benchmarks and tools outside this module.
public enum BLASKernels {
    /// c (m x n) = a (m x k) @ b (k x n), row-major.
    public static func gemm(m: Int, n: Int, k: Int, a: FloatBuffer, b: FloatBuffer, c: FloatBuffer) {
        sgemm(transA: false, transB: false, m: m, n: n, k: k, alpha: 1, a: a.pointer, lda: k, b: b.pointer, ldb: n, beta: 0, c: c.pointer, ldc: n)
    }
}
