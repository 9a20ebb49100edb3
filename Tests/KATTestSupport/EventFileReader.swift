import Foundation
import KATSupport

/// A TensorBoard event file read by the tests, independently of the writer: every
/// TFRecord's two masked CRC-32C are checked and every `Event` is decoded field by field.
public struct EventFile {
    public struct Event {
        public var wallTime = 0.0
        public var step = 0
        public var fileVersion: String?
        /// `simple_value` by tag, in the order written.
        public var scalars: [(tag: String, value: Float)] = []
    }

    public enum Fault: Error, CustomStringConvertible {
        case framing(record: Int, reason: String)
        case message(record: Int, reason: String)
        public var description: String {
            switch self {
            case let .framing(r, why): return "record \(r): \(why)"
            case let .message(r, why): return "record \(r): \(why)"
            }
        }
    }

    public var events: [Event] = []

    /// Reads `path`; any record cut short or with a wrong checksum is a fault.
    public init(path: String) throws {
        let b = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        var i = 0, index = 0
        func u32(_ at: Int) -> UInt32 { (0..<4).reduce(UInt32(0)) { $0 | UInt32(b[at + $1]) << (8 * UInt32($1)) } }
        // TFRecord's mask: rotate right 15 bits, add 0xa282ead8.
        func masked(_ bytes: ArraySlice<UInt8>) -> UInt32 {
            let c = CRC32C.checksum(bytes)
            return ((c >> 15) | (c << 17)) &+ 0xa282_ead8
        }
        while i < b.count {
            guard i + 12 <= b.count else { throw Fault.framing(record: index, reason: "header cut short") }
            let n = (0..<8).reduce(UInt64(0)) { $0 | UInt64(b[i + $1]) << (8 * UInt64($1)) }
            guard u32(i + 8) == masked(b[i..<(i + 8)]) else { throw Fault.framing(record: index, reason: "length CRC mismatch") }
            guard UInt64(b.count - i - 12) >= n + 4 else { throw Fault.framing(record: index, reason: "data cut short") }
            let start = i + 12, end = start + Int(n)
            guard u32(end) == masked(b[start..<end]) else { throw Fault.framing(record: index, reason: "data CRC mismatch") }
            events.append(try EventFile.decodeEvent(Array(b[start..<end]), record: index))
            i = end + 4
            index += 1
        }
    }

    /// Protocol-buffer fields of a message: (field number, wire type, varint or fixed
    /// value, bytes of a length-delimited field).
    static func fields(_ b: [UInt8], record: Int) throws -> [(field: UInt64, wire: UInt64, number: UInt64, bytes: [UInt8])] {
        var out: [(UInt64, UInt64, UInt64, [UInt8])] = []
        var i = 0
        func varint() throws -> UInt64 {
            var v: UInt64 = 0, shift: UInt64 = 0
            while true {
                guard i < b.count, shift < 64 else { throw Fault.message(record: record, reason: "varint cut short") }
                let byte = b[i]; i += 1
                v |= UInt64(byte & 0x7f) << shift
                if byte < 0x80 { return v }
                shift += 7
            }
        }
        func fixed(_ n: Int) throws -> UInt64 {
            guard i + n <= b.count else { throw Fault.message(record: record, reason: "fixed field cut short") }
            defer { i += n }
            return (0..<n).reduce(UInt64(0)) { $0 | UInt64(b[i + $1]) << (8 * UInt64($1)) }
        }
        while i < b.count {
            let key = try varint()
            switch key & 7 {
            case 0: out.append((key >> 3, 0, try varint(), []))
            case 1: out.append((key >> 3, 1, try fixed(8), []))
            case 5: out.append((key >> 3, 5, try fixed(4), []))
            case 2:
                let n = Int(try varint())
                guard n >= 0, i + n <= b.count else { throw Fault.message(record: record, reason: "bytes field cut short") }
                out.append((key >> 3, 2, 0, Array(b[i..<(i + n)])))
                i += n
            default: throw Fault.message(record: record, reason: "wire type \(key & 7)")
            }
        }
        return out
    }

    static func decodeEvent(_ b: [UInt8], record: Int) throws -> Event {
        var e = Event()
        for f in try fields(b, record: record) {
            switch (f.field, f.wire) {
            case (1, 1): e.wallTime = Double(bitPattern: f.number)
            case (2, 0): e.step = Int(Int64(bitPattern: f.number))
            case (3, 2): e.fileVersion = String(decoding: f.bytes, as: UTF8.self)
            case (5, 2):
                for v in try fields(f.bytes, record: record) where v.field == 1 && v.wire == 2 {
                    var tag = "", value: Float?
                    for g in try fields(v.bytes, record: record) {
                        if g.field == 1, g.wire == 2 { tag = String(decoding: g.bytes, as: UTF8.self) }
                        if g.field == 2, g.wire == 5 { value = Float(bitPattern: UInt32(g.number)) }
                    }
                    guard let value else { throw Fault.message(record: record, reason: "value \(tag) has no simple_value") }
                    e.scalars.append((tag, value))
                }
            default: throw Fault.message(record: record, reason: "unexpected field \(f.field) of wire type \(f.wire)")
            }
        }
        return e
    }
}

/// The event files TensorBoard would read in a run directory.
public func eventFiles(in dir: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasPrefix("events.out.tfevents.") }.sorted().map { dir + "/" + $0 }
}
