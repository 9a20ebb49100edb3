import Foundation
import KATSupport
#if canImport(Glibc)
import Glibc
#endif

// The run's metrics in the three forms users' tools read, written together by
// `MetricsLog`: RUN/metrics.jsonl (the record), RUN/metrics.csv and a TensorBoard event
// file RUN/events.out.tfevents.<seconds>.<host>. Docs/metrics.md describes all three.

// MARK: - TensorBoard event files

/// TensorBoard's event-file format, written directly (no protobuf library).
///
/// A file is a sequence of TFRecords, each
///
///     uint64 length (little-endian) | uint32 masked CRC-32C of those 8 bytes
///     data (length bytes)           | uint32 masked CRC-32C of the data
///
/// around one `Event` protocol buffer (TensorFlow's `event.proto`): `wall_time` (field 1,
/// double, seconds since the Unix epoch), `step` (field 2, int64), `file_version` (field 3,
/// string, only in the first event: "brain.Event:2") and `summary` (field 5), a `Summary`
/// whose repeated `value` (field 1) each hold a `tag` (field 1, string) and a
/// `simple_value` (field 2, float). TensorBoard shows each tag as a scalar curve.
public enum TensorBoardEvents {
    /// The text of the first event of every file.
    public static let fileVersion = "brain.Event:2"

    /// One TFRecord around `data`.
    public static func record(_ data: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(data.count + 16)
        let length = littleEndian(UInt64(data.count))
        out += length
        out += littleEndian(CRC32C.masked(CRC32C.checksum(length)))
        out += data
        out += littleEndian(CRC32C.masked(CRC32C.checksum(data)))
        return out
    }

    /// The records of a file, in order, up to the first one that is cut short or fails a
    /// checksum (a record half-written when a run was killed).
    /// - Returns: the records' data, and whether the whole file was read.
    public static func records(_ bytes: [UInt8]) -> (records: [[UInt8]], intact: Bool) {
        var out: [[UInt8]] = []
        var i = 0
        while i < bytes.count {
            guard i + 12 <= bytes.count else { return (out, false) }
            let lengthBytes = Array(bytes[i..<(i + 8)])
            guard readLE32(bytes, at: i + 8) == CRC32C.masked(CRC32C.checksum(lengthBytes)) else { return (out, false) }
            let n = lengthBytes.enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
            guard n <= UInt64(bytes.count - i - 16) else { return (out, false) }
            let start = i + 12, end = start + Int(n)
            let data = Array(bytes[start..<end])
            guard readLE32(bytes, at: end) == CRC32C.masked(CRC32C.checksum(data)) else { return (out, false) }
            out.append(data)
            i = end + 4
        }
        return (out, true)
    }

    /// The `Event` that opens a file: its wall time and the format version.
    public static func fileVersionEvent(wallTime: Double) -> [UInt8] {
        var e = Protobuf()
        e.double(field: 1, wallTime)
        e.bytes(field: 3, Array(fileVersion.utf8))
        return e.bytes
    }

    /// An `Event` of one step: every scalar as a `simple_value` tagged by its name.
    public static func event(wallTime: Double, step: Int, scalars: [(tag: String, value: Float)]) -> [UInt8] {
        var summary = Protobuf()
        for s in scalars {
            var value = Protobuf()
            value.bytes(field: 1, Array(s.tag.utf8))
            value.float(field: 2, s.value)
            summary.bytes(field: 1, value.bytes)
        }
        var e = Protobuf()
        e.double(field: 1, wallTime)
        e.varint(field: 2, UInt64(bitPattern: Int64(step)))
        e.bytes(field: 5, summary.bytes)
        return e.bytes
    }

    /// The scalars of a metrics line, in its order: numbers, and booleans as 0 or 1.
    /// Strings (`phase`), arrays (`staleness_hist`) and nulls are not scalars.
    public static func scalars(of line: JSON) -> [(tag: String, value: Float)] {
        (line.objectMembers ?? []).compactMap { key, v in
            switch v {
            case let .int(i): return (key, Float(i))
            case let .double(d): return (key, Float(d))
            case let .bool(b): return (key, b ? 1 : 0)
            default: return nil
            }
        }
    }

    /// The step of an encoded `Event` (0 when the field is absent, as protobuf defines),
    /// or nil when the bytes are not a well-formed message.
    public static func step(ofEvent data: [UInt8]) -> Int? {
        var step: Int64 = 0
        var i = 0
        while i < data.count {
            guard let (key, next) = Protobuf.readVarint(data, at: i) else { return nil }
            i = next
            switch key & 7 {
            case 0:
                guard let (v, n) = Protobuf.readVarint(data, at: i) else { return nil }
                if key >> 3 == 2 { step = Int64(bitPattern: v) }
                i = n
            case 1: i += 8
            case 5: i += 4
            case 2:
                guard let (len, n) = Protobuf.readVarint(data, at: i), len <= UInt64(data.count - n) else { return nil }
                i = n + Int(len)
            default: return nil
            }
            if i > data.count { return nil }
        }
        return Int(step)
    }

