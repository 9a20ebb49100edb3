import Foundation
import KATSupport

/// A model directory's weights: `model.safetensors`, or the shards that
/// `model.safetensors.index.json` lists (Hugging Face's sharded form:
/// `{"metadata": {...}, "weight_map": {"tensor name": "model-00001-of-00002.safetensors", ...}}`).
/// Every file is read and validated in full; F32, F16, BF16 (and F64) are read as float32.
public struct ModelWeights: Sendable {
    /// One tensor and the file that holds it.
    public struct Tensor: Sendable {
        public let name: String
        public let entry: SafetensorsEntry
        public let file: SafetensorsFile

        /// Copies the values, converted to Float, into `dst` (room for the element count).
        public func copyFloats(into dst: UnsafeMutablePointer<Float>) throws(ModelError) { try file.copyFloats(entry, into: dst) }
        /// The values converted to Float.
        public func floats() throws(ModelError) -> [Float] { try file.floats(name) }
    }

    /// Every tensor, by file then data order.
    public let tensors: [Tensor]
    /// Where the weights come from, for messages: the file, or the index.
    public let source: String

    public static let singleFile = "model.safetensors"
    public static let indexFile = "model.safetensors.index.json"

    /// Opens the weights of `directory`.
    /// - Throws: `ModelError` naming the file and the fault: a missing file (with how to
    ///   convert a directory that holds only PyTorch weights), any fault of a safetensors
    ///   file, an index that is not JSON or whose `weight_map` is not an object of file
    ///   names in the directory, a shard the index names that is missing, or a tensor the
    ///   index places in a shard that lacks it.
    public static func open(directory dir: String) throws(ModelError) -> ModelWeights {
        let fm = FileManager.default
        let single = dir + "/" + singleFile, index = dir + "/" + indexFile
        if fm.fileExists(atPath: single) {
            let file = try SafetensorsFile.read(path: single)
            return ModelWeights(tensors: file.entries.map { Tensor(name: $0.name, entry: $0, file: file) }, source: single)
        }
        guard fm.fileExists(atPath: index) else {
            if let torch = ["pytorch_model.bin", "pytorch_model.bin.index.json"].first(where: { fm.fileExists(atPath: dir + "/" + $0) }) {
                throw .io(path: single, reason: "no such file: the directory holds PyTorch weights (\(torch)), which kat-dist does not read; convert them once with\n  python3 -c \"from transformers import AutoModelForCausalLM as M; M.from_pretrained('\(dir)').save_pretrained('\(dir)', safe_serialization=True)\"")
            }
            throw .io(path: single, reason: "no such file (nor \(indexFile))")
        }
        guard let data = fm.contents(atPath: index) else { throw .io(path: index, reason: "cannot read the file") }
        let json: JSON
        do { json = try JSON.parse(Array(data)) } catch { throw .badConfig(source: index, key: "", reason: "not valid JSON (\(error))") }
        guard let map = json["weight_map"]?.objectMembers else {
            throw .badConfig(source: index, key: "weight_map", reason: "missing, or not an object of tensor name -> file name")
        }
        var shards: [String: SafetensorsFile] = [:], order: [String] = []
        var tensors: [Tensor] = []
        for (name, value) in map {
            guard let shard = value.stringValue, !shard.isEmpty, !shard.contains("/"), shard != "..", shard != "." else {
                throw .badConfig(source: index, key: "weight_map.\(name)", reason: "must be the name of a file in the directory, got \(value.serialized.prefix(80))")
            }
            if shards[shard] == nil {
                let path = dir + "/" + shard
                guard fm.fileExists(atPath: path) else { throw .io(path: path, reason: "no such file (named by \(indexFile))") }
                shards[shard] = try SafetensorsFile.read(path: path)
                order.append(shard)
            }
            guard let file = shards[shard] else { continue }
            guard let entry = file.entry(name) else {
                throw .badSafetensors(path: file.path, reason: "lacks tensor \(name), which \(indexFile) places in it")
            }
            tensors.append(Tensor(name: name, entry: entry, file: file))
        }
        let rank = Dictionary(uniqueKeysWithValues: order.enumerated().map { ($1, $0) })
        tensors.sort { (rank[URL(fileURLWithPath: $0.file.path).lastPathComponent] ?? 0, $0.entry.begin)
            < (rank[URL(fileURLWithPath: $1.file.path).lastPathComponent] ?? 0, $1.entry.begin) }
        return ModelWeights(tensors: tensors, source: index)
    }
}
