import KATSupport
#if canImport(Glibc)
import Glibc
#endif

/// Activations of one Llama forward pass, kept for backward. Sized for `capacity` rows.
final class LlamaActivations {
    let capacity: Int
    let encoded: FloatBuffer            // (N, C)
    let norm1, rstd1: [FloatBuffer]     // per layer (N, C) (N)
    let qkv: [FloatBuffer]              // (N, NH d + 2 g d), q and k rotated
    let atty: [FloatBuffer]             // (N, NH d)
    let attLse: [FloatBuffer]           // (N, NH)
    let residual2: [FloatBuffer]        // (N, C)
    let norm2, rstd2: [FloatBuffer]     // (N, C) (N)
    let gateUp: [FloatBuffer]           // (N, 2F) before the activation
    /// silu(gate) * up of the layer being computed: forward fills it per layer, backward
    /// recomputes it from `gateUp` instead of keeping L copies.
    let act: FloatBuffer                // (N, F)
    let residual3: [FloatBuffer]        // (N, C)
    let normf, rstdf: FloatBuffer       // (N, C) (N)
    let rowLse: FloatBuffer             // (N) log-sum-exp of logits / tau at head rows
    // Gradient scratch, reused across layers.
    let dresidual, dnorm, dtmp: FloatBuffer // (N, C)
    let datty: FloatBuffer                  // (N, NH d)
    let dqkv: FloatBuffer                   // (N, NH d + 2 g d)
    let dgateUp: FloatBuffer                // (N, 2F)
    let dact: FloatBuffer                   // (N, F)

    init(capacity n: Int, config: LlamaConfig) {
        capacity = n
        let c = config.nEmbd, l = config.nLayer, nh = config.nHead, f = config.intermediateSize
        let q = config.queryWidth, w3 = q + 2 * config.keyValueWidth
        func many(_ size: Int) -> [FloatBuffer] { (0..<l).map { _ in FloatBuffer(count: size) } }
        encoded = FloatBuffer(count: n * c)
        norm1 = many(n * c); rstd1 = many(n)
        qkv = many(n * w3); atty = many(n * q); attLse = many(n * nh)
        residual2 = many(n * c)
        norm2 = many(n * c); rstd2 = many(n)
        gateUp = many(n * 2 * f); act = FloatBuffer(count: n * f)
        residual3 = many(n * c)
        normf = FloatBuffer(count: n * c); rstdf = FloatBuffer(count: n)
        rowLse = FloatBuffer(count: n)
        dresidual = FloatBuffer(count: n * c); dnorm = FloatBuffer(count: n * c); dtmp = FloatBuffer(count: n * c)
        datty = FloatBuffer(count: n * q); dqkv = FloatBuffer(count: n * w3)
        dgateUp = FloatBuffer(count: n * 2 * f); dact = FloatBuffer(count: n * f)
    }

    /// Bytes held (activations and gradient scratch).
    var bytes: Int {
        let singles = [encoded, act, normf, rstdf, rowLse, dresidual, dnorm, dtmp, datty, dqkv, dgateUp, dact]
        let lists = [norm1, rstd1, qkv, atty, attLse, residual2, norm2, rstd2, gateUp, residual3]
        return 4 * (singles.reduce(0) { $0 + $1.count } + lists.reduce(0) { $0 + $1.reduce(0) { $0 + $1.count } })
    }
}

/// The Llama family (Hugging Face's `LlamaForCausalLM` and `Qwen2ForCausalLM`) in float32
/// on packed batches, with an exact backward pass. For a row at depth p:
///
///     x0 = embed_tokens[token]
///     for each layer:  x = x + o_proj(attn(rope_p(q_proj(h)), rope_p(k_proj(h)), v_proj(h))),  h = rmsnorm_in(x)
///                      x = x + down_proj(silu(gate_proj(h)) * up_proj(h)),                      h = rmsnorm_post(x)
///     logits = rmsnorm_final(x) @ W^T       W = embed_tokens (tied) or lm_head
///
/// Query head h attends with key/value head h / (NH / g) over its root path only, with
/// scores q.k / sqrt(d). The rotary position is the row's depth, so a trie computes what
/// each of its sequences would alone. Same style as `GPT2`: one parameter buffer laid out
/// by `LlamaLayout`, forward/backward pairs, a staged backward pass.
public final class Llama: LanguageModel, @unchecked Sendable {
    public let config: LlamaConfig
    public let layout: LlamaLayout
    public let params: FloatBuffer
    public let grads: FloatBuffer
    var acts: LlamaActivations?
    var lastBatch: PackedBatch?
    var lastTemperature: Float = 1
    let scratch = AttentionScratch()
    let head = OutputHead()
    public var keepsHeadLogits = true
    public var betweenForwardBlocks: (() -> Void)?
    let rotary: RotaryTable
    let shape: AttentionShape
    let eps: Float

