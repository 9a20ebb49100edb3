import CKATKernels
#if canImport(Glibc)
import Glibc
#endif

// Forward/backward pairs of the Llama family's layers, in the style of Kernels.swift:
// outputs, inputs, weights, then dimensions; backward functions accumulate (+=) into
// their gradient outputs. The maths is Hugging Face's LlamaForCausalLM (modeling_llama.py).

// MARK: - Token embedding

/// out[i] = table[tokens[i]].                                     out (N, C), table (V, C)
func embeddingForward(_ out: FPtr, _ tokens: [Int32], _ table: FPtr, _ n: Int, _ c: Int) {
    tokens.withUnsafeBufferPointer { tk in
        guard let t = tk.baseAddress else { return }
        embeddingForward(out, t, table, n, c)
    }
}

/// The same from a pointer to the N tokens.
func embeddingForward(_ out: FPtr, _ tokens: UnsafePointer<Int32>, _ table: FPtr, _ n: Int, _ c: Int) {
    for i in 0..<n { (out + i * c).update(from: table + Int(tokens[i]) * c, count: c) }
}

/// dtable[tokens[i]] += dout[i].
func embeddingBackward(_ dtable: FPtr, _ dout: FPtr, _ tokens: [Int32], _ n: Int, _ c: Int) {
    tokens.withUnsafeBufferPointer { tk in
        for i in 0..<n {
            let d = dout + i * c, w = dtable + Int(tk[i]) * c
            for j in 0..<c { w[j] += d[j] }
        }
    }
}

// MARK: - RMSNorm

/// out = x / sqrt(mean(x^2) + eps) * weight, per row; rstd (N) keeps 1 / sqrt(mean(x^2) + eps).
/// out (N, C) from inp (N, C).
@inline(__always)
func rmsnormForward(_ out: FPtr, _ rstd: FPtr, _ inp: FPtr, _ weight: FPtr, _ n: Int, _ c: Int, _ eps: Float) {
    kat_rmsnorm_forward(out, rstd, inp, weight, n, c, eps)
}

/// With xn = x r (r = rstd): dweight += dout * xn, and
/// dinp += r (weight * dout - xn * mean(weight * dout * xn)).
@inline(__always)
func rmsnormBackward(_ dinp: FPtr, _ dweight: FPtr, _ dout: FPtr, _ inp: FPtr, _ weight: FPtr, _ rstd: FPtr, _ n: Int, _ c: Int) {
    kat_rmsnorm_backward(dinp, dweight, dout, inp, weight, rstd, n, c)
}

// MARK: - Linear (nn.Linear: weight stored (OC, C))

/// out (N, OC) = inp (N, C) @ weight^T + bias (OC, or none).
func linearForward(_ out: FPtr, _ inp: FPtr, _ weight: FPtr, _ bias: FPtr?, _ n: Int, _ c: Int, _ oc: Int) {
    if let bias { kat_fill_rows(out, bias, n, oc) }
    sgemm(transA: false, transB: true, m: n, n: oc, k: c, alpha: 1, a: inp, lda: c, b: weight, ldb: c,
          beta: bias == nil ? 0 : 1, c: out, ldc: oc)
}

/// out (N, OC) = residual (N, OC) + inp (N, C) @ weight^T + bias (OC, or none): the residual
/// and bias in one pass, then the product added by sgemm (beta 1).
func linearForwardResidual(_ out: FPtr, _ inp: FPtr, _ weight: FPtr, _ bias: FPtr?, _ residual: FPtr, _ n: Int, _ c: Int, _ oc: Int) {
    kat_add_bias_rows(out, residual, bias, n, oc)
    sgemm(transA: false, transB: true, m: n, n: oc, k: c, alpha: 1, a: inp, lda: c, b: weight, ldb: c, beta: 1, c: out, ldc: oc)
}

/// dinp (N, C) += dout @ weight (or = when `setInput`); dweight (OC, C) += dout^T @ inp;
/// dbias += column sums.
func linearBackward(_ dinp: FPtr, _ dweight: FPtr, _ dbias: FPtr?, _ dout: FPtr, _ inp: FPtr, _ weight: FPtr,
                    _ n: Int, _ c: Int, _ oc: Int, setInput: Bool = false) {
    sgemm(transA: false, transB: false, m: n, n: c, k: oc, alpha: 1, a: dout, lda: oc, b: weight, ldb: c,
          beta: setInput ? 0 : 1, c: dinp, ldc: c)
    sgemm(transA: true, transB: false, m: oc, n: c, k: n, alpha: 1, a: dout, lda: oc, b: inp, ldb: c, beta: 1, c: dweight, ldc: c)
    if let dbias { kat_column_sums(dbias, dout, n, oc) }
}