    /// `events.out.tfevents.<whole seconds>.<host>`, the name TensorBoard looks for.
    public static func fileName(wallTime: Double, host: String) -> String {
        let safeHost = String(host.map { $0 == "/" || $0 == " " ? "_" : $0 })
        return "events.out.tfevents.\(Int(wallTime)).\(safeHost.isEmpty ? "localhost" : safeHost)"
    }

    /// Whether a file name is a TensorBoard event file's.
    public static func isEventFile(_ name: String) -> Bool { name.hasPrefix("events.out.tfevents.") && !name.contains(".tmp-") }

    static func littleEndian(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
    static func littleEndian(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
    static func readLE32(_ b: [UInt8], at i: Int) -> UInt32 {
        UInt32(b[i]) | UInt32(b[i + 1]) << 8 | UInt32(b[i + 2]) << 16 | UInt32(b[i + 3]) << 24
    }
}

/// The few protocol-buffer encodings an `Event` needs: varints, 64- and 32-bit
/// little-endian numbers, and length-delimited bytes, each after its key
/// (field number << 3 | wire type).
struct Protobuf {
    var bytes: [UInt8] = []

    mutating func key(_ field: Int, _ wireType: UInt64) { appendVarint(UInt64(field) << 3 | wireType) }

    mutating func appendVarint(_ value: UInt64) {
        var v = value
        while v >= 0x80 { bytes.append(UInt8(v & 0x7F) | 0x80); v >>= 7 }
        bytes.append(UInt8(v))
    }

    mutating func varint(field: Int, _ v: UInt64) { key(field, 0); appendVarint(v) }
    mutating func double(field: Int, _ v: Double) { key(field, 1); bytes += TensorBoardEvents.littleEndian(v.bitPattern) }
    mutating func float(field: Int, _ v: Float) { key(field, 5); bytes += TensorBoardEvents.littleEndian(v.bitPattern) }
    mutating func bytes(field: Int, _ b: [UInt8]) { key(field, 2); appendVarint(UInt64(b.count)); bytes += b }

    /// A varint at `i`: its value and the index after it, or nil when cut short or over 10 bytes.
    static func readVarint(_ b: [UInt8], at start: Int) -> (UInt64, Int)? {
        var v: UInt64 = 0, shift: UInt64 = 0, i = start
        while i < b.count, shift < 64 {
            let byte = b[i]
            v |= UInt64(byte & 0x7F) << shift
            i += 1
            if byte & 0x80 == 0 { return (v, i) }
            shift += 7
        }
        return nil
    }
}

// MARK: - CSV

/// metrics.csv: a header of every key seen, in order of first appearance, and one row per
/// step. Numbers as in metrics.jsonl, booleans `true`/`false`, a missing or null value an
/// empty cell, arrays (`staleness_hist`) as their JSON text; cells quoted as RFC 4180 says.
public enum CSVTable {
    /// The columns of `lines`: every key, in order of first appearance.
    public static func columns(_ lines: [JSON]) -> [String] {
        var seen = Set<String>(), out: [String] = []
        for l in lines { for (k, _) in l.objectMembers ?? [] where seen.insert(k).inserted { out.append(k) } }
        return out
    }

    public static func header(_ columns: [String]) -> String { columns.map(quote).joined(separator: ",") }

    public static func row(_ line: JSON, columns: [String]) -> String {
        columns.map { k in cell(line[k]) }.joined(separator: ",")
    }

    /// The whole file for `lines`.
    public static func text(_ lines: [JSON]) -> String {
        let cols = columns(lines)
        return ([header(cols)] + lines.map { row($0, columns: cols) }).map { $0 + "\n" }.joined()
    }

    static func cell(_ v: JSON?) -> String {
        switch v {
        case nil, .null?: return ""
        case let .string(s)?: return quote(s)
        case let v?: return quote(v.serialized)
        }
    }

    static func quote(_ s: String) -> String {
        guard s.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) else { return s }
        return "\"" + s.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }
}

// MARK: - The three files together

/// The metrics of a run directory: each step's line goes to metrics.jsonl, metrics.csv and
/// the TensorBoard event file, in that order. On resume all three are cut back to the
/// checkpoint's step, so they always hold the same steps.
final class MetricsLog {
    let directory: String
    private(set) var lines: [JSON]
    private var columns: [String]
    private var jsonl: LineFile
    private var csv: LineFile
    private var events: LineFile