    /// A model with all parameters zero; see `initialize(seed:)` and the loaders.
    public init(config: LlamaConfig) throws(ModelError) {
        try config.validate()
        self.config = config
        layout = LlamaLayout(config: config)
        params = FloatBuffer(count: layout.count)
        grads = FloatBuffer(count: layout.count)
        rotary = RotaryTable(base: config.ropeTheta, headDim: config.headDim)
        shape = AttentionShape(heads: config.nHead, kvHeads: config.nKVHead, headSize: config.headDim)
        eps = Float(config.rmsNormEps)
    }

    /// Hugging Face's initialisation of the family: matrices and embeddings normal(0, 0.02),
    /// biases 0, RMSNorm weights 1.
    public func initialize(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        let p = params.pointer
        for t in layout.tensors {
            if t.name.hasSuffix("norm.weight") {
                (p + t.offset).update(repeating: 1, count: t.count)
            } else if t.name.hasSuffix(".bias") {
                (p + t.offset).update(repeating: 0, count: t.count)
            } else {
                for i in 0..<t.count { p[t.offset + i] = 0.02 * rng.nextGaussian() }
            }
        }
    }

    public func zeroGrad() { grads.zero() }

    public var workspaceBytes: Int { (acts?.bytes ?? 0) + head.bytes }

    private func activations(for n: Int) -> LlamaActivations {
        if let a = acts, a.capacity >= n { return a }
        let grown = max(n, (acts?.capacity ?? 0) * 5 / 4)
        acts = nil // free the old one before allocating
        let a = LlamaActivations(capacity: grown, config: config)
        acts = a
        return a
    }

    public func releaseWorkspace() { acts = nil; lastBatch = nil; head.release() }

    /// Width of a qkv row: NH d queries, then g d keys, then g d values.
    var qkvWidth: Int { shape.stride }

    // MARK: - Forward

    /// - Complexity: O(N (L (C NH d + C g d + C F))) for every row, O(V C) per row with
    ///   children, and O(NH d L) per visible (query, key) pair.
    @discardableResult
    public func forward(_ batch: PackedBatch, temperature: Float) -> ForwardResult {
        let n = batch.count, c = config.nEmbd, f = config.intermediateSize, q = config.queryWidth, w3 = qkvWidth
        let a = activations(for: n)
        lastBatch = batch
        lastTemperature = temperature
        rotary.ensure(Int(batch.depths.max() ?? 0) + 1)
        let p = params.pointer
        embeddingForward(a.encoded.pointer, batch.tokens, p + layout.embed, n, c)
        var residual = a.encoded.pointer
        for (l, o) in layout.layers.enumerated() {
            rmsnormForward(a.norm1[l].pointer, a.rstd1[l].pointer, residual, p + o.inputNorm, n, c, eps)
            linearForward(a.qkv[l].pointer, a.norm1[l].pointer, p + o.qkvWeight, o.qkvBias.map { p + $0 }, n, c, w3)
            rotaryForward(a.qkv[l].pointer, batch.depths, rotary, n, w3, shape.heads + shape.kvHeads, shape.headSize)
            attentionForward(a.atty[l].pointer, a.attLse[l].pointer, a.qkv[l].pointer, batch, shape, scratch)
            // residual2 = residual + o_proj(atty)
            linearForwardResidual(a.residual2[l].pointer, a.atty[l].pointer, p + o.outputWeight, o.outputBias.map { p + $0 },
                                  residual, n, q, c)
            rmsnormForward(a.norm2[l].pointer, a.rstd2[l].pointer, a.residual2[l].pointer, p + o.postNorm, n, c, eps)
            linearForward(a.gateUp[l].pointer, a.norm2[l].pointer, p + o.gateUpWeight, nil, n, c, 2 * f)
            swigluForward(a.act.pointer, a.gateUp[l].pointer, n, f)
            linearForwardResidual(a.residual3[l].pointer, a.act.pointer, p + o.downWeight, nil, a.residual2[l].pointer, n, f, c)
            residual = a.residual3[l].pointer
            betweenForwardBlocks?()
        }
        rmsnormForward(a.normf.pointer, a.rstdf.pointer, residual, p + layout.finalNorm, n, c, eps)
        // The head keeps its logits for backward when they take no more than the activations.
        return head.forward(a.rowLse.pointer, batch, a.normf.pointer, p + layout.head, temperature, c, config.vocabSize,
                            keepLimit: keepsHeadLogits ? min(a.bytes, 1 << 30) : 0)
    }

