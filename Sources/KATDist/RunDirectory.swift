import Foundation
import KATModel
import KATSupport
#if canImport(Glibc)
import Glibc
#endif

/// A run directory: config.json, metrics (metrics.jsonl, metrics.csv, a TensorBoard
/// event file), report.html, checkpoints/ (see Docs/formats.md).
///
/// Only the first trainer opens one; the other ranks never write to it.
public final class RunDirectory {
    public let path: String
    let metrics: MetricsLog
    var trainedIDs: LineFile?

    public var checkpointsPath: String { path + "/checkpoints" }
    public var metricsPath: String { path + "/metrics.jsonl" }

    /// Opens the metrics files: new ones, or those of a run resumed after `resumedStep`.
    private init(path: String, resumedStep: Int?) throws(RunError) {
        self.path = path
        metrics = try MetricsLog(directory: path, upToStep: resumedStep)
    }

    /// Opens or creates `path` for a new run. A directory that already holds checkpoints
    /// or metrics is refused (resume it instead); nothing in it is touched.
    public static func create(newRunAt path: String) throws(RunError) -> RunDirectory {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        if fm.fileExists(atPath: path, isDirectory: &isDir) {
            guard isDir.boolValue else { throw .runDirectory(path: path, reason: "exists and is not a directory") }
            if let newest = Checkpoint.names(in: path + "/checkpoints").last {
                throw .runDirectory(path: path, reason: "already holds checkpoints (\(newest)); resume it with --resume auto or choose another --run-dir")
            }
            if fm.fileExists(atPath: path + "/metrics.jsonl") {
                throw .runDirectory(path: path, reason: "already holds metrics.jsonl from another run; choose another --run-dir")
            }
        }
        do { try fm.createDirectory(atPath: path + "/checkpoints", withIntermediateDirectories: true) } catch {
            throw .runDirectory(path: path, reason: "cannot create the run directory (\(error.localizedDescription))")
        }
        return try RunDirectory(path: path, resumedStep: nil)
    }

    /// Opens an existing run directory to continue it after the checkpoint of `step`:
    /// metrics after that step are dropped from metrics.jsonl, metrics.csv and the event
    /// file alike (they belong to a timeline that did not reach a checkpoint) and new
    /// lines append.
    public static func resume(at path: String, step: Int) throws(RunError) -> RunDirectory {
        do { try truncateLines(path + "/trained_ids.jsonl", upToStep: step) } catch { throw .file(error) }
        return try RunDirectory(path: path, resumedStep: step)
    }

