import Foundation
import KATModel

/// A fault with the run directory or a checkpoint; names the path.
public struct RunError: Error, CustomStringConvertible {
    public var path: String
    public var reason: String
    public var description: String { "\(path): \(reason)" }
    public init(path: String, reason: String) { self.path = path; self.reason = reason }
}

/// The run directory of SPEC section 7: config.json, metrics.jsonl, checkpoints/.
public final class RunDirectory {
    public let path: String
    var metrics: FileHandle?

    public var checkpointsPath: String { path + "/checkpoints" }

    /// Opens or creates `path` for a new run. A directory that already holds checkpoints
    /// is refused (use resume); nothing in it is touched.
    public init(newRunAt path: String) throws(RunError) {
        self.path = path
        let fm = FileManager.default
        var isDir: ObjCBool = false
        if fm.fileExists(atPath: path, isDirectory: &isDir) {
            guard isDir.boolValue else { throw RunError(path: path, reason: "exists and is not a directory") }
            let existing = (try? fm.contentsOfDirectory(atPath: path + "/checkpoints"))?.filter { $0.hasPrefix("step-") } ?? []
            if !existing.isEmpty {
                throw RunError(path: path, reason: "already holds checkpoints (\(existing.sorted().last!)); resume it with --resume auto or choose another --run-dir")
            }
            if fm.fileExists(atPath: path + "/metrics.jsonl") {
                throw RunError(path: path, reason: "already holds metrics.jsonl from another run; choose another --run-dir")
            }
        }
        do { try fm.createDirectory(atPath: path + "/checkpoints", withIntermediateDirectories: true) } catch {
            throw RunError(path: path, reason: "cannot create the run directory (\(error.localizedDescription))")
        }
        guard fm.createFile(atPath: path + "/metrics.jsonl", contents: nil) else {
            throw RunError(path: path + "/metrics.jsonl", reason: "cannot create the file")
        }
        metrics = FileHandle(forWritingAtPath: path + "/metrics.jsonl")
    }

    /// Opens an existing run directory to continue it: metrics after `step` are dropped
    /// (they belong to a timeline that did not reach a checkpoint) and new lines append.
    public init(resumeAt path: String, step: Int) throws(RunError) {
        self.path = path
        let fm = FileManager.default
        do {
            try Checkpoint.truncateLines(path + "/metrics.jsonl", upToStep: step)
            if fm.fileExists(atPath: path + "/trained_ids.jsonl") { try Checkpoint.truncateLines(path + "/trained_ids.jsonl", upToStep: step) }
        } catch { throw RunError(path: path, reason: "cannot rewrite metrics.jsonl: \(error)") }
        if !fm.fileExists(atPath: path + "/metrics.jsonl") { fm.createFile(atPath: path + "/metrics.jsonl", contents: nil) }
        guard let h = FileHandle(forWritingAtPath: path + "/metrics.jsonl") else { throw RunError(path: path + "/metrics.jsonl", reason: "cannot open") }
        h.seekToEndOfFile()
        metrics = h
    }

    /// Appends one line to RUN/trained_ids.jsonl (the ids trained at a step).
    public func appendTrainedIDs(step: Int, ids: [String]) {
        let path = self.path + "/trained_ids.jsonl"
        if !FileManager.default.fileExists(atPath: path) { FileManager.default.createFile(atPath: path, contents: nil) }
        guard let h = FileHandle(forWritingAtPath: path) else { return }
        h.seekToEndOfFile()
        h.write(Data((JSON.object([("step", JSON(step)), ("ids", .array(ids.map { .string($0) }))]).serialized + "\n").utf8))
        try? h.close()
    }

    /// Existing metrics lines (after a resume), for the report.
    public func existingMetrics() -> [JSON] {
        guard let data = FileManager.default.contents(atPath: path + "/metrics.jsonl") else { return [] }
        return String(decoding: data, as: UTF8.self).split(separator: "\n").compactMap { try? JSON.parse(String($0)) }
    }

