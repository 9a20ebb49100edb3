import KATSupport
#if canImport(Glibc)
import Glibc
#endif

/// Per-row outputs of a forward pass.
public struct ForwardResult: Sendable {
    /// log pi_tau(token[u] | root path of u), read from the parent's output; 0 at roots. (N)
    public var logprobs: [Float]
    /// Entropy of pi_tau at the parent of u (the distribution that scored u); 0 at roots. (N)
    public var entropies: [Float]
}

/// Activations of one forward pass, kept for backward. Sized for `capacity` rows.
final class Activations {
    let capacity: Int
    let encoded: FloatBuffer          // (N, C)
    let ln1, ln1Mean, ln1Rstd: [FloatBuffer]   // per layer (N, C) (N) (N)
    let qkv: [FloatBuffer]            // (N, 3C)
    let atty: [FloatBuffer]           // (N, C)
    let attLse: [FloatBuffer]         // (N, NH)
    let residual2: [FloatBuffer]      // (N, C)
    let ln2, ln2Mean, ln2Rstd: [FloatBuffer]
    let fch: [FloatBuffer]            // (N, 4C) pre-GELU
    /// GELU outputs of the layer being computed: forward fills it per layer, backward
    /// recomputes it from `fch` (one elementwise pass) instead of keeping L copies.
    let fchGelu: FloatBuffer          // (N, 4C)
    let residual3: [FloatBuffer]      // (N, C)
    let lnf, lnfMean, lnfRstd: FloatBuffer
    let rowLse: FloatBuffer           // (N) log-sum-exp of logits / tau at head rows
    // Gradient scratch, reused across layers.
    let dresidual, dln, datty, dtmp: FloatBuffer // (N, C)
    let dqkv: FloatBuffer                        // (N, 3C)
    let dfch, dfchGelu: FloatBuffer              // (N, 4C)

    init(capacity n: Int, config: GPT2Config) {
        capacity = n
        let c = config.nEmbd, l = config.nLayer, nh = config.nHead
        func many(_ size: Int) -> [FloatBuffer] { (0..<l).map { _ in FloatBuffer(count: size) } }
        encoded = FloatBuffer(count: n * c)
        ln1 = many(n * c); ln1Mean = many(n); ln1Rstd = many(n)
        qkv = many(n * 3 * c); atty = many(n * c); attLse = many(n * nh)
        residual2 = many(n * c)
        ln2 = many(n * c); ln2Mean = many(n); ln2Rstd = many(n)
        fch = many(n * 4 * c); fchGelu = FloatBuffer(count: n * 4 * c)
        residual3 = many(n * c)
        lnf = FloatBuffer(count: n * c); lnfMean = FloatBuffer(count: n); lnfRstd = FloatBuffer(count: n)
        rowLse = FloatBuffer(count: n)
        dresidual = FloatBuffer(count: n * c); dln = FloatBuffer(count: n * c)
        datty = FloatBuffer(count: n * c); dtmp = FloatBuffer(count: n * c)
        dqkv = FloatBuffer(count: n * 3 * c)
        dfch = FloatBuffer(count: n * 4 * c); dfchGelu = FloatBuffer(count: n * 4 * c)
    }

    /// Bytes held (activations and gradient scratch).
    var bytes: Int {
        let singles = [encoded, lnf, lnfMean, lnfRstd, rowLse, dresidual, dln, datty, dtmp, dqkv, dfch, dfchGelu, fchGelu]
        let lists = [ln1, ln1Mean, ln1Rstd, qkv, atty, attLse, residual2, ln2, ln2Mean, ln2Rstd, fch, residual3]
        return 4 * (singles.reduce(0) { $0 + $1.count } + lists.reduce(0) { $0 + $1.reduce(0) { $0 + $1.count } })
    }
}