    /// Keeps the lines of a JSON-lines file whose `step` is at most `step`, rewriting the
    /// file atomically; a missing file is left missing.
    static func truncateLines(_ path: String, upToStep step: Int) throws(FileFault) {
        guard let data = FileManager.default.contents(atPath: path) else { return }
        var kept = ""
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
            if let j = try? JSON.parse(String(line)), let s = j["step"]?.intValue, s <= step { kept += line + "\n" }
        }
        try FileWriting.writeAtomically(Data(kept.utf8), to: path)
    }

    /// Appends one step's metrics line to metrics.jsonl, metrics.csv and the event file.
    public func appendMetrics(_ line: JSON) throws(RunError) {
        try metrics.append(line)
    }

    /// Appends one step's metrics to metrics.jsonl, metrics.csv and the event file.
    public func appendMetrics(_ m: StepMetrics) throws(RunError) {
        try metrics.append(m.json)
    }

    /// Appends one line to RUN/trained_ids.jsonl: the trajectory ids trained at a step.
    public func appendTrainedIDs(step: Int, ids: [String]) throws(RunError) {
        do {
            if trainedIDs == nil { trainedIDs = try LineFile(appendingTo: path + "/trained_ids.jsonl") }
            try trainedIDs?.append(JSON.object([("step", JSON(step)), ("ids", .array(ids.map { .string($0) }))]).serialized)
        } catch { throw .file(error) }
    }

    /// The metrics lines written so far (after a resume: those up to the checkpoint).
    public func existingMetrics() -> [JSON] {
        guard let data = FileManager.default.contents(atPath: metricsPath) else { return [] }
        return String(decoding: data, as: UTF8.self).split(separator: "\n").compactMap { try? JSON.parse(String($0)) }
    }

    /// The default run directory: runs/ plus a UTC timestamp, never an existing one.
    public static func defaultPath() -> String {
        let f = DateFormatter()
        f.dateFormat = "yyyyMMdd-HHmmss"
        f.timeZone = TimeZone(identifier: "UTC")
        var p = "runs/" + f.string(from: Date())
        var k = 1
        while FileManager.default.fileExists(atPath: p) { k += 1; p = "runs/" + f.string(from: Date()) + "-\(k)" }
        return p
    }

    /// Writes RUN/config.json (the resolved config, as run).
    public func writeConfig(_ json: JSON) throws(RunError) {
        do { try FileWriting.writeAtomically(Data((json.pretty + "\n").utf8), to: path + "/config.json") } catch {
            throw .file(error)
        }
    }

    /// Writes a file of the run (the report), atomically.
    public func write(_ data: Data, named name: String) throws(RunError) {
        do { try FileWriting.writeAtomically(data, to: path + "/" + name) } catch { throw .file(error) }
    }

    // MARK: - Checkpoints

    /// Writes a checkpoint under a temporary name, syncs every file, writes MANIFEST
    /// last, renames the directory into place, then moves `latest`, and keeps the newest
    /// `keep` checkpoints.
    /// - Parameters:
    ///   - extras: further files (buffered rollouts), listed in MANIFEST too.
    ///   - progress: called before each part of the work with a status text (the file,
    ///     the share done by bytes, the time left).
    /// - Returns: the bytes written.
    @discardableResult
    public func writeCheckpoint(step: Int, model: GPT2, optimizer: Optimizer, state: JSON, keep: Int,
                                extras: [String: Data] = [:], progress: (String) -> Void = { _ in }) throws(RunError) -> Int {
        let name = Checkpoint.name(step: step)
        let final = checkpointsPath + "/" + name
        let tmp = checkpointsPath + "/.tmp-" + name + "-\(getpid())"
        let fm = FileManager.default
        try? fm.removeItem(atPath: tmp)
        // Progress by bytes: the weights and both moments are written, then read back and
        // hashed for the MANIFEST; the rest is small.
        let weightBytes = 4 * model.params.count, momentBytes = 4 * (optimizer.m.count + optimizer.v.count)
        let total = 2 * (weightBytes + momentBytes)
        let clock = PhaseClock(start: monotonicSeconds(), startStep: 0)
        var done = 0
        func report(_ what: String) {
            let share = Double(done) / Double(max(1, total))
            let left = done > 0 ? "  " + clock.leftText(done: done, total: total, now: monotonicSeconds()) : ""
            progress(String(format: "checkpoint %@: %@  %.0f%%%@", name as NSString, what as NSString, 100 * share, left as NSString))
        }
        var written = 0
        do {
            report("writing model.safetensors")
            try ModelDirectory.save(model, to: tmp, metadata: ["step": String(step)])
            done += weightBytes
            report("writing optimizer.safetensors")
            let tensors: [(name: String, shape: [Int], values: UnsafeBufferPointer<Float>)] = [
                ("adam.m", [optimizer.m.count], UnsafeBufferPointer(optimizer.m.buffer)),
                ("adam.v", [optimizer.v.count], UnsafeBufferPointer(optimizer.v.buffer)),
            ]
            try FileWriting.writeAtomically(SafetensorsFile.serialize(tensors, metadata: ["t": String(optimizer.t), "optimizer": optimizer.config.kind.rawValue]),
                                            to: tmp + "/optimizer.safetensors")
            done += momentBytes
            try FileWriting.writeAtomically(Data((state.pretty + "\n").utf8), to: tmp + "/state.json")
            for (file, data) in extras { try FileWriting.writeAtomically(data, to: tmp + "/" + file) }
            var manifest = ""
            for file in Checkpoint.requiredFiles + extras.keys.sorted() {
                report("hashing " + file)
                guard let data = fm.contents(atPath: tmp + "/" + file) else {
                    throw RunError.checkpoint(path: tmp + "/" + file, reason: "cannot read back what was just written")
                }
                manifest += data.withUnsafeBytes { SHA256.hex(of: $0) } + "  " + file + "\n"
                written += data.count
                if file == "model.safetensors" { done += weightBytes }
                if file == "optimizer.safetensors" { done += momentBytes }
            }
            try FileWriting.writeAtomically(Data(manifest.utf8), to: tmp + "/MANIFEST")
        } catch {
            try? fm.removeItem(atPath: tmp)
            switch error {
            case let e as RunError: throw e
            case let e as FileFault: throw .file(e)
            case let ModelError.file(e): throw .file(e)
            default: throw .checkpoint(path: tmp, reason: "\(error)")
            }
        }
        if fm.fileExists(atPath: final) { try? fm.removeItem(atPath: final) }
        guard rename(tmp, final) == 0 else {
            let cause = FileFault.currentCause
            try? fm.removeItem(atPath: tmp)
            throw .file(.rename(path: final, cause: cause))
        }
        FileWriting.syncDirectory(checkpointsPath)
        do { try FileWriting.writeAtomically(Data((name + "\n").utf8), to: checkpointsPath + "/latest") } catch {
            throw .file(error)
        }
        for old in Checkpoint.names(in: checkpointsPath).dropLast(keep) { try? fm.removeItem(atPath: checkpointsPath + "/" + old) }
        return written
    }
}