    /// Logits (before temperature) of the given rows of the last forward pass.   (rows, V)
    public func logits(rows: [Int]) -> [[Float]] {
        guard let a = acts, let batch = lastBatch else { return [] }
        return OutputHead.logits(rows: rows, a.normf.pointer, params.pointer + layout.head, batch.count, config.nEmbd, config.vocabSize)
    }

    // MARK: - Backward

    /// Starts the backward pass of the last forward (see `BackwardPass`).
    /// - Parameter dlogprobs: dL/dl per row of the last batch. (N)
    public func beginBackward(dlogprobs: [Float]) -> BackwardPass {
        guard let batch = lastBatch, acts != nil else {
            preconditionFailure("Llama.backward called without a forward pass")
        }
        precondition(dlogprobs.count == batch.count, "Llama.backward: dlogprobs has \(dlogprobs.count) rows, batch \(batch.count)")
        return BackwardPass(model: self, dlogprobs: dlogprobs)
    }

    /// Output head and the final norm: leaves d(last residual) in `dresidual`.
    func backwardHead(_ dlogprobs: [Float]) {
        guard let batch = lastBatch, let a = acts else { return }
        let n = batch.count, c = config.nEmbd
        let p = params.pointer, g = grads.pointer
        let dres = a.dresidual.pointer
        let dnormf = a.dtmp.pointer
        head.backward(dnormf, g + layout.head, dlogprobs, batch, a.normf.pointer, p + layout.head, a.rowLse.pointer,
                      lastTemperature, c, config.vocabSize)
        let lastResidual = layout.layers.isEmpty ? a.encoded.pointer : a.residual3[layout.layers.count - 1].pointer
        dres.update(repeating: 0, count: n * c)
        rmsnormBackward(dres, g + layout.finalNorm, dnormf, lastResidual, p + layout.finalNorm, a.rstdf.pointer, n, c)
    }

    /// Block `l`: `dresidual` holds d(residual3) on entry and d(block input) on exit.
    func backwardMLP(_ l: Int) {
        guard let batch = lastBatch, let a = acts else { return }
        let n = batch.count, c = config.nEmbd, f = config.intermediateSize
        let p = params.pointer, g = grads.pointer
        let dres = a.dresidual.pointer
        let o = layout.layers[l]
        // residual3 = residual2 + down(silu(gate(norm2)) * up(norm2))
        // Scratch gradients are written whole by their first producer (setInput), not zeroed.
        swigluForward(a.act.pointer, a.gateUp[l].pointer, n, f) // recomputed, not stored per layer
        linearBackward(a.dact.pointer, g + o.downWeight, nil, dres, a.act.pointer, p + o.downWeight, n, f, c, setInput: true)
        swigluBackward(a.dgateUp.pointer, a.gateUp[l].pointer, a.dact.pointer, n, f)
        linearBackward(a.dnorm.pointer, g + o.gateUpWeight, nil, a.dgateUp.pointer, a.norm2[l].pointer, p + o.gateUpWeight, n, c, 2 * f,
                       setInput: true)
        rmsnormBackward(dres, g + o.postNorm, a.dnorm.pointer, a.residual2[l].pointer, p + o.postNorm, a.rstd2[l].pointer, n, c)
    }