    /// The default run directory: runs/ plus a timestamp (UTC), never an existing one.
    public static func defaultPath() -> String {
        let f = DateFormatter()
        f.dateFormat = "yyyyMMdd-HHmmss"
        f.timeZone = TimeZone(identifier: "UTC")
        var p = "runs/" + f.string(from: Date())
        var k = 1
        while FileManager.default.fileExists(atPath: p) { k += 1; p = "runs/" + f.string(from: Date()) + "-\(k)" }
        return p
    }

    public func writeConfig(_ json: JSON) throws(RunError) {
        do { try FileWriting.writeAtomically(Data((json.pretty + "\n").utf8), to: path + "/config.json") } catch {
            throw RunError(path: path + "/config.json", reason: "\(error)")
        }
    }

    /// Appends one metrics line and flushes it to the file.
    public func appendMetrics(_ line: JSON) {
        guard let h = metrics else { return }
        h.write(Data((line.serialized + "\n").utf8))
    }

    // MARK: - Checkpoints

    public static func checkpointName(step: Int) -> String {
        let s = String(step)
        return "step-" + String(repeating: "0", count: max(0, 6 - s.count)) + s
    }

    /// Writes a checkpoint (SPEC section 7) under a temporary name, syncs every file,
    /// writes MANIFEST last, renames the directory into place, then moves `latest`, and
    /// keeps the newest `keep`.
    public func writeCheckpoint(step: Int, model: GPT2, optimizer: Optimizer, state: JSON, keep: Int,
                                extras: [String: Data] = [:]) throws(RunError) {
        let name = RunDirectory.checkpointName(step: step)
        let final = checkpointsPath + "/" + name
        let tmp = checkpointsPath + "/.tmp-" + name + "-\(getpid())"
        let fm = FileManager.default
        try? fm.removeItem(atPath: tmp)
        do {
            try ModelDirectory.save(model, to: tmp, metadata: ["step": String(step)])
            let tensors: [(name: String, shape: [Int], values: UnsafeBufferPointer<Float>)] = [
                ("adam.m", [optimizer.m.count], UnsafeBufferPointer(optimizer.m.buffer)),
                ("adam.v", [optimizer.v.count], UnsafeBufferPointer(optimizer.v.buffer)),
            ]
            try FileWriting.writeAtomically(SafetensorsFile.serialize(tensors, metadata: ["t": String(optimizer.t), "optimizer": optimizer.config.kind.rawValue]),
                                            to: tmp + "/optimizer.safetensors")
            try FileWriting.writeAtomically(Data((state.pretty + "\n").utf8), to: tmp + "/state.json")
            for (name, data) in extras { try FileWriting.writeAtomically(data, to: tmp + "/" + name) }
            var manifest = ""
            for file in ["config.json", "model.safetensors", "optimizer.safetensors", "state.json"] + extras.keys.sorted() {
                guard let data = fm.contents(atPath: tmp + "/" + file) else { throw RunError(path: tmp + "/" + file, reason: "cannot read back") }
                manifest += data.withUnsafeBytes { SHA256.hex(of: $0) } + "  " + file + "\n"
            }
            try FileWriting.writeAtomically(Data(manifest.utf8), to: tmp + "/MANIFEST")
        } catch let e as RunError {
            try? fm.removeItem(atPath: tmp)
            throw e
        } catch {
            try? fm.removeItem(atPath: tmp)
            throw RunError(path: tmp, reason: "\(error)")
        }
        if fm.fileExists(atPath: final) { try? fm.removeItem(atPath: final) }
        guard rename(tmp, final) == 0 else {
            try? fm.removeItem(atPath: tmp)
            throw RunError(path: final, reason: "rename failed: \(String(cString: strerror(errno)))")
        }
        do { try FileWriting.writeAtomically(Data((name + "\n").utf8), to: checkpointsPath + "/latest") } catch {
            throw RunError(path: checkpointsPath + "/latest", reason: "\(error)")
        }
        let all = ((try? fm.contentsOfDirectory(atPath: checkpointsPath)) ?? []).filter { $0.hasPrefix("step-") }.sorted()
        for old in all.dropLast(keep) { try? fm.removeItem(atPath: checkpointsPath + "/" + old) }
    }
}
