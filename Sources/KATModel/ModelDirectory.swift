import Foundation
import KATSupport

/// A Hugging Face model directory: `config.json` + `model.safetensors` (Docs/formats.md).
public enum ModelDirectory {
    /// Writes the model's config and weights into `dir` (created if needed), each file
    /// through a temporary name and a rename.
    public static func save(_ model: GPT2, to dir: String, metadata: [String: String] = [:]) throws(ModelError) {
        do { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) } catch {
            throw .io(path: dir, reason: "cannot create the directory")
        }
        let p = UnsafeBufferPointer(model.params.buffer)
        let tensors = model.layout.tensors.map { t in
            (name: t.name, shape: t.shape, values: UnsafeBufferPointer(rebasing: p[t.offset..<(t.offset + t.count)]))
        }
        let data = SafetensorsFile.serialize(tensors, metadata: metadata)
        do {
            try FileWriting.writeAtomically(data, to: dir + "/model.safetensors")
            try FileWriting.writeAtomically(Data((model.config.huggingFaceJSON().pretty + "\n").utf8), to: dir + "/config.json")
        } catch { throw .file(error) }
    }

    /// Reads `dir/config.json`.
    public static func loadConfig(_ dir: String) throws(ModelError) -> GPT2Config {
        let path = dir + "/config.json"
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
            throw .io(path: dir, reason: "no such model directory")
        }
        guard let data = FileManager.default.contents(atPath: path) else { throw .io(path: path, reason: "missing or unreadable") }
        guard let text = String(data: data, encoding: .utf8) else { throw .badConfig(source: path, key: "", reason: "not UTF-8 text") }
        return try GPT2Config.fromHuggingFaceJSON(text, source: path)
    }

    /// Loads a model directory. Takes kat-dist's own names and the published GPT-2 forms:
    /// names without the `transformer.` prefix, an `lm_head.weight` equal to `wte`, and
    /// `attn.bias` / `attn.masked_bias` mask buffers (ignored).
    /// - Parameter expect: when given, the directory's config must match it.
    public static func load(_ dir: String, expect: GPT2Config? = nil) throws(ModelError) -> GPT2 {
        var config = try loadConfig(dir)
        if let expect {
            let same = config.vocabSize == expect.vocabSize && config.nPositions == expect.nPositions &&
                config.nEmbd == expect.nEmbd && config.nLayer == expect.nLayer && config.nHead == expect.nHead
            if !same {
                throw .badConfig(source: dir + "/config.json", key: "",
                                 reason: "model (V=\(config.vocabSize) P=\(config.nPositions) C=\(config.nEmbd) L=\(config.nLayer) NH=\(config.nHead)) does not match the configured one (V=\(expect.vocabSize) P=\(expect.nPositions) C=\(expect.nEmbd) L=\(expect.nLayer) NH=\(expect.nHead))")
            }
            config.bosTokenId = config.bosTokenId ?? expect.bosTokenId
        }
        let path = dir + "/model.safetensors"
        let file = try SafetensorsFile.read(path: path)
        let model = try GPT2(config: config)
        var byName: [String: SafetensorsEntry] = [:]
        var lmHead: SafetensorsEntry?
        for e in file.entries {
            var name = e.name
            if name == "lm_head.weight" { lmHead = e; continue }
            if name.hasSuffix(".attn.bias") || name.hasSuffix(".attn.masked_bias") { continue }
            if !name.hasPrefix("transformer.") { name = "transformer." + name }
            if byName[name] != nil { throw .badSafetensors(path: path, reason: "tensor \(e.name) appears twice (with and without the transformer. prefix)") }
            byName[name] = e
        }
        for t in model.layout.tensors {
            guard let e = byName.removeValue(forKey: t.name) else { throw .missingTensor(path: path, name: t.name) }
            guard e.shape == t.shape else { throw .shapeMismatch(path: path, name: t.name, expected: t.shape, found: e.shape) }
            try file.copyFloats(e, into: model.params.pointer + t.offset)
        }
        if let extra = byName.keys.sorted().first {
            throw .badSafetensors(path: path, reason: "unexpected tensor \(extra) (not part of GPT-2)")
        }
        if let lm = lmHead {
            guard let wte = model.layout.tensor(named: "transformer.wte.weight") else { throw .missingTensor(path: path, name: "transformer.wte.weight") }
            guard lm.shape == wte.shape else { throw .shapeMismatch(path: path, name: "lm_head.weight", expected: wte.shape, found: lm.shape) }
            let values = try file.floats(lm.name)
            let w = model.params.pointer + wte.offset
            for i in 0..<values.count where values[i] != w[i] {
                throw .badSafetensors(path: path, reason: "lm_head.weight differs from transformer.wte.weight; kat-dist needs tied embeddings")
            }
        }
        for i in 0..<model.params.count where !model.params[i].isFinite {
            let name = model.layout.tensors.last { $0.offset <= i }?.name ?? "?"
            throw .badSafetensors(path: path, reason: "tensor \(name) holds a non-finite value")
        }
        return model
    }
}
