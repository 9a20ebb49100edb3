import Foundation
import KATSupport

/// A Hugging Face model directory: `config.json` and the weights (`model.safetensors`, or
/// shards listed in `model.safetensors.index.json`; see `ModelWeights`).
public enum ModelDirectory {
    /// Writes the model's config and weights into `dir` (created if needed), each file
    /// through a temporary name and a rename.
    /// - Parameter dtype: element type of the weights: F32, or BF16 (rounded to nearest
    ///   even; `torch_dtype` in config.json says `bfloat16`).
    public static func save(_ model: any LanguageModel, to dir: String, metadata: [String: String] = [:],
                            dtype: SafetensorsDType = .F32) throws(ModelError) {
        do { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) } catch {
            throw .io(path: dir, reason: "cannot create the directory")
        }
        let p = UnsafeBufferPointer(model.params.buffer)
        let tensors = model.layout.tensors.map { t in
            (name: t.name, shape: t.shape, values: UnsafeBufferPointer(rebasing: p[t.offset..<(t.offset + t.count)]))
        }
        let data = SafetensorsFile.serialize(tensors, metadata: metadata, dtype: dtype)
        var config = model.config.huggingFaceJSON()
        if dtype == .BF16, case let .object(members) = config {
            config = .object(members.map { $0.0 == "torch_dtype" ? ($0.0, "bfloat16") : $0 })
        }
        do {
            try FileWriting.writeAtomically(data, to: dir + "/model.safetensors")
            try FileWriting.writeAtomically(Data((config.pretty + "\n").utf8), to: dir + "/config.json")
        } catch { throw .file(error) }
    }

    /// Reads `dir/config.json`, of the family its `model_type` names.
    public static func loadConfig(_ dir: String) throws(ModelError) -> any ModelConfiguration {
        let path = dir + "/config.json"
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
            throw .io(path: dir, reason: "no such model directory")
        }
        guard let data = FileManager.default.contents(atPath: path) else { throw .io(path: path, reason: "missing or unreadable") }
        guard let text = String(data: data, encoding: .utf8) else { throw .badConfig(source: path, key: "", reason: "not UTF-8 text") }
        return try modelConfiguration(fromHuggingFaceJSON: text, source: path)
    }

    /// Loads a model directory of any family (`model_type` in config.json). For GPT-2, takes
    /// kat-dist's own names and the published GPT-2 forms: names without the `transformer.`
    /// prefix, an `lm_head.weight` equal to `wte`, and `attn.bias` / `attn.masked_bias` mask
    /// buffers (ignored).
    /// - Parameter expect: when given, the directory's config must match it.
    public static func load(_ dir: String, expect: (any ModelConfiguration)? = nil) throws(ModelError) -> any LanguageModel {
        let found = try loadConfig(dir)
        if let expect, found.shapeSummary != expect.shapeSummary {
            throw .badConfig(source: dir + "/config.json", key: "",
                             reason: "model (\(found.shapeSummary)) does not match the configured one (\(expect.shapeSummary))")
        }
        let weights = try ModelWeights.open(directory: dir)
        if let llama = found as? LlamaConfig { return try loadLlama(weights, config: llama) }
        guard var config = found as? GPT2Config else {
            throw .badConfig(source: dir + "/config.json", key: "model_type", reason: "no loader for \(found.family.rawValue)")
        }
        if let expect = expect as? GPT2Config { config.bosTokenId = config.bosTokenId ?? expect.bosTokenId }
        let path = weights.source
        let model = try GPT2(config: config)
        var byName: [String: ModelWeights.Tensor] = [:]
        var lmHead: ModelWeights.Tensor?
        for e in weights.tensors {
            var name = e.name
            if name == "lm_head.weight" { lmHead = e; continue }
            if name.hasSuffix(".attn.bias") || name.hasSuffix(".attn.masked_bias") { continue }
            if !name.hasPrefix("transformer.") { name = "transformer." + name }
            if byName[name] != nil { throw .badSafetensors(path: e.file.path, reason: "tensor \(e.name) appears twice (with and without the transformer. prefix)") }
            byName[name] = e
        }
        for t in model.layout.tensors {
            guard let e = byName.removeValue(forKey: t.name) else { throw .missingTensor(path: path, name: t.name) }
            guard e.entry.shape == t.shape else { throw .shapeMismatch(path: e.file.path, name: t.name, expected: t.shape, found: e.entry.shape) }
            try e.copyFloats(into: model.params.pointer + t.offset)
        }
        if let extra = byName.keys.sorted().first {
            throw .badSafetensors(path: path, reason: "unexpected tensor \(extra) (not part of GPT-2)")
        }
        if let lm = lmHead {
            guard let wte = model.layout.tensor(named: "transformer.wte.weight") else { throw .missingTensor(path: path, name: "transformer.wte.weight") }
            guard lm.entry.shape == wte.shape else { throw .shapeMismatch(path: lm.file.path, name: "lm_head.weight", expected: wte.shape, found: lm.entry.shape) }
            let values = try lm.floats()
            let w = model.params.pointer + wte.offset
            for i in 0..<values.count where values[i] != w[i] {
                throw .badSafetensors(path: lm.file.path, reason: "lm_head.weight differs from transformer.wte.weight; kat-dist needs tied embeddings")
            }
        }
        for i in 0..<model.params.count where !model.params[i].isFinite {
            let name = model.layout.tensors.last { $0.offset <= i }?.name ?? "?"
            throw .badSafetensors(path: path, reason: "tensor \(name) holds a non-finite value")
        }
        return model
    }
}
