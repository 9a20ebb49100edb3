/// Offsets of one Llama-family block's tensors in the parameter buffer. Weights are
/// Hugging Face's `nn.Linear` layout, `[out, in]`.
///
/// q, k and v weights are adjacent, so together they are one (NH d + 2 g d, C) matrix and
/// one matmul; so are their biases, and the gate and up weights ((2F, C), gate first).
public struct LlamaLayerOffsets: Sendable {
    public var inputNorm = 0      // (C)
    public var qkvWeight = 0      // (NH d + 2 g d, C): q_proj, k_proj, v_proj
    public var qkvBias: Int?      // (NH d + 2 g d) when the family has q/k/v biases
    public var outputWeight = 0   // (C, NH d): o_proj
    public var outputBias: Int?   // (C) llama with attention_bias
    public var postNorm = 0       // (C)
    public var gateUpWeight = 0   // (2F, C): gate_proj, up_proj
    public var downWeight = 0     // (C, F): down_proj
}

/// Where every Llama/Qwen2 parameter lives in the one contiguous float buffer, under its
/// Hugging Face name. Order: `model.embed_tokens.weight`, then per layer
/// input_layernorm, q/k/v_proj weights (then biases), o_proj, post_attention_layernorm,
/// gate/up/down_proj, then `model.norm.weight`, then `lm_head.weight` unless tied.
public struct LlamaLayout: ParameterTable {
    public let tensors: [TensorSpec]
    public let count: Int
    public let embed: Int          // (V, C)
    public let layers: [LlamaLayerOffsets]
    public let finalNorm: Int      // (C)
    /// `lm_head.weight` (V, C); nil when the head is tied to `embed`.
    public let lmHead: Int?
    /// The output head's matrix: `lmHead`, or `embed` when tied.       (V, C)
    public var head: Int { lmHead ?? embed }
    public var layerRanges: [Range<Int>] {
        layers.indices.map { l in layers[l].inputNorm..<(l + 1 < layers.count ? layers[l + 1].inputNorm : finalNorm) }
    }
    /// post_attention_layernorm and the gate, up and down projections of each block.
    public var mlpRanges: [Range<Int>] {
        zip(layers, layerRanges).map { o, r in o.postNorm..<r.upperBound }
    }

    public init(config: LlamaConfig) {
        let c = config.nEmbd, v = config.vocabSize, f = config.intermediateSize
        let q = config.queryWidth, kv = config.keyValueWidth
        var specs: [TensorSpec] = []
        var off = 0
        func add(_ name: String, _ shape: [Int], decays: Bool) -> Int {
            let o = off
            specs.append(TensorSpec(name: name, shape: shape, offset: o, decays: decays))
            off += shape.reduce(1, *)
            return o
        }
        embed = add("model.embed_tokens.weight", [v, c], decays: true)
        var ls: [LlamaLayerOffsets] = []
        for i in 0..<config.nLayer {
            let h = "model.layers.\(i)."
            var l = LlamaLayerOffsets()
            l.inputNorm = add(h + "input_layernorm.weight", [c], decays: false)
            l.qkvWeight = add(h + "self_attn.q_proj.weight", [q, c], decays: true)
            _ = add(h + "self_attn.k_proj.weight", [kv, c], decays: true)
            _ = add(h + "self_attn.v_proj.weight", [kv, c], decays: true)
            if config.qkvBias {
                l.qkvBias = add(h + "self_attn.q_proj.bias", [q], decays: false)
                _ = add(h + "self_attn.k_proj.bias", [kv], decays: false)
                _ = add(h + "self_attn.v_proj.bias", [kv], decays: false)
            }
            l.outputWeight = add(h + "self_attn.o_proj.weight", [c, q], decays: true)
            if config.outputBias { l.outputBias = add(h + "self_attn.o_proj.bias", [c], decays: false) }
            l.postNorm = add(h + "post_attention_layernorm.weight", [c], decays: false)
            l.gateUpWeight = add(h + "mlp.gate_proj.weight", [f, c], decays: true)
            _ = add(h + "mlp.up_proj.weight", [f, c], decays: true)
            l.downWeight = add(h + "mlp.down_proj.weight", [c, f], decays: true)
            ls.append(l)
        }
        layers = ls
        finalNorm = add("model.norm.weight", [c], decays: false)
        lmHead = config.tieWordEmbeddings ? nil : add("lm_head.weight", [v, c], decays: true)
        tensors = specs
        count = off
    }
}
