extension ModelDirectory {
    /// Loads the weights of a Llama/Qwen2 directory under their Hugging Face names. A tied
    /// model may also carry an `lm_head.weight` equal to the embedding (ignored); rotary
    /// `inv_freq` buffers of older checkpoints are ignored (kat-dist computes them).
    static func loadLlama(_ weights: ModelWeights, config: LlamaConfig) throws(ModelError) -> Llama {
        let path = weights.source
        let model = try Llama(config: config)
        var byName: [String: ModelWeights.Tensor] = [:]
        var tiedHead: ModelWeights.Tensor?
        for e in weights.tensors {
            if e.name.hasSuffix("rotary_emb.inv_freq") { continue }
            if e.name == "lm_head.weight", config.tieWordEmbeddings { tiedHead = e; continue }
            byName[e.name] = e
        }
        for t in model.layout.tensors {
            guard let e = byName.removeValue(forKey: t.name) else { throw .missingTensor(path: path, name: t.name) }
            guard e.entry.shape == t.shape else { throw .shapeMismatch(path: e.file.path, name: t.name, expected: t.shape, found: e.entry.shape) }
            try e.copyFloats(into: model.params.pointer + t.offset)
        }
        if let extra = byName.keys.sorted().first {
            throw .badSafetensors(path: path, reason: "unexpected tensor \(extra) (not part of \(config.family.rawValue) with this config)")
        }
        if let lm = tiedHead {
            let embed = model.layout.tensors[0]
            guard lm.entry.shape == embed.shape else { throw .shapeMismatch(path: lm.file.path, name: "lm_head.weight", expected: embed.shape, found: lm.entry.shape) }
            let values = try lm.floats()
            let w = model.params.pointer + model.layout.embed
            for i in 0..<values.count where values[i] != w[i] {
                throw .badSafetensors(path: path, reason: "lm_head.weight differs from model.embed_tokens.weight but tie_word_embeddings is true")
            }
        }
        for i in 0..<model.params.count where !model.params[i].isFinite {
            let name = model.layout.tensors.last { $0.offset <= i }?.name ?? "?"
            throw .badSafetensors(path: path, reason: "tensor \(name) holds a non-finite value")
        }
        return model
    }
}