/// GPT-2 (Radford et al. 2019; Hugging Face's `GPT2LMHeadModel` maths and names) in float32 on packed batches, with an exact backward pass.
///
/// All parameters live in one contiguous buffer (`params`) laid out by `layout`;
/// `grads` has the same layout. `forward` keeps the activations of its batch and
/// `backward` must follow on the same batch.
public final class GPT2: @unchecked Sendable {
    public let config: GPT2Config
    public let layout: ParameterLayout
    public let params: FloatBuffer
    public let grads: FloatBuffer
    var acts: Activations?
    var lastBatch: PackedBatch?
    var lastTemperature: Float = 1
    let scratch = AttentionScratch()
    var headIn = FloatBuffer(count: 0)
    var headLogits = FloatBuffer(count: 0)
    var headDIn = FloatBuffer(count: 0)

    /// A model with all parameters zero; see `initialize(seed:)` and the loaders.
    public init(config: GPT2Config) throws(ModelError) {
        try config.validate()
        self.config = config
        layout = ParameterLayout(config: config)
        params = FloatBuffer(count: layout.count)
        grads = FloatBuffer(count: layout.count)
    }

    /// GPT-2 initialisation: weights normal(0, 0.02), the two residual projections of each
    /// block normal(0, 0.02 / sqrt(2L)), biases 0, LayerNorm weights 1.
    public func initialize(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        let p = params.pointer
        let residualStd = 0.02 / Float(2 * config.nLayer).squareRoot()
        for t in layout.tensors {
            let name = t.name
            if name.hasSuffix("ln_1.weight") || name.hasSuffix("ln_2.weight") || name.hasSuffix("ln_f.weight") {
                (p + t.offset).update(repeating: 1, count: t.count)
            } else if name.hasSuffix(".bias") {
                (p + t.offset).update(repeating: 0, count: t.count)
            } else {
                let std: Float = name.hasSuffix("attn.c_proj.weight") || name.hasSuffix("mlp.c_proj.weight") ? residualStd : 0.02
                for i in 0..<t.count { p[t.offset + i] = std * rng.nextGaussian() }
            }
        }
    }

    public func zeroGrad() { grads.zero() }

    /// Bytes held by the activation workspace (grows to the largest batch seen).
    public var workspaceBytes: Int { acts?.bytes ?? 0 }

    private func activations(for n: Int) -> Activations {
        if let a = acts, a.capacity >= n { return a }
        let grown = max(n, (acts?.capacity ?? 0) * 5 / 4)
        acts = nil // free the old one before allocating
        let a = Activations(capacity: grown, config: config)
        acts = a
        return a
    }

    /// Drops the activation workspace (it is reallocated by the next forward).
    public func releaseWorkspace() { acts = nil; lastBatch = nil }

    // MARK: - Forward

    /// Runs the model over a packed batch and scores every row from its parent's output
    /// at temperature `temperature`.
    /// - Complexity: O(N (L C^2 + V C)) for rows with children, plus O(C L) per visible
    ///   (query, key) pair.
    @discardableResult
    public func forward(_ batch: PackedBatch, temperature: Float = 1) -> ForwardResult {
        let n = batch.count, c = config.nEmbd, nh = config.nHead
        let a = activations(for: n)
        lastBatch = batch
        lastTemperature = temperature
        let p = params.pointer
        encoderForward(a.encoded.pointer, batch.tokens, batch.depths, p + layout.wte, p + layout.wpe, n, c)
        var residual = a.encoded.pointer
        for (l, o) in layout.layers.enumerated() {
            layernormForward(a.ln1[l].pointer, a.ln1Mean[l].pointer, a.ln1Rstd[l].pointer, residual, p + o.ln1w, p + o.ln1b, n, c)
            matmulForward(a.qkv[l].pointer, a.ln1[l].pointer, p + o.attnw, p + o.attnb, n, c, 3 * c)
            attentionForward(a.atty[l].pointer, a.attLse[l].pointer, a.qkv[l].pointer, batch, c, nh, scratch)
            // residual2 = residual + atty @ c_proj
            matmulForward(a.residual2[l].pointer, a.atty[l].pointer, p + o.attprojw, p + o.attprojb, n, c, c)
            accumulate(a.residual2[l].pointer, residual, n * c)
            layernormForward(a.ln2[l].pointer, a.ln2Mean[l].pointer, a.ln2Rstd[l].pointer, a.residual2[l].pointer, p + o.ln2w, p + o.ln2b, n, c)
            matmulForward(a.fch[l].pointer, a.ln2[l].pointer, p + o.fcw, p + o.fcb, n, c, 4 * c)
            geluForward(a.fchGelu.pointer, a.fch[l].pointer, n * 4 * c)
            matmulForward(a.residual3[l].pointer, a.fchGelu.pointer, p + o.fcprojw, p + o.fcprojb, n, 4 * c, c)
            accumulate(a.residual3[l].pointer, a.residual2[l].pointer, n * c)
            residual = a.residual3[l].pointer
        }
        layernormForward(a.lnf.pointer, a.lnfMean.pointer, a.lnfRstd.pointer, residual, p + layout.lnfw, p + layout.lnfb, n, c)
        return headForward(batch, a, temperature)
    }

