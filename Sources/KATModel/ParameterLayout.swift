/// One named parameter tensor: its Hugging Face name, shape, and offset in the buffer.
public struct TensorSpec: Equatable, Sendable {
    public var name: String
    public var shape: [Int]
    public var offset: Int
    public var count: Int { shape.reduce(1, *) }
    /// Whether weight decay applies: matrices and embeddings, not biases or norm weights.
    public var decays: Bool
}

/// Offsets of one GPT-2 block's tensors in the parameter buffer.
public struct LayerOffsets: Sendable {
    public var ln1w = 0, ln1b = 0       // (C) (C)
    public var attnw = 0, attnb = 0     // (C, 3C) (3C)
    public var attprojw = 0, attprojb = 0 // (C, C) (C)
    public var ln2w = 0, ln2b = 0       // (C) (C)
    public var fcw = 0, fcb = 0         // (C, 4C) (4C)
    public var fcprojw = 0, fcprojb = 0 // (4C, C) (C)
}

/// Where every GPT-2 parameter lives in the one contiguous float buffer.
///
/// Gradients and both Adam moments use the same layout, so the whole gradient is one
/// allreduce and the optimizer one flat loop. Order: wte, wpe, then each block
/// (ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj), then ln_f.
public struct ParameterLayout: ParameterTable {
    public let tensors: [TensorSpec]
    public let count: Int
    public let wte: Int     // (V, C)
    public let wpe: Int     // (P, C)
    public let layers: [LayerOffsets]
    public let lnfw: Int, lnfb: Int // (C) (C)
    public var layerRanges: [Range<Int>] {
        layers.indices.map { l in layers[l].ln1w..<(l + 1 < layers.count ? layers[l + 1].ln1w : lnfw) }
    }
    /// ln_2, mlp.c_fc and mlp.c_proj of each block.
    public var mlpRanges: [Range<Int>] {
        zip(layers, layerRanges).map { o, r in o.ln2w..<r.upperBound }
    }

    public init(config: GPT2Config) {
        let c = config.nEmbd, v = config.vocabSize, p = config.nPositions
        var specs: [TensorSpec] = []
        var off = 0
        func add(_ name: String, _ shape: [Int], decays: Bool) -> Int {
            let o = off
            specs.append(TensorSpec(name: name, shape: shape, offset: o, decays: decays))
            off += shape.reduce(1, *)
            return o
        }
        wte = add("transformer.wte.weight", [v, c], decays: true)
        wpe = add("transformer.wpe.weight", [p, c], decays: true)
        var ls: [LayerOffsets] = []
        for i in 0..<config.nLayer {
            let h = "transformer.h.\(i)."
            var l = LayerOffsets()
            l.ln1w = add(h + "ln_1.weight", [c], decays: false)
            l.ln1b = add(h + "ln_1.bias", [c], decays: false)
            l.attnw = add(h + "attn.c_attn.weight", [c, 3 * c], decays: true)
            l.attnb = add(h + "attn.c_attn.bias", [3 * c], decays: false)
            l.attprojw = add(h + "attn.c_proj.weight", [c, c], decays: true)
            l.attprojb = add(h + "attn.c_proj.bias", [c], decays: false)
            l.ln2w = add(h + "ln_2.weight", [c], decays: false)
            l.ln2b = add(h + "ln_2.bias", [c], decays: false)
            l.fcw = add(h + "mlp.c_fc.weight", [c, 4 * c], decays: true)
            l.fcb = add(h + "mlp.c_fc.bias", [4 * c], decays: false)
            l.fcprojw = add(h + "mlp.c_proj.weight", [4 * c, c], decays: true)
            l.fcprojb = add(h + "mlp.c_proj.bias", [c], decays: false)
            ls.append(l)
        }
        layers = ls
        lnfw = add("transformer.ln_f.weight", [c], decays: false)
        lnfb = add("transformer.ln_f.bias", [c], decays: false)
        tensors = specs
        count = off
    }
}
