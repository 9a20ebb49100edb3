import Foundation
import KATModel

/// Reading checkpoints back (SPEC section 7): verification against the MANIFEST, choice of
/// the newest complete one, and restoring weights, optimizer state and run state.
public enum Checkpoint {
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
        for required in ["config.json", "model.safetensors", "optimizer.safetensors", "state.json"] where !listed.contains(required) {
            return "MANIFEST does not list \(required)"
        }
        return nil
    }

    /// The checkpoint to resume from: `spec` is "auto" (the newest under RUN/checkpoints
    /// that verifies; each one skipped is reported through `log`) or a path.
    public static func choose(runDirectory run: String, spec: String, log: (String) -> Void) throws(RunError) -> String {
        if spec != "auto" {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: spec, isDirectory: &isDir), isDir.boolValue else {
                throw RunError(path: spec, reason: "no such checkpoint directory")
            }
            if let why = verify(spec) { throw RunError(path: spec, reason: "does not verify: \(why)") }
            return spec
        }
        let dir = run + "/checkpoints"
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasPrefix("step-") }.sorted(by: >)
        if names.isEmpty { throw RunError(path: run, reason: "no checkpoints to resume from (looked in \(dir))") }
        for name in names {
            if let why = verify(dir + "/" + name) {
                log("resume: skipping \(name): \(why)")
                continue
            }
            log("resume: continuing from \(name)")
            return dir + "/" + name
        }
        throw RunError(path: dir, reason: "no checkpoint verifies (\(names.count) tried)")
    }

    /// Restores weights and optimizer moments into `model` and `optimizer`, returning the
    /// state. The checkpoint's model must match the configured one.
    public static func restore(_ dir: String, model: GPT2, optimizer: Optimizer) throws -> JSON {
        let loaded = try ModelDirectory.load(dir, expect: model.config)
        model.params.copy(from: loaded.params)
        let opt = try SafetensorsFile.read(path: dir + "/optimizer.safetensors")
        guard opt.metadata["optimizer"] == optimizer.config.kind.rawValue else {
            throw RunError(path: dir + "/optimizer.safetensors", reason: "holds \(opt.metadata["optimizer"] ?? "?") state but the config asks for \(optimizer.config.kind.rawValue)")
        }
        for (name, buf) in [("adam.m", optimizer.m), ("adam.v", optimizer.v)] {
            guard let e = opt.entry(name), e.shape == [buf.count] else {
                throw RunError(path: dir + "/optimizer.safetensors", reason: "tensor \(name) is missing or has the wrong size")
            }
            try opt.copyFloats(e, into: buf.pointer)
        }
        guard let t = opt.metadata["t"].flatMap(Int.init) else {
            throw RunError(path: dir + "/optimizer.safetensors", reason: "metadata lacks the step count t")
        }
        optimizer.t = t
        guard let text = FileManager.default.contents(atPath: dir + "/state.json") else {
            throw RunError(path: dir + "/state.json", reason: "cannot read")
        }
        do { return try JSON.parse(String(decoding: text, as: UTF8.self)) } catch {
            throw RunError(path: dir + "/state.json", reason: "not valid JSON (\(error))")
        }
    }

    /// Keeps the metrics lines up to `step` (inclusive), rewriting the file atomically.
    public static func truncateLines(_ path: String, upToStep step: Int) throws {
        guard let data = FileManager.default.contents(atPath: path) else { return }
        var kept = ""
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
            if let j = try? JSON.parse(String(line)), let s = j["step"]?.intValue, s <= step { kept += line + "\n" }
        }
        try FileWriting.writeAtomically(Data(kept.utf8), to: path)
    }
}
