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
public final class GPT2: LanguageModel, @unchecked Sendable {
    public let config: GPT2Config
    public let layout: ParameterLayout
    public let params: FloatBuffer
    public let grads: FloatBuffer
    var acts: Activations?
    var lastBatch: PackedBatch?
    var lastTemperature: Float = 1
    let scratch = AttentionScratch()
    let head = OutputHead()
    public var keepsHeadLogits = true
    public var betweenForwardBlocks: (() -> Void)?

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
    public var workspaceBytes: Int { (acts?.bytes ?? 0) + head.bytes }

    private func activations(for n: Int) -> Activations {
        if let a = acts, a.capacity >= n { return a }
        let grown = max(n, (acts?.capacity ?? 0) * 5 / 4)
        acts = nil // free the old one before allocating
        let a = Activations(capacity: grown, config: config)
        acts = a
        return a
    }

    /// Drops the activation workspace (it is reallocated by the next forward).
    public func releaseWorkspace() { acts = nil; lastBatch = nil; head.release() }

    // MARK: - Forward

    /// Runs the model over a packed batch and scores every row from its parent's output
    /// at temperature `temperature`.
    /// - Complexity: O(N (L C^2 + V C)) for rows with children, plus O(C L) per visible
    ///   (query, key) pair.
    @discardableResult
    public func forward(_ batch: PackedBatch, temperature: Float) -> ForwardResult {
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
            attentionForward(a.atty[l].pointer, a.attLse[l].pointer, a.qkv[l].pointer, batch, .gpt2(c: c, nh: nh), scratch)
            // residual2 = residual + atty @ c_proj + bias
            matmulForwardResidual(a.residual2[l].pointer, a.atty[l].pointer, p + o.attprojw, p + o.attprojb, residual, n, c, c)
            layernormForward(a.ln2[l].pointer, a.ln2Mean[l].pointer, a.ln2Rstd[l].pointer, a.residual2[l].pointer, p + o.ln2w, p + o.ln2b, n, c)
            matmulForwardGelu(a.fch[l].pointer, a.fchGelu.pointer, a.ln2[l].pointer, p + o.fcw, p + o.fcb, n, c, 4 * c)
            matmulForwardResidual(a.residual3[l].pointer, a.fchGelu.pointer, p + o.fcprojw, p + o.fcprojb, a.residual2[l].pointer,
                                  n, 4 * c, c)
            residual = a.residual3[l].pointer
            betweenForwardBlocks?()
        }
        layernormForward(a.lnf.pointer, a.lnfMean.pointer, a.lnfRstd.pointer, residual, p + layout.lnfw, p + layout.lnfb, n, c)
        // The head keeps its logits for backward when they take no more than the activations.
        return head.forward(a.rowLse.pointer, batch, a.lnf.pointer, p + layout.wte, temperature, c, config.vocabSize,
                            keepLimit: keepsHeadLogits ? min(a.bytes, 1 << 30) : 0)
    }

    /// Logits (before temperature) of the given rows of the last forward pass.   (rows, V)
    public func logits(rows: [Int]) -> [[Float]] {
        guard let a = acts, let batch = lastBatch else { return [] }
        return OutputHead.logits(rows: rows, a.lnf.pointer, params.pointer + layout.wte, batch.count, config.nEmbd, config.vocabSize)
    }

    // MARK: - Backward

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
        let n = batch.count, c = config.nEmbd
        let p = params.pointer, g = grads.pointer
        let dres = a.dresidual.pointer

        // Output head (tied to wte): d(ln_f output) into dtmp.
        let dlnf = a.dtmp.pointer
        head.backward(dlnf, g + layout.wte, dlogprobs, batch, a.lnf.pointer, p + layout.wte, a.rowLse.pointer, lastTemperature,
                      c, config.vocabSize)

        // ln_f
        let lastResidual = layout.layers.isEmpty ? a.encoded.pointer : a.residual3[layout.layers.count - 1].pointer
        dres.update(repeating: 0, count: n * c)
        layernormBackward(dres, g + layout.lnfw, g + layout.lnfb, dlnf, lastResidual, p + layout.lnfw,
                          a.lnfMean.pointer, a.lnfRstd.pointer, n, c)
    }

    /// Block `l`: `dresidual` holds d(residual3) on entry and d(block input) on exit.
    func backwardMLP(_ l: Int) {
        guard let batch = lastBatch, let a = acts else { return }
        let n = batch.count, c = config.nEmbd
        let p = params.pointer, g = grads.pointer
        let dres = a.dresidual.pointer
        let o = layout.layers[l]
        // residual3 = residual2 + c_proj(gelu(c_fc(ln_2(residual2))))
        // Scratch gradients are written whole by their first producer (setInput), not zeroed.
        geluForward(a.fchGelu.pointer, a.fch[l].pointer, n * 4 * c) // recomputed, not stored per layer
        matmulBackward(a.dfchGelu.pointer, g + o.fcprojw, g + o.fcprojb, dres, a.fchGelu.pointer, p + o.fcprojw, n, 4 * c, c,
                       setInput: true)
        geluBackward(a.dfch.pointer, a.fch[l].pointer, a.dfchGelu.pointer, n * 4 * c)
        matmulBackward(a.dln.pointer, g + o.fcw, g + o.fcb, a.dfch.pointer, a.ln2[l].pointer, p + o.fcw, n, c, 4 * c, setInput: true)
        layernormBackward(dres, g + o.ln2w, g + o.ln2b, a.dln.pointer, a.residual2[l].pointer, p + o.ln2w,
                          a.ln2Mean[l].pointer, a.ln2Rstd[l].pointer, n, c)
    }

    /// Block `l`'s attention half: d(residual2) on entry, d(block input) on exit.
    func backwardAttention(_ l: Int) {
        guard let batch = lastBatch, let a = acts else { return }
        let n = batch.count, c = config.nEmbd, nh = config.nHead
        let p = params.pointer, g = grads.pointer
        let dres = a.dresidual.pointer
        let o = layout.layers[l]
        let residual = l == 0 ? a.encoded.pointer : a.residual3[l - 1].pointer
        // residual2 = residual + c_proj(attn(c_attn(ln_1(residual))))
        matmulBackward(a.datty.pointer, g + o.attprojw, g + o.attprojb, dres, a.atty[l].pointer, p + o.attprojw, n, c, c,
                       setInput: true)
        a.dqkv.zero() // attention accumulates key and value gradients over blocks and heads
        attentionBackward(a.dqkv.pointer, a.datty.pointer, a.atty[l].pointer, a.qkv[l].pointer, a.attLse[l].pointer,
                          batch, .gpt2(c: c, nh: nh), scratch)
        matmulBackward(a.dln.pointer, g + o.attnw, g + o.attnb, a.dqkv.pointer, a.ln1[l].pointer, p + o.attnw, n, c, 3 * c,
                       setInput: true)
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

// MARK: - Staged backward and incremental decoding

extension GPT2: BackwardStages {
    var stageLayerCount: Int { config.nLayer }
}

extension GPT2 {
    /// GPT-2's half of `KVCache.extend`: the blocks over the new rows (keys and values
    /// stored per layer, attention over each row's cached root path), then ln_f for the
    /// rows in `outputs`, written to the cache's hidden buffer (outputs, C).
    /// - Returns: the head matrix (wte, tied).
    public func cachedForward(_ cache: KVCache, newRows: Range<Int>, outputs: [Int]) -> UnsafeMutablePointer<Float> {
        let c = config.nEmbd, nh = config.nHead, n = newRows.count
        let shape = AttentionShape.gpt2(c: c, nh: nh)
        let p = params.pointer
        let x = cache.scratch(0, n * c).pointer, h = cache.scratch(1, n * c).pointer, qkv = cache.scratch(2, n * 3 * c).pointer
        let att = cache.scratch(3, n * c).pointer
        let fc = cache.scratch(5, n * 4 * c).pointer, fcg = cache.scratch(6, n * 4 * c).pointer
        let mean = cache.scratch(7, n).pointer, rstd = cache.scratch(8, n).pointer
        cache.tokens.withUnsafeBufferPointer { tk in
            cache.depths.withUnsafeBufferPointer { dp in
                guard let t = tk.baseAddress, let d = dp.baseAddress else { return }
                encoderForward(x, t + newRows.lowerBound, d + newRows.lowerBound, p + layout.wte, p + layout.wpe, n, c)
            }
        }
        for (l, o) in layout.layers.enumerated() {
            layernormForward(h, mean, rstd, x, p + o.ln1w, p + o.ln1b, n, c)
            matmulForward(qkv, h, p + o.attnw, p + o.attnb, n, c, 3 * c)
            cache.store(layer: l, qkv, n, shape)
            cache.attend(layer: l, att, qkv, n, shape)
            matmulForwardResidual(x, att, p + o.attprojw, p + o.attprojb, x, n, c, c)
            layernormForward(h, mean, rstd, x, p + o.ln2w, p + o.ln2b, n, c)
            matmulForwardGelu(fc, fcg, h, p + o.fcw, p + o.fcb, n, c, 4 * c)
            matmulForwardResidual(x, fcg, p + o.fcprojw, p + o.fcprojb, x, n, 4 * c, c)
        }
        // ln_f for the requested rows only.
        let m = outputs.count
        let sel = cache.scratch(1, m * c).pointer, out = cache.hiddenBuffer(m)
        for (k, i) in outputs.enumerated() { (sel + k * c).update(from: x + i * c, count: c) }
        layernormForward(out, mean, rstd, sel, p + layout.lnfw, p + layout.lnfb, m, c)
        return p + layout.wte
    }
}
