import Foundation
import KATModel
import KATSupport

/// Reading checkpoints back: verification against the MANIFEST, choice of the newest
/// complete one, and restoring weights, optimizer state and run state.
public enum Checkpoint {
    /// Files every checkpoint holds besides MANIFEST.
    static let requiredFiles = ["config.json", "model.safetensors", "optimizer.safetensors", "state.json"]

    /// `step-` and the step number, zero-padded to six digits (more digits when needed).
    public static func name(step: Int) -> String {
        let s = String(step)
        return "step-" + String(repeating: "0", count: max(0, 6 - s.count)) + s
    }

    /// The step number of a checkpoint directory's name, or nil for other names.
    public static func step(ofName name: String) -> Int? {
        guard name.hasPrefix("step-") else { return nil }
        return Int(name.dropFirst(5))
    }

    /// The model directory a path stands for, wherever one is expected (`--model`,
    /// `model.init`):
    /// - a model directory (it holds model.safetensors or a sharded model's index), as it is;
    /// - a `latest` file (RUN/checkpoints/latest): the checkpoint it names, beside it;
    /// - a run directory (it holds checkpoints/latest): its newest checkpoint.
    /// Anything else is returned unchanged, for the model reader to report.
    /// - Throws: `RunError.checkpoint` when a `latest` file names a checkpoint that is
    ///   not there.
    public static func resolveModelDirectory(_ path: String) throws(RunError) -> String {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: path, isDirectory: &isDir) else { return path }
        if isDir.boolValue {
            if fm.fileExists(atPath: path + "/model.safetensors") || fm.fileExists(atPath: path + "/model.safetensors.index.json") { return path }
            if fm.fileExists(atPath: path + "/checkpoints/latest") { return try resolveModelDirectory(path + "/checkpoints/latest") }
            return path
        }
        guard let data = fm.contents(atPath: path), data.count < 4096 else { return path }
        let name = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard step(ofName: name) != nil, !name.contains("/") else { return path }
        let dir = (path as NSString).deletingLastPathComponent
        let target = (dir.isEmpty ? "." : dir) + "/" + name
        guard fm.fileExists(atPath: target, isDirectory: &isDir), isDir.boolValue else {
            throw .checkpoint(path: path, reason: "names \(name), which is not in \(dir.isEmpty ? "." : dir)")
        }
        return target
    }

    /// The checkpoint names in `dir`, oldest first, ordered by step number whatever the
    /// number of digits.
    public static func names(in dir: String) -> [String] {
        let all = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        return all.compactMap { n in step(ofName: n).map { (n, $0) } }.sorted { $0.1 < $1.1 }.map(\.0)
    }

    /// Why a checkpoint directory does not verify, or nil when every file matches its MANIFEST.
    public static func verify(_ dir: String) -> String? {
        let fm = FileManager.default
        guard let manifest = fm.contents(atPath: dir + "/MANIFEST").map({ String(decoding: $0, as: UTF8.self) }) else {
            return "no MANIFEST (incomplete)"
        }
        var listed = Set<String>()
        for line in manifest.split(separator: "\n") {
            let parts = line.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
            guard parts.count == 2, parts[0].count == 64 else { return "MANIFEST line \"\(line.prefix(80))\" is malformed" }
            let name = parts[1].trimmingCharacters(in: .whitespaces)
            guard !name.contains("/"), !name.isEmpty else { return "MANIFEST names \(name), not a file of the checkpoint" }
            guard let data = fm.contents(atPath: dir + "/" + name) else { return "\(name) is listed in MANIFEST but missing" }
            let hash = data.withUnsafeBytes { SHA256.hex(of: $0) }
            guard hash == String(parts[0]) else { return "\(name) does not match its SHA-256 in MANIFEST" }
            listed.insert(name)
        }
        for required in requiredFiles where !listed.contains(required) {
            return "MANIFEST does not list \(required)"
        }
        return nil
    }

    /// Whether `path` is a run directory (it has a checkpoints directory).
    static func isRunDirectory(_ path: String) -> Bool {
        var isDir: ObjCBool = false
        return FileManager.default.fileExists(atPath: path + "/checkpoints", isDirectory: &isDir) && isDir.boolValue
    }

    /// The checkpoint to resume from: `spec` is "auto" (the newest under RUN/checkpoints
    /// that verifies; each one skipped is reported through `log`), another run directory
    /// (its newest that verifies), or a checkpoint directory.
    public static func choose(runDirectory run: String, spec: String, log: (String) -> Void) throws(RunError) -> String {
        if spec != "auto", isRunDirectory(spec) { return try choose(runDirectory: spec, spec: "auto", log: log) }
        if spec != "auto" {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: spec, isDirectory: &isDir), isDir.boolValue else {
                throw .checkpoint(path: spec, reason: "no such checkpoint directory")
            }
            if let why = verify(spec) { throw .checkpoint(path: spec, reason: "does not verify: \(why)") }
            return spec
        }
        let dir = run + "/checkpoints"
        let candidates = names(in: dir).reversed()
        if candidates.isEmpty { throw .runDirectory(path: run, reason: "no checkpoints to resume from (looked in \(dir))") }
        for name in candidates {
            if let why = verify(dir + "/" + name) {
                log("resume: skipping \(name): \(why)")
                continue
            }
            log("resume: continuing from \(name)")
            return dir + "/" + name
        }
        throw .checkpoint(path: dir, reason: "no checkpoint verifies (\(candidates.count) tried)")
    }

    /// Restores weights into `model` and, when given, moments into `optimizer`, and returns
    /// the run state. The checkpoint's model must match the configured one.
    public static func restore(_ dir: String, model: any LanguageModel, optimizer: Optimizer?) throws(RunError) -> JSON {
        try checkShape(dir, model.config)
        do {
            let loaded = try ModelDirectory.load(dir, expect: model.config)
            model.params.copy(from: loaded.params)
        } catch {
            throw .checkpoint(path: dir, reason: "\(error)")
        }
        if let optimizer { try restoreOptimizer(dir + "/optimizer.safetensors", into: optimizer) }
        guard let text = FileManager.default.contents(atPath: dir + "/state.json") else {
            throw .checkpoint(path: dir + "/state.json", reason: "cannot read")
        }
        do { return try JSON.parse(String(decoding: text, as: UTF8.self)) } catch {
            throw .checkpoint(path: dir + "/state.json", reason: "not valid JSON (\(error))")
        }
    }

    /// The configuration keys of a model's config.json entries.
    static let modelKeys: [String: String] = [
        "model_type": "model.family", "vocab_size": "model.vocab_size", "n_positions": "model.n_positions",
        "max_position_embeddings": "model.n_positions", "n_embd": "model.n_embd", "hidden_size": "model.n_embd",
        "n_layer": "model.n_layer", "num_hidden_layers": "model.n_layer", "n_head": "model.n_head",
        "num_attention_heads": "model.n_head", "num_key_value_heads": "model.n_kv_head",
        "intermediate_size": "model.intermediate_size", "tie_word_embeddings": "model.tie_word_embeddings",
    ]

    /// A checkpoint whose model is of another shape than the configured one is refused,
    /// naming each setting that differs.
    /// - Throws: `RunError.settings` naming the first model key that differs.
    static func checkShape(_ dir: String, _ expected: any ModelConfiguration) throws(RunError) {
        let found: any ModelConfiguration
        do { found = try ModelDirectory.loadConfig(dir) } catch { throw .checkpoint(path: dir, reason: "\(error)") }
        guard found.shapeSummary != expected.shapeSummary else { return }
        let a = RunDirectory.flatten(found.huggingFaceJSON()), b = RunDirectory.flatten(expected.huggingFaceJSON())
        var differences: [(key: String, text: String)] = []
        for hf in modelKeys.keys.sorted() {
            guard let key = modelKeys[hf], let x = a[hf], let y = b[hf], x != y else { continue }
            differences.append((key, "\(key) is \(x.serialized) in the checkpoint, \(y.serialized) configured"))
        }
        throw .settings(key: differences.first?.key ?? "model",
                        reason: "\(dir): the checkpoint's model does not match the configured one: "
                            + (differences.isEmpty ? "\(found.shapeSummary) against \(expected.shapeSummary)" : differences.map(\.text).joined(separator: "; "))
                            + " (set the model keys to the checkpoint's to resume it)")
    }

    static func restoreOptimizer(_ path: String, into optimizer: Optimizer) throws(RunError) {
        let opt: SafetensorsFile
        do { opt = try SafetensorsFile.read(path: path) } catch { throw .checkpoint(path: path, reason: "\(error)") }
        guard opt.metadata["optimizer"] == optimizer.config.kind.rawValue else {
            throw .checkpoint(path: path, reason: "holds \(opt.metadata["optimizer"] ?? "?") state but the config asks for \(optimizer.config.kind.rawValue)")
        }
        for (name, buf) in [("adam.m", optimizer.m), ("adam.v", optimizer.v)] {
            guard let e = opt.entry(name), e.shape == [buf.count] else {
                throw .checkpoint(path: path, reason: "tensor \(name) is missing or has the wrong size")
            }
            do { try opt.copyFloats(e, into: buf.pointer) } catch { throw .checkpoint(path: path, reason: "\(error)") }
        }
        guard let t = opt.metadata["t"].flatMap(Int.init) else {
            throw .checkpoint(path: path, reason: "metadata lacks the step count t")
        }
        optimizer.t = t
    }
}
