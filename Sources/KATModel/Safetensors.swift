import KATSupport
import Foundation

/// Element types a safetensors file may declare.
public enum SafetensorsDType: String, Sendable, CaseIterable {
    case F64, F32, F16, BF16, I64, I32, I16, I8, U64, U32, U16, U8, BOOL
    public var size: Int {
        switch self {
        case .F64, .I64, .U64: return 8
        case .F32, .I32, .U32: return 4
        case .F16, .BF16, .I16, .U16: return 2
        case .I8, .U8, .BOOL: return 1
        }
    }
}

/// One tensor's entry in a safetensors header.
public struct SafetensorsEntry: Equatable, Sendable {
    public var name: String
    public var dtype: SafetensorsDType
    public var shape: [Int]
    /// Byte range within the data section.
    public var begin: Int
    public var end: Int
}

/// A safetensors file read and validated in full (the format of Hugging Face's safetensors project).
public struct SafetensorsFile: Sendable {
    public let path: String
    /// Entries in data order.
    public let entries: [SafetensorsEntry]
    public let metadata: [String: String]
    let data: Data
    let dataStart: Int

    /// Largest header accepted, in bytes.
    public static let maxHeaderBytes = 100_000_000

    public func entry(_ name: String) -> SafetensorsEntry? { entries.first { $0.name == name } }