    /// Block `l`'s attention half: d(residual2) on entry, d(block input) on exit.
    func backwardAttention(_ l: Int) {
        guard let batch = lastBatch, let a = acts else { return }
        let n = batch.count, c = config.nEmbd, q = config.queryWidth, w3 = qkvWidth
        let p = params.pointer, g = grads.pointer
        let dres = a.dresidual.pointer
        let o = layout.layers[l]
        let residual = l == 0 ? a.encoded.pointer : a.residual3[l - 1].pointer
        // residual2 = residual + o_proj(attn(rope(qkv(norm1))))
        linearBackward(a.datty.pointer, g + o.outputWeight, o.outputBias.map { g + $0 }, dres, a.atty[l].pointer, p + o.outputWeight,
                       n, q, c, setInput: true)
        a.dqkv.zero() // attention accumulates key and value gradients over blocks and heads
        attentionBackward(a.dqkv.pointer, a.datty.pointer, a.atty[l].pointer, a.qkv[l].pointer, a.attLse[l].pointer, batch, shape, scratch)
        rotaryBackward(a.dqkv.pointer, batch.depths, rotary, n, w3, shape.heads + shape.kvHeads, shape.headSize)
        linearBackward(a.dnorm.pointer, g + o.qkvWeight, o.qkvBias.map { g + $0 }, a.dqkv.pointer, a.norm1[l].pointer, p + o.qkvWeight,
                       n, c, w3, setInput: true)
        rmsnormBackward(dres, g + o.inputNorm, a.dnorm.pointer, residual, p + o.inputNorm, a.rstd1[l].pointer, n, c)
    }

    /// Token embedding.
    func backwardEmbeddings() {
        guard let batch = lastBatch, let a = acts else { return }
        embeddingBackward(grads.pointer + layout.embed, a.dresidual.pointer, batch.tokens, batch.count, config.nEmbd)
    }
}

// MARK: - Staged backward and incremental decoding

extension Llama: BackwardStages {
    var stageLayerCount: Int { config.nLayer }
}

extension Llama {
    /// The family's half of `KVCache.extend`: the blocks over the new rows (rotated keys
    /// and the values stored per layer, g heads of d; attention over each row's cached root
    /// path), then the final norm for the rows in `outputs`, written to the cache's hidden
    /// buffer (outputs, C).
    /// - Returns: the head matrix (embed_tokens when tied, lm_head otherwise).
    public func cachedForward(_ cache: KVCache, newRows: Range<Int>, outputs: [Int]) -> UnsafeMutablePointer<Float> {
        let c = config.nEmbd, f = config.intermediateSize, q = config.queryWidth, n = newRows.count, w3 = qkvWidth
        let p = params.pointer
        let x = cache.scratch(0, n * c).pointer, h = cache.scratch(1, n * c).pointer, qkv = cache.scratch(2, n * w3).pointer
        let att = cache.scratch(3, n * q).pointer
        let gateUp = cache.scratch(5, n * 2 * f).pointer, act = cache.scratch(6, n * f).pointer, rstd = cache.scratch(7, n).pointer
        var deepest: Int32 = 0
        for r in newRows { deepest = max(deepest, cache.depths[r]) }
        rotary.ensure(Int(deepest) + 1)
        cache.tokens.withUnsafeBufferPointer { tk in
            guard let t = tk.baseAddress else { return }
            embeddingForward(x, t + newRows.lowerBound, p + layout.embed, n, c)
        }
        cache.depths.withUnsafeBufferPointer { dp in
            guard let depths = dp.baseAddress.map({ $0 + newRows.lowerBound }) else { return }
            for (l, o) in layout.layers.enumerated() {
                rmsnormForward(h, rstd, x, p + o.inputNorm, n, c, eps)
                linearForward(qkv, h, p + o.qkvWeight, o.qkvBias.map { p + $0 }, n, c, w3)
                rotaryForward(qkv, depths, rotary, n, w3, shape.heads + shape.kvHeads, shape.headSize)
                cache.store(layer: l, qkv, n, shape)
                cache.attend(layer: l, att, qkv, n, shape)
                linearForwardResidual(x, att, p + o.outputWeight, o.outputBias.map { p + $0 }, x, n, q, c)
                rmsnormForward(h, rstd, x, p + o.postNorm, n, c, eps)
                linearForward(gateUp, h, p + o.gateUpWeight, nil, n, c, 2 * f)
                swigluForward(act, gateUp, n, f)
                linearForwardResidual(x, act, p + o.downWeight, nil, x, n, f, c)
            }
        }
        // The final norm for the requested rows only.
        let m = outputs.count
        let sel = cache.scratch(1, m * c).pointer, out = cache.hiddenBuffer(m), rstdOut = cache.scratch(7, m).pointer
        for (k, i) in outputs.enumerated() { (sel + k * c).update(from: x + i * c, count: c) }
        rmsnormForward(out, rstdOut, sel, p + layout.finalNorm, m, c, eps)
        return p + layout.head
    }
}