    var jsonlPath: String { directory + "/metrics.jsonl" }
    var csvPath: String { directory + "/metrics.csv" }

    /// Opens the metrics of `directory` for a new run (files are created) or, with
    /// `upToStep`, for a run resumed after that step: lines after it are dropped from all
    /// three files, metrics.csv is rebuilt from the lines kept, the event file keeps its
    /// records up to that step (and gains any kept step it lacks), and new lines append.
    init(directory: String, upToStep: Int?) throws(RunError) {
        self.directory = directory
        do {
            if let step = upToStep { try RunDirectory.truncateLines(directory + "/metrics.jsonl", upToStep: step) }
            let kept = MetricsLog.readLines(directory + "/metrics.jsonl")
            lines = kept
            columns = CSVTable.columns(kept)
            try FileWriting.writeAtomically(Data(CSVTable.text(kept).utf8), to: directory + "/metrics.csv")
            let eventPath = try MetricsLog.prepareEventFile(in: directory, upToStep: upToStep ?? Int.max, lines: kept)
            jsonl = try LineFile(appendingTo: directory + "/metrics.jsonl")
            csv = try LineFile(appendingTo: directory + "/metrics.csv")
            events = try LineFile(appendingTo: eventPath)
        } catch { throw .file(error) }
    }

    /// Appends one step's line to the three files.
    func append(_ line: JSON, wallTime: Double = wallSeconds()) throws(RunError) {
        do {
            try jsonl.append(line.serialized)
            lines.append(line)
            let keys = (line.objectMembers ?? []).map(\.0)
            if keys.contains(where: { !columns.contains($0) }) {
                // A key seen for the first time (the first evaluation, say): the header
                // widens, so the file is rewritten whole, then appended to again.
                columns = CSVTable.columns(lines)
                try FileWriting.writeAtomically(Data(CSVTable.text(lines).utf8), to: csvPath)
                csv = try LineFile(appendingTo: csvPath)
            } else {
                try csv.append(CSVTable.row(line, columns: columns))
            }
            let step = line["step"]?.intValue ?? lines.count
            try events.append(bytes: Data(TensorBoardEvents.record(
                TensorBoardEvents.event(wallTime: wallTime, step: step, scalars: TensorBoardEvents.scalars(of: line)))))
        } catch { throw .file(error) }
    }

    static func readLines(_ path: String) -> [JSON] {
        guard let data = FileManager.default.contents(atPath: path) else { return [] }
        return String(decoding: data, as: UTF8.self).split(separator: "\n").compactMap { try? JSON.parse(String($0)) }
    }

    /// The event file new steps append to. Every event file in the directory keeps its
    /// records up to `upToStep` (rewritten atomically when that drops any); the newest
    /// one is appended to, or a new one is made. Kept metrics lines whose step no event
    /// file holds (a run begun before event files were written) are added to it.
    static func prepareEventFile(in dir: String, upToStep: Int, lines: [JSON]) throws(FileFault) -> String {
        let fm = FileManager.default
        let names = ((try? fm.contentsOfDirectory(atPath: dir)) ?? []).filter(TensorBoardEvents.isEventFile).sorted()
        var present = Set<Int>()
        for name in names {
            let path = dir + "/" + name
            guard let data = fm.contents(atPath: path) else { throw .read(path: path, cause: FileFault.currentCause) }
            let (records, intact) = TensorBoardEvents.records(Array(data))
            var kept: [[UInt8]] = []
            for r in records {
                guard let s = TensorBoardEvents.step(ofEvent: r) else { continue }
                if s <= upToStep { kept.append(r); present.insert(s) }
            }
            if kept.count != records.count || !intact {
                try FileWriting.writeAtomically(Data(kept.flatMap(TensorBoardEvents.record)), to: path)
            }
        }
        let now = wallSeconds()
        let path: String
        var fresh: [UInt8] = []
        if let newest = names.last {
            path = dir + "/" + newest
        } else {
            path = dir + "/" + TensorBoardEvents.fileName(wallTime: now, host: hostName())
            fresh = TensorBoardEvents.record(TensorBoardEvents.fileVersionEvent(wallTime: now))
        }
        for l in lines {
            guard let s = l["step"]?.intValue, !present.contains(s) else { continue }
            fresh += TensorBoardEvents.record(TensorBoardEvents.event(wallTime: now, step: s, scalars: TensorBoardEvents.scalars(of: l)))
        }
        if !fresh.isEmpty {
            let old = fm.contents(atPath: path) ?? Data()
            try FileWriting.writeAtomically(old + Data(fresh), to: path)
        }
        return path
    }

    static func hostName() -> String {
        var buf = [CChar](repeating: 0, count: 256)
        guard gethostname(&buf, buf.count - 1) == 0 else { return "localhost" }
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