// MARK: - Rotary position embedding

/// cos and sin of the rotary angles p theta_i for positions 0..<positions and pairs
/// i < d/2, theta_i = 1 / base^(2i/d), computed in float32 as Hugging Face does
/// (`inv_freq = 1 / base ** (arange(0, d, 2) / d)`, angle = position * inv_freq).
/// Grows on demand to the deepest position seen.
final class RotaryTable {
    let base: Float
    let headDim: Int
    private(set) var positions = 0
    private(set) var cos: [Float] = []  // (positions, d/2)
    private(set) var sin: [Float] = []  // (positions, d/2)

    init(base: Double, headDim: Int) { self.base = Float(base); self.headDim = headDim }

    /// Makes rows 0..<count available.
    func ensure(_ count: Int) {
        guard count > positions else { return }
        let half = headDim / 2
        let invFreq = (0..<half).map { i in 1 / powf(base, Float(2 * i) / Float(headDim)) }
        let grown = max(count, positions * 2)
        cos.reserveCapacity(grown * half); sin.reserveCapacity(grown * half)
        for p in positions..<grown {
            for i in 0..<half {
                let angle = Float(p) * invFreq[i]
                cos.append(cosf(angle)); sin.append(sinf(angle))
            }
        }
        positions = grown
    }
}

/// Rotates, in place, the first `heads` heads (size hs) of each row of x (stride `stride`)
/// by the row's position: for each pair (i, i + hs/2), (a, b) -> (a cos - b sin, b cos + a sin),
/// which is Hugging Face's x cos + rotate_half(x) sin. Queries and keys are the first
/// NH + g heads of a qkv row, so one call rotates both.
func rotaryForward(_ x: FPtr, _ positions: [Int32], _ table: RotaryTable, _ n: Int, _ stride: Int, _ heads: Int, _ hs: Int) {
    positions.withUnsafeBufferPointer { pos in
        guard let p = pos.baseAddress else { return }
        rotaryForward(x, p, table, n, stride, heads, hs)
    }
}

/// The same from a pointer to the N positions.
func rotaryForward(_ x: FPtr, _ positions: UnsafePointer<Int32>, _ table: RotaryTable, _ n: Int, _ stride: Int, _ heads: Int, _ hs: Int) {
    rotate(x, positions, table, n, stride, heads, hs, sinSign: 1)
}

/// The transpose of `rotaryForward` (its inverse: a rotation), in place on the gradient:
/// (da, db) -> (da cos + db sin, db cos - da sin).
func rotaryBackward(_ dx: FPtr, _ positions: [Int32], _ table: RotaryTable, _ n: Int, _ stride: Int, _ heads: Int, _ hs: Int) {
    positions.withUnsafeBufferPointer { pos in
        guard let p = pos.baseAddress else { return }
        rotate(dx, p, table, n, stride, heads, hs, sinSign: -1)
    }
}

/// Rotates each pair (i, i + hs/2) of the first `heads` heads of each row by its position's
/// angle, forwards (`sinSign` 1) or backwards (-1): (a, b) -> (a cos - s b, b cos + s a),
/// s = sinSign x sin.
private func rotate(_ x: FPtr, _ positions: UnsafePointer<Int32>, _ table: RotaryTable, _ n: Int, _ stride: Int, _ heads: Int, _ hs: Int,
                    sinSign: Float) {
    let half = hs / 2
    table.cos.withUnsafeBufferPointer { cosT in
        table.sin.withUnsafeBufferPointer { sinT in
            for r in 0..<n {
                let t = Int(positions[r]) * half
                for h in 0..<heads {
                    let v = x + r * stride + h * hs
                    for i in 0..<half {
                        let c = cosT[t + i], s = sinSign * sinT[t + i]
                        let a = v[i], b = v[i + half]
                        v[i] = a * c - b * s
                        v[i + half] = b * c + a * s
                    }
                }
            }
        }
    }
}

// MARK: - SwiGLU

/// out (N, F) = silu(gate) * up, from gateUp (N, 2F) holding gate then up in each row;
/// silu(g) = g / (1 + exp(-g)).
@inline(__always)
func swigluForward(_ out: FPtr, _ gateUp: FPtr, _ n: Int, _ f: Int) { kat_swiglu_forward(out, gateUp, n, f) }

/// dgate = dout * up * silu'(gate), dup = dout * silu(gate), with
/// silu'(g) = s (1 + g (1 - s)), s = sigmoid(g).       dgateUp (N, 2F), overwritten
@inline(__always)
func swigluBackward(_ dgateUp: FPtr, _ gateUp: FPtr, _ dout: FPtr, _ n: Int, _ f: Int) {
    kat_swiglu_backward(dgateUp, gateUp, dout, n, f)
}