    /// Rows per chunk of the output head, so a chunk's logits stay near 16 MB.
    private var headChunk: Int { max(64, (1 << 22) / config.vocabSize) }

    private func ensureHeadBuffers(_ rows: Int) {
        let c = config.nEmbd, v = config.vocabSize
        if headIn.count < rows * c { headIn = FloatBuffer(count: rows * c); headDIn = FloatBuffer(count: rows * c) }
        if headLogits.count < rows * v { headLogits = FloatBuffer(count: rows * v) }
    }

    /// z (rows x V) = lnf[headRows[k0..<k1]] @ wte^T / tau.
    private func headLogitsChunk(_ batch: PackedBatch, _ a: Activations, _ k0: Int, _ k1: Int, _ tau: Float) {
        let c = config.nEmbd, v = config.vocabSize, rows = k1 - k0
        let x = headIn.pointer, lnf = a.lnf.pointer
        for k in k0..<k1 { (x + (k - k0) * c).update(from: lnf + Int(batch.headRows[k]) * c, count: c) }
        sgemm(transA: false, transB: true, m: rows, n: v, k: c, alpha: 1 / tau, a: x, lda: c,
              b: params.pointer + layout.wte, ldb: c, beta: 0, c: headLogits.pointer, ldc: v)
    }

    private func headForward(_ batch: PackedBatch, _ a: Activations, _ tau: Float) -> ForwardResult {
        let n = batch.count, v = config.vocabSize
        var logprobs = [Float](repeating: 0, count: n)
        var entropies = [Float](repeating: 0, count: n)
        let chunk = headChunk
        ensureHeadBuffers(min(chunk, batch.headRows.count))
        var k0 = 0
        while k0 < batch.headRows.count {
            let k1 = min(k0 + chunk, batch.headRows.count)
            headLogitsChunk(batch, a, k0, k1, tau)
            for k in k0..<k1 {
                let z = headLogits.pointer + (k - k0) * v
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
                a.rowLse[row] = lse
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

    /// Logits (before temperature) of the given rows of the last forward pass.   (rows, V)
    public func logits(rows: [Int]) -> [[Float]] {
        guard let a = acts, let batch = lastBatch else { return [] }
        let c = config.nEmbd, v = config.vocabSize
        let w = params.pointer + layout.wte
        return rows.map { r in
            precondition(r >= 0 && r < batch.count, "GPT2.logits: row \(r) outside the batch")
            var out = [Float](repeating: 0, count: v)
            out.withUnsafeMutableBufferPointer { o in
                sgemm(transA: false, transB: true, m: 1, n: v, k: c, alpha: 1, a: a.lnf.pointer + r * c, lda: c,
                      b: w, ldb: c, beta: 0, c: o.baseAddress!, ldc: v)
            }
            return out
        }
    }

    // MARK: - Backward

    /// Accumulates into `grads` the gradient of a loss whose derivative with respect to
    /// each row's log-prob is `dlogprobs[u]` (0 at roots and rows without loss).
    public func backward(dlogprobs: [Float]) {
        beginBackward(dlogprobs: dlogprobs).finish()
    }

    /// Starts the backward pass of the last forward: the caller runs it a stage at a time
    /// (`BackwardPass.step`) and may do other work between stages, for example answer
    /// messages or start summing the gradients of the layers that are finished.
    /// - Parameter dlogprobs: dL/dl per row of the last batch. (N)
    public func beginBackward(dlogprobs: [Float]) -> BackwardPass {
        guard let batch = lastBatch, acts != nil else {
            preconditionFailure("GPT2.backward called without a forward pass")
        }
        precondition(dlogprobs.count == batch.count, "GPT2.backward: dlogprobs has \(dlogprobs.count) rows, batch \(batch.count)")
        return BackwardPass(model: self, dlogprobs: dlogprobs)
    }

    /// Output head and ln_f: leaves d(last residual) in `dresidual`.
    func backwardHead(_ dlogprobs: [Float]) {
        guard let batch = lastBatch, let a = acts else { return }
        let n = batch.count, c = config.nEmbd, v = config.vocabSize
        let tau = lastTemperature
        let p = params.pointer, g = grads.pointer
        let dres = a.dresidual.pointer

        // Output head: dz = sum_children dl_u (onehot(tok_u) - softmax(z)); dlogits = dz / tau.
        let dlnf = a.dtmp.pointer
        dlnf.update(repeating: 0, count: n * c)
        let chunk = headChunk
        ensureHeadBuffers(min(chunk, batch.headRows.count))
        var k0 = 0
        while k0 < batch.headRows.count {
            let k1 = min(k0 + chunk, batch.headRows.count)
            headLogitsChunk(batch, a, k0, k1, tau)
            let rows = k1 - k0
            for k in k0..<k1 {
                let z = headLogits.pointer + (k - k0) * v
                let lse = a.rowLse[Int(batch.headRows[k])]
                var gsum: Float = 0
                for ci in Int(batch.childStart[k])..<Int(batch.childStart[k + 1]) { gsum += dlogprobs[Int(batch.children[ci])] }
                let invTau = 1 / tau
                for j in 0..<v { z[j] = -gsum * fastExp(z[j] - lse) * invTau }
                for ci in Int(batch.childStart[k])..<Int(batch.childStart[k + 1]) {
                    let u = Int(batch.children[ci])
                    z[Int(batch.tokens[u])] += dlogprobs[u] * invTau
                }
            }
            // dX = dlogits @ wte; dwte += dlogits^T @ X
            sgemm(transA: false, transB: false, m: rows, n: c, k: v, alpha: 1, a: headLogits.pointer, lda: v,
                  b: p + layout.wte, ldb: c, beta: 0, c: headDIn.pointer, ldc: c)
            sgemm(transA: true, transB: false, m: v, n: c, k: rows, alpha: 1, a: headLogits.pointer, lda: v,
                  b: headIn.pointer, ldb: c, beta: 1, c: g + layout.wte, ldc: c)
            for k in k0..<k1 {
                (dlnf + Int(batch.headRows[k]) * c).update(from: headDIn.pointer + (k - k0) * c, count: c)
            }
            k0 = k1
        }

        // ln_f
        let lastResidual = layout.layers.isEmpty ? a.encoded.pointer : a.residual3[layout.layers.count - 1].pointer
        dres.update(repeating: 0, count: n * c)
        layernormBackward(dres, g + layout.lnfw, g + layout.lnfb, dlnf, lastResidual, p + layout.lnfw,
                          a.lnfMean.pointer, a.lnfRstd.pointer, n, c)
    }

    /// Block `l`: `dresidual` holds d(residual3) on entry and d(block input) on exit.
    func backwardLayer(_ l: Int) {
        guard let batch = lastBatch, let a = acts else { return }
        let n = batch.count, c = config.nEmbd, nh = config.nHead
        let p = params.pointer, g = grads.pointer
        let dres = a.dresidual.pointer
        let o = layout.layers[l]
        let residual = l == 0 ? a.encoded.pointer : a.residual3[l - 1].pointer
        // residual3 = residual2 + c_proj(gelu(c_fc(ln_2(residual2))))
        a.dfchGelu.zero()
        geluForward(a.fchGelu.pointer, a.fch[l].pointer, n * 4 * c) // recomputed, not stored per layer
        matmulBackward(a.dfchGelu.pointer, g + o.fcprojw, g + o.fcprojb, dres, a.fchGelu.pointer, p + o.fcprojw, n, 4 * c, c)
        a.dfch.zero()
        geluBackward(a.dfch.pointer, a.fch[l].pointer, a.dfchGelu.pointer, n * 4 * c)
        a.dln.zero()
        matmulBackward(a.dln.pointer, g + o.fcw, g + o.fcb, a.dfch.pointer, a.ln2[l].pointer, p + o.fcw, n, c, 4 * c)
        layernormBackward(dres, g + o.ln2w, g + o.ln2b, a.dln.pointer, a.residual2[l].pointer, p + o.ln2w,
                          a.ln2Mean[l].pointer, a.ln2Rstd[l].pointer, n, c)
        // residual2 = residual + c_proj(attn(c_attn(ln_1(residual))))
        a.datty.zero()
        matmulBackward(a.datty.pointer, g + o.attprojw, g + o.attprojb, dres, a.atty[l].pointer, p + o.attprojw, n, c, c)
        a.dqkv.zero()
        attentionBackward(a.dqkv.pointer, a.datty.pointer, a.atty[l].pointer, a.qkv[l].pointer, a.attLse[l].pointer,
                          batch, c, nh, scratch)
        a.dln.zero()
        matmulBackward(a.dln.pointer, g + o.attnw, g + o.attnb, a.dqkv.pointer, a.ln1[l].pointer, p + o.attnw, n, c, 3 * c)
        layernormBackward(dres, g + o.ln1w, g + o.ln1b, a.dln.pointer, residual, p + o.ln1w,
                          a.ln1Mean[l].pointer, a.ln1Rstd[l].pointer, n, c)
    }

    /// Token and position embeddings.
    func backwardEmbeddings() {
        guard let batch = lastBatch, let a = acts else { return }
        encoderBackward(grads.pointer + layout.wte, grads.pointer + layout.wpe, a.dresidual.pointer, batch.tokens, batch.depths,
                        batch.count, config.nEmbd)
    }
}

/// A backward pass run one stage at a time: the output head (with ln_f), then each block
/// from the last to the first, then the embeddings. After `.layer(l)` the gradients of
/// block l's tensors are complete for this micro-batch; the token embedding's gradient is
/// complete only after `.embeddings` (the tied head writes it first).
public final class BackwardPass {
    public enum Stage: Equatable, Sendable { case head, layer(Int), embeddings }
    let model: GPT2
    let dlogprobs: [Float]
    /// The stage `step()` runs next; nil when the pass is done.
    public private(set) var next: Stage? = .head

    init(model: GPT2, dlogprobs: [Float]) { self.model = model; self.dlogprobs = dlogprobs }

    /// Runs the next stage and returns it; nil when the pass was already done.
    @discardableResult
    public func step() -> Stage? {
        guard let stage = next else { return nil }
        let layers = model.config.nLayer
        switch stage {
        case .head:
            model.backwardHead(dlogprobs)
            next = layers > 0 ? .layer(layers - 1) : .embeddings
        case let .layer(l):
            model.backwardLayer(l)
            next = l > 0 ? .layer(l - 1) : .embeddings
        case .embeddings:
            model.backwardEmbeddings()
            next = nil
        }
        return stage
    }

    /// Runs every stage left.
    public func finish() { while step() != nil {} }
}