    /// Reads and validates a file: length prefix, header JSON, dtypes, shapes, offsets
    /// contiguous from 0 with no gap or overlap, and the file ending at the last offset.
    public static func read(path: String) throws(ModelError) -> SafetensorsFile {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped) } catch {
            throw .io(path: path, reason: FileManager.default.fileExists(atPath: path) ? "cannot read the file" : "no such file")
        }
        return try parse(data: data, path: path)
    }

    public static func parse(data: Data, path: String) throws(ModelError) -> SafetensorsFile {
        func bad(_ r: String) -> ModelError { .badSafetensors(path: path, reason: r) }
        guard data.count >= 8 else { throw bad("file is \(data.count) bytes, shorter than the 8-byte header length") }
        let n = data.withUnsafeBytes { raw -> UInt64 in
            var v: UInt64 = 0
            for k in 0..<8 { v |= UInt64(raw[k]) << (8 * UInt64(k)) }
            return v
        }
        guard n <= UInt64(maxHeaderBytes) else { throw bad("header length \(n) exceeds the 100 MB limit") }
        let headerLen = Int(n)
        guard data.count >= 8 + headerLen else { throw bad("file is \(data.count) bytes but the header needs \(8 + headerLen)") }
        let header: JSON
        do {
            header = try data.withUnsafeBytes { (raw) throws(JSONError) -> JSON in
                let b = raw.bindMemory(to: UInt8.self)
                return try JSON.parse(bytes: UnsafeBufferPointer(rebasing: b[8..<(8 + headerLen)]))
            }
        } catch { throw bad("header is not valid JSON: \(error)") }
        guard let members = header.objectMembers else { throw bad("header is not a JSON object") }
        var entries: [SafetensorsEntry] = []
        var metadata: [String: String] = [:]
        for (name, value) in members {
            if name == "__metadata__" {
                guard let mm = value.objectMembers else { throw bad("__metadata__ is not an object") }
                for (k, v) in mm {
                    guard let s = v.stringValue else { throw bad("__metadata__ value \(k) is not a string") }
                    metadata[k] = s
                }
                continue
            }
            guard value.objectMembers != nil else { throw bad("tensor \(name): entry is not an object") }
            guard let dt = value["dtype"]?.stringValue else { throw bad("tensor \(name): missing dtype") }
            guard let dtype = SafetensorsDType(rawValue: dt) else { throw bad("tensor \(name): unknown dtype \(dt)") }
            guard let sh = value["shape"]?.arrayValue else { throw bad("tensor \(name): missing shape") }
            var shape: [Int] = []
            for d in sh {
                guard let k = d.intValue, k >= 0 else { throw bad("tensor \(name): shape entries must be non-negative integers") }
                shape.append(k)
            }
            guard let off = value["data_offsets"]?.arrayValue, off.count == 2,
                  let b = off[0].intValue, let e = off[1].intValue, b >= 0, e >= b else {
                throw bad("tensor \(name): data_offsets must be two integers [begin, end] with begin <= end")
            }
            var elements = 1
            for d in shape {
                let (r, o) = elements.multipliedReportingOverflow(by: d)
                guard !o, r < Int(Int32.max) * 64 else { throw bad("tensor \(name): shape \(shape) is too large") }
                elements = r
            }
            guard e - b == elements * dtype.size else {
                throw bad("tensor \(name): data_offsets span \(e - b) bytes but shape \(shape) of \(dt) needs \(elements * dtype.size)")
            }
            entries.append(SafetensorsEntry(name: name, dtype: dtype, shape: shape, begin: b, end: e))
        }
        entries.sort { ($0.begin, $0.end) < ($1.begin, $1.end) }
        var cursor = 0
        for e in entries {
            if e.begin < cursor { throw bad("tensor \(e.name): data_offsets [\(e.begin), \(e.end)] overlap the previous tensor") }
            if e.begin > cursor { throw bad("tensor \(e.name): gap in the data before offset \(e.begin) (previous tensor ends at \(cursor))") }
            cursor = e.end
        }
        let dataLen = data.count - 8 - headerLen
        if dataLen < cursor { throw bad("file is truncated: the data section has \(dataLen) bytes, the header needs \(cursor)") }
        if dataLen > cursor { throw bad("file has \(dataLen - cursor) bytes after the last tensor") }
        return SafetensorsFile(path: path, entries: entries, metadata: metadata, data: data, dataStart: 8 + headerLen)
    }

    /// The tensor's values converted to Float (F32 as is; F16, BF16, F64 converted).
    public func floats(_ name: String) throws(ModelError) -> [Float] {
        guard let e = entry(name) else { throw .missingTensor(path: path, name: name) }
        let count = e.shape.reduce(1, *)
        var out = [Float](repeating: 0, count: count)
        try out.withUnsafeMutableBufferPointer { (dst) throws(ModelError) in try copyFloats(e, into: dst.baseAddress!) }
        return out
    }

    /// Copies a tensor converted to Float into `dst`, which must hold its element count.
    public func copyFloats(_ e: SafetensorsEntry, into dst: UnsafeMutablePointer<Float>) throws(ModelError) {
        let count = e.shape.reduce(1, *)
        let start = dataStart + e.begin
        let dtype = e.dtype
        let ok: Bool = data.withUnsafeBytes { raw -> Bool in
            let base = raw.baseAddress! + start
            switch dtype {
            case .F32:
                for i in 0..<count { dst[i] = Float(bitPattern: base.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self).littleEndian) }
            case .F64:
                for i in 0..<count { dst[i] = Float(Double(bitPattern: base.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self).littleEndian)) }
            case .BF16:
                for i in 0..<count { dst[i] = Float(bitPattern: UInt32(base.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self).littleEndian) << 16) }
            case .F16:
                #if arch(x86_64) || arch(arm64)
                for i in 0..<count { dst[i] = Float(Float16(bitPattern: base.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self).littleEndian)) }
                #else
                return false
                #endif
            default: return false
            }
            return true
        }
        if !ok { throw .badSafetensors(path: path, reason: "tensor \(e.name): dtype \(e.dtype.rawValue) cannot be read as floating point") }
    }

    // MARK: - Writing

    /// Serialises F32 tensors, in the order given, with `"format": "pt"` metadata.
    public static func serialize(_ tensors: [(name: String, shape: [Int], values: UnsafeBufferPointer<Float>)],
                                 metadata: [String: String] = [:]) -> Data {
        var members: [(String, JSON)] = []
        var meta: [(String, JSON)] = [("format", "pt")]
        for (k, v) in metadata.sorted(by: { $0.key < $1.key }) where k != "format" { meta.append((k, .string(v))) }
        members.append(("__metadata__", .object(meta)))
        var off = 0
        for t in tensors {
            let bytes = t.values.count * 4
            members.append((t.name, .object([("dtype", "F32"), ("shape", JSON(t.shape)), ("data_offsets", JSON([off, off + bytes]))])))
            off += bytes
        }
        var header = Array(JSON.object(members).serialized.utf8)
        while (8 + header.count) % 8 != 0 { header.append(0x20) } // align the data section
        var out = Data(capacity: 8 + header.count + off)
        var len = UInt64(header.count).littleEndian
        withUnsafeBytes(of: &len) { out.append(contentsOf: $0) }
        out.append(contentsOf: header)
        for t in tensors {
            #if _endian(little)
            out.append(UnsafeBufferPointer(start: t.values.baseAddress, count: t.values.count))
            #else
            for x in t.values { var b = x.bitPattern.littleEndian; withUnsafeBytes(of: &b) { out.append(contentsOf: $0) } }
            #endif
        }
        return out
    }
}
