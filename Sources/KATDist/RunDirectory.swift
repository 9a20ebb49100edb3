import Foundation
import KATModel
import KATSupport
#if canImport(Glibc)
import Glibc
#endif

/// The lock that makes one process tree the only writer of a run directory: an
/// exclusive `flock` on RUN/.lock, held for the life of the run. The kernel drops it when
/// the holder dies, however it dies, so a lock left by a dead process is simply taken.
public final class RunLock {
    public let path: String
    private let fd: Int32

    /// Takes the lock of `directory` (created when missing) or refuses.
    /// - Throws: `RunError.runDirectory` naming the holder's pid when another process
    ///   holds it.
    public init(directory: String) throws(RunError) {
        path = directory + "/.lock"
        do { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) } catch {
            throw .runDirectory(path: directory, reason: "cannot create the run directory (\(error.localizedDescription))")
        }
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .file(.create(path: path, cause: FileFault.currentCause)) }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            var buf = [UInt8](repeating: 0, count: 32)
            let n = pread(fd, &buf, 31, 0)
            let holder = n > 0 ? String(decoding: buf[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) : "?"
            close(fd)
            throw .runDirectory(path: directory, reason: "is in use by another kat-dist (pid \(holder)); wait for it to end or choose another --run-dir")
        }
        let pid = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = pwrite(fd, pid, pid.count, 0)
    }

    deinit { close(fd) }
}

/// A run directory: config.json, metrics (metrics.jsonl, metrics.csv, a TensorBoard
/// event file), report.html, checkpoints/ (see Docs/formats.md).
///
/// Only the first trainer opens one, and holds its lock for the run's life; the other
/// ranks never write to it.
public final class RunDirectory {
    public let path: String
    let lock: RunLock
    let metrics: MetricsLog
    var trainedIDs: LineFile?

    public var checkpointsPath: String { path + "/checkpoints" }
    public var metricsPath: String { path + "/metrics.jsonl" }

    /// Opens the metrics files: new ones, or those of a run resumed after `resumedStep`.
    private init(path: String, lock: RunLock, resumedStep: Int?) throws(RunError) {
        self.path = path
        self.lock = lock
        metrics = try MetricsLog(directory: path, upToStep: resumedStep)
    }

    /// What is at a path given as a run directory.
    enum Kind: Equatable {
        case missing
        case empty
        /// A directory kat-dist made for a run (its lock file, its checkpoints, or its
        /// config and metrics).
        case run
        /// Anything else: a file, or a directory holding other things (one named).
        case other(String)
    }

