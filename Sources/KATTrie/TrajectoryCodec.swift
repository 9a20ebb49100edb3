/// A compact binary form of trajectories, for messages between ranks and for checkpoints
/// of buffered rollouts. Little-endian; every field of `Trajectory` round-trips exactly.
///
/// Form 2 (written now) opens with the marker `0xFFFFFF02`, then the count, then each
/// trajectory's fields of form 1 followed by a flags word (bit 0: `versions`, bit 1:
/// `entropies`) and those arrays. Form 1 (the count first, no per-token versions or
/// entropies) is still read, so checkpoints written before form 2 resume. A count can
/// never equal the marker: it would need more bytes than any message holds.
public enum TrajectoryCodec {
    public struct DecodeError: Error, CustomStringConvertible {
        public var description: String { "malformed trajectory message" }
        public init() {}
    }

    struct Writer {
        var bytes: [UInt8] = []
        mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
        mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
        mutating func f64(_ v: Double?) { u64(v.map(\.bitPattern) ?? 0x7FF8_DEAD_0000_0001) }
        mutating func str(_ s: String?) {
            guard let s else { u32(UInt32.max); return }
            let b = Array(s.utf8)
            u32(UInt32(b.count)); bytes += b
        }
    }

    struct Reader {
        let bytes: [UInt8]
        var i = 0
        mutating func take(_ n: Int) throws -> ArraySlice<UInt8> {
            guard n >= 0, i + n <= bytes.count else { throw DecodeError() }
            defer { i += n }
            return bytes[i..<(i + n)]
        }
        mutating func u32() throws -> UInt32 { try take(4).reversed().reduce(0) { $0 << 8 | UInt32($1) } }
        mutating func u64() throws -> UInt64 { try take(8).reversed().reduce(0) { $0 << 8 | UInt64($1) } }
        mutating func f64() throws -> Double? { let b = try u64(); return b == 0x7FF8_DEAD_0000_0001 ? nil : Double(bitPattern: b) }
        mutating func str() throws -> String? {
            let n = try u32()
            if n == UInt32.max { return nil }
            return String(decoding: try take(Int(n)), as: UTF8.self)
        }
    }

    static let noVersion: UInt64 = UInt64.max
    /// Opens a form-2 message.
    static let form2: UInt32 = 0xFFFF_FF02

    public static func encode(_ trajectories: [Trajectory]) -> [UInt8] {
        var w = Writer()
        w.u32(form2)
        w.u32(UInt32(trajectories.count))
        for t in trajectories {
            w.str(t.id); w.str(t.group); w.str(t.source)
            w.u32(UInt32(t.tokens.count))
            for x in t.tokens { w.u32(UInt32(bitPattern: x)) }
            w.bytes += t.lossMask
            w.u32(t.logprobs == nil ? 0 : 1)
            if let lp = t.logprobs { for x in lp { w.u32(x.bitPattern) } }
            w.f64(t.reward); w.f64(t.advantage); w.f64(t.entropy)
            w.u64(t.policyVersion.map { UInt64($0) } ?? noVersion)
            w.u32((t.versions == nil ? 0 : 1) | (t.entropies == nil ? 0 : 2))
            if let vs = t.versions { for v in vs { w.u64(v < 0 ? noVersion : UInt64(v)) } }
            if let es = t.entropies { for e in es { w.u32(e.bitPattern) } }
        }
        return w.bytes
    }

    public static func decode(_ bytes: [UInt8]) throws -> [Trajectory] {
        var r = Reader(bytes: bytes)
        var n = Int(try r.u32())
        let isForm2 = n == Int(form2)
        if isForm2 { n = Int(try r.u32()) }
        guard n <= bytes.count else { throw DecodeError() }
        var out: [Trajectory] = []
        for _ in 0..<n {
            let id = try r.str() ?? "", group = try r.str(), source = try r.str() ?? ""
            let len = Int(try r.u32())
            guard len <= bytes.count else { throw DecodeError() }
            var tokens = [Int32](); tokens.reserveCapacity(len)
            for _ in 0..<len { tokens.append(Int32(bitPattern: try r.u32())) }
            let mask = Array(try r.take(len))
            var logprobs: [Float]?
            if try r.u32() == 1 {
                var lp = [Float](); lp.reserveCapacity(len)
                for _ in 0..<len { lp.append(Float(bitPattern: try r.u32())) }
                logprobs = lp
            }
            let reward = try r.f64(), advantage = try r.f64(), entropy = try r.f64()
            let v = try r.u64()
            guard v == noVersion || Int(exactly: v) != nil else { throw DecodeError() }
            var versions: [Int]?, entropies: [Float]?
            if isForm2 {
                let flags = try r.u32()
                guard flags & ~3 == 0 else { throw DecodeError() }
                if flags & 1 != 0 {
                    var vs = [Int](); vs.reserveCapacity(len)
                    for _ in 0..<len {
                        let x = try r.u64()
                        guard x == noVersion || Int(exactly: x) != nil else { throw DecodeError() }
                        vs.append(x == noVersion ? -1 : Int(x))
                    }
                    versions = vs
                }
                if flags & 2 != 0 {
                    var es = [Float](); es.reserveCapacity(len)
                    for _ in 0..<len { es.append(Float(bitPattern: try r.u32())) }
                    entropies = es
                }
            }
            out.append(Trajectory(id: id, group: group, tokens: tokens, lossMask: mask, logprobs: logprobs, reward: reward,
                                  advantage: advantage, entropy: entropy, policyVersion: v == noVersion ? nil : Int(exactly: v),
                                  versions: versions, entropies: entropies, source: source))
        }
        guard r.i == bytes.count else { throw DecodeError() }
        return out
    }
}