    static func kind(of path: String) -> Kind {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: path, isDirectory: &isDir) else { return .missing }
        guard isDir.boolValue else { return .other("it is a file, not a directory") }
        let entries = (try? fm.contentsOfDirectory(atPath: path)) ?? []
        if entries.isEmpty { return .empty }
        if entries.contains(".lock") || !Checkpoint.names(in: path + "/checkpoints").isEmpty
            || (entries.contains("config.json") && entries.contains("metrics.jsonl")) {
            return .run
        }
        return .other("it holds \(entries.sorted().first ?? "")")
    }

    /// Refuses a path that is neither missing, empty, nor a kat-dist run directory, so
    /// that a run never writes into a directory of other files (a model, a checkpoint, /).
    static func checkUsable(_ path: String) throws(RunError) {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDir), !isDir.boolValue {
            throw .runDirectory(path: path, reason: "exists and is not a directory")
        }
        if case let .other(what) = kind(of: path) {
            throw .runDirectory(path: path, reason: "is not a kat-dist run directory (\(what)); give a new or empty directory")
        }
    }

    /// Opens or creates `path` for a new run. A directory that already holds checkpoints
    /// or metrics is refused (resume it instead); nothing in it is touched.
    public static func create(newRunAt path: String) throws(RunError) -> RunDirectory {
        try checkUsable(path)
        let lock = try RunLock(directory: path)
        if let newest = Checkpoint.names(in: path + "/checkpoints").last {
            throw .runDirectory(path: path, reason: "already holds checkpoints (\(newest)); resume it with --resume auto or choose another --run-dir")
        }
        if FileManager.default.fileExists(atPath: path + "/metrics.jsonl") {
            throw .runDirectory(path: path, reason: "already holds metrics.jsonl from another run; choose another --run-dir")
        }
        removeLeftovers(path)
        do { try FileManager.default.createDirectory(atPath: path + "/checkpoints", withIntermediateDirectories: true) } catch {
            throw .runDirectory(path: path, reason: "cannot create the run directory (\(error.localizedDescription))")
        }
        return try RunDirectory(path: path, lock: lock, resumedStep: nil)
    }

    /// Opens an existing run directory to continue it after the checkpoint of `step`:
    /// metrics after that step are dropped (they belong to a timeline that did not reach
    /// a checkpoint) and new lines append. Call it with the run's lock already held.
    static func resume(at path: String, lock: RunLock, step: Int) throws(RunError) -> RunDirectory {
        removeLeftovers(path)
        do { try FileManager.default.createDirectory(atPath: path + "/checkpoints", withIntermediateDirectories: true) } catch {
            throw .runDirectory(path: path, reason: "cannot create the run directory (\(error.localizedDescription))")
        }
        // metrics.jsonl, metrics.csv and the event file are cut back together.
        do { try truncateLines(path + "/trained_ids.jsonl", upToStep: step) } catch { throw .file(error) }
        return try RunDirectory(path: path, lock: lock, resumedStep: step)
    }

    /// Starts `path` as a new run that continues from `checkpoint` (a checkpoint of another
    /// run, at `step`): the directory must be new as for any run; the source run's metrics
    /// up to the checkpoint are copied so that curves and times continue, and origin.json
    /// records where the run came from.
    static func fork(newRunAt path: String, lock: RunLock, from checkpoint: String, step: Int) throws(RunError) -> RunDirectory {
        if samePath(path, checkpoint) || absolute(path).hasPrefix(absolute(checkpoint) + "/") {
            throw .runDirectory(path: path, reason: "is inside the checkpoint it would continue from; give a new directory")
        }
        if let newest = Checkpoint.names(in: path + "/checkpoints").last {
            throw .runDirectory(path: path, reason: "already holds checkpoints (\(newest)); a fork needs a new --run-dir")
        }
        if FileManager.default.fileExists(atPath: path + "/metrics.jsonl") {
            throw .runDirectory(path: path, reason: "already holds metrics.jsonl; a fork needs a new --run-dir")
        }
        removeLeftovers(path)
        do { try FileManager.default.createDirectory(atPath: path + "/checkpoints", withIntermediateDirectories: true) } catch {
            throw .runDirectory(path: path, reason: "cannot create the run directory (\(error.localizedDescription))")
        }
        if let source = runOf(checkpoint: checkpoint) {
            for name in ["metrics.jsonl", "trained_ids.jsonl"] {
                guard let data = FileManager.default.contents(atPath: source + "/" + name) else { continue }
                do {
                    try FileWriting.writeAtomically(data, to: path + "/" + name)
                    try truncateLines(path + "/" + name, upToStep: step)
                } catch { throw .file(error) }
            }
        }
        let origin: JSON = ["forked_from": .string(absolute(checkpoint)), "step": JSON(step), "time": JSON(wallSeconds())]
        do { try FileWriting.writeAtomically(Data((origin.pretty + "\n").utf8), to: path + "/origin.json") } catch { throw .file(error) }
        return try RunDirectory(path: path, lock: lock, resumedStep: step)
    }

    /// The run directory a checkpoint directory belongs to (RUN for RUN/checkpoints/step-N),
    /// or nil when it does not sit in one.
    static func runOf(checkpoint: String) -> String? {
        let url = URL(fileURLWithPath: checkpoint).standardizedFileURL
        let parent = url.deletingLastPathComponent()
        guard parent.lastPathComponent == "checkpoints" else { return nil }
        return parent.deletingLastPathComponent().path
    }

    static func absolute(_ path: String) -> String { URL(fileURLWithPath: path).standardizedFileURL.resolvingSymlinksInPath().path }

    static func samePath(_ a: String, _ b: String) -> Bool { absolute(a) == absolute(b) }

    /// Writes config.json as the run is run now, and returns the keys that differ from
    /// `previous` (the config the checkpoint was made with), or from this run's earlier
    /// config.json. A differing earlier config.json of this run is kept beside it as
    /// config.before-step-NNNNNN.json.
    func recordConfig(_ json: JSON, previous: JSON?, step: Int) throws(RunError) -> [String] {
        let own = path + "/config.json"
        let ownData = FileManager.default.contents(atPath: own)
        let ownJSON = ownData.flatMap { try? JSON.parse(String(decoding: $0, as: UTF8.self)) }
        var changes: [String] = []
        if let earlier = previous ?? ownJSON {
            let before = RunDirectory.flatten(earlier), after = RunDirectory.flatten(json)
            for key in Set(before.keys).union(after.keys).sorted() where before[key] != after[key] {
                changes.append("\(key): \(before[key]?.serialized ?? "(absent)") -> \(after[key]?.serialized ?? "(absent)")")
            }
        }
        if let ownData, let ownJSON, ownJSON != json {
            // Earlier configs are kept, never overwritten: config.before-step-N[-K].json.
            var name = path + "/config.before-" + Checkpoint.name(step: step) + ".json"
            var k = 2
            while FileManager.default.fileExists(atPath: name) {
                name = path + "/config.before-" + Checkpoint.name(step: step) + "-\(k).json"
                k += 1
            }
            do { try FileWriting.writeAtomically(ownData, to: name) } catch { throw .file(error) }
        }
        try writeConfig(json)
        return changes
    }

    /// A JSON file's contents, or nil when it is missing or not JSON.
    static func readJSON(_ path: String) -> JSON? {
        FileManager.default.contents(atPath: path).flatMap { try? JSON.parse(String(decoding: $0, as: UTF8.self)) }
    }

    /// Dotted keys and their values of a config of nested objects.
    static func flatten(_ json: JSON, prefix: String = "") -> [String: JSON] {
        guard let members = json.objectMembers else { return [prefix: json] }
        var out: [String: JSON] = [:]
        for (k, v) in members {
            let key = prefix.isEmpty ? k : prefix + "." + k
            if v.objectMembers != nil { out.merge(flatten(v, prefix: key)) { a, _ in a } } else { out[key] = v }
        }
        return out
    }

    /// Whether `name` is a temporary name kat-dist itself gives in a run directory (`dir`
    /// "run") or its checkpoints directory: `FILE.tmp-PID` for the files it writes, and
    /// `.tmp-step-N-PID` checkpoint directories. Nothing else is ever removed.
    static func isOwnTemporary(_ name: String, inCheckpoints: Bool) -> Bool {
        func pidSuffix(_ s: Substring) -> Bool { !s.isEmpty && s.allSatisfy(\.isNumber) }
        if inCheckpoints {
            if name.hasPrefix(".tmp-step-") {
                let parts = name.dropFirst(".tmp-step-".count).split(separator: "-")
                return parts.count == 2 && parts.allSatisfy(pidSuffix)
            }
            return name.hasPrefix("latest.tmp-") && pidSuffix(name.dropFirst("latest.tmp-".count))
        }
        guard let r = name.range(of: ".tmp-", options: .backwards), pidSuffix(name[r.upperBound...]) else { return false }
        let base = String(name[..<r.lowerBound])
        return ["metrics.jsonl", "metrics.csv", "config.json", "report.html", "trained_ids.jsonl", "origin.json"].contains(base)
            || base.hasPrefix("config.before-step-") || base.hasPrefix("events.out.tfevents.")
    }

    /// Removes what a killed run left half-written: kat-dist's own temporary checkpoint
    /// directories and temporary files of atomic writes.
    static func removeLeftovers(_ path: String) {
        let fm = FileManager.default
        for (dir, inCheckpoints) in [(path, false), (path + "/checkpoints", true)] {
            for name in (try? fm.contentsOfDirectory(atPath: dir)) ?? [] where isOwnTemporary(name, inCheckpoints: inCheckpoints) {
                try? fm.removeItem(atPath: dir + "/" + name)
            }
        }
    }

    /// Moves the checkpoints after `step` (a timeline abandoned by resuming an older
    /// checkpoint) into RUN/abandoned/TIME/, so nothing is lost and the newest checkpoint
    /// is again the one the run continues from.
    /// - Returns: the names moved.
    func setAsideCheckpoints(after step: Int) throws(RunError) -> [String] {
        let newer = Checkpoint.names(in: checkpointsPath).filter { (Checkpoint.step(ofName: $0) ?? 0) > step }
        guard !newer.isEmpty else { return [] }
        let place = path + "/abandoned/" + String(Int(wallSeconds()))
        do {
            try FileManager.default.createDirectory(atPath: place, withIntermediateDirectories: true)
            for name in newer { try FileManager.default.moveItem(atPath: checkpointsPath + "/" + name, toPath: place + "/" + name) }
        } catch {
            throw .runDirectory(path: place, reason: "cannot set aside the newer checkpoints (\(error.localizedDescription))")
        }
        do { try FileWriting.writeAtomically(Data((Checkpoint.name(step: step) + "\n").utf8), to: checkpointsPath + "/latest") } catch {
            throw .file(error)
        }
        return newer
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

    /// Appends one line to RUN/trained_ids.jsonl: the trajectory ids trained at a step,
    /// the policy version before it, and each trajectory's oldest and newest token version
    /// (from its per-token `versions`; null when it has none).
    public func appendTrainedIDs(step: Int, ids: [String], versionBefore: Int, tokenVersions: [(oldest: Int, newest: Int)?]) throws(RunError) {
        do {
            if trainedIDs == nil { trainedIDs = try LineFile(appendingTo: path + "/trained_ids.jsonl") }
            let oldest = tokenVersions.map { $0.map { JSON($0.oldest) } ?? .null }, newest = tokenVersions.map { $0.map { JSON($0.newest) } ?? .null }
            try trainedIDs?.append(JSON.object([("step", JSON(step)), ("ids", .array(ids.map { .string($0) })),
                                                ("version_before", JSON(versionBefore)), ("oldest_versions", .array(oldest)),
                                                ("newest_versions", .array(newest))]).serialized)
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
    ///   - extras: further files (buffered rollouts, the tokenizer's files), listed in MANIFEST too.
    ///   - dtype: element type of the weights (F32 or BF16); the optimizer state is F32.
    ///   - progress: called before each part of the work with a status text (the file,
    ///     the share done by bytes, the time left).
    ///   - between: run between files (heartbeats: a big checkpoint takes a while).
    /// - Returns: the bytes written.
    @discardableResult
    public func writeCheckpoint(step: Int, model: any LanguageModel, optimizer: Optimizer, state: JSON, keep: Int,
                                extras: [String: Data] = [:], dtype: SafetensorsDType = .F32,
                                progress: (String) -> Void = { _ in }, between: () throws -> Void = {}) throws(RunError) -> Int {
        let name = Checkpoint.name(step: step)
        let final = checkpointsPath + "/" + name
        let tmp = checkpointsPath + "/.tmp-" + name + "-\(getpid())"
        let fm = FileManager.default
        try? fm.removeItem(atPath: tmp)
        // Progress by bytes: the weights and both moments are written, then read back and
        // hashed for the MANIFEST; the rest is small.
        let weightBytes = (dtype == .BF16 ? 2 : 4) * model.params.count, momentBytes = 4 * (optimizer.m.count + optimizer.v.count)
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
            try ModelDirectory.save(model, to: tmp, metadata: ["step": String(step)], dtype: dtype)
            done += weightBytes
            try between()
            report("writing optimizer.safetensors")
            let tensors: [(name: String, shape: [Int], values: UnsafeBufferPointer<Float>)] = [
                ("adam.m", [optimizer.m.count], UnsafeBufferPointer(optimizer.m.buffer)),
                ("adam.v", [optimizer.v.count], UnsafeBufferPointer(optimizer.v.buffer)),
            ]
            try FileWriting.writeAtomically(SafetensorsFile.serialize(tensors, metadata: ["t": String(optimizer.t), "optimizer": optimizer.config.kind.rawValue]),
                                            to: tmp + "/optimizer.safetensors")
            done += momentBytes
            try between()
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
                try between()
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
