import Foundation
import KATSupport
import KATTrie

/// Groups of trajectories as one byte message between ranks (and in checkpoints of
/// buffered rollouts): the trajectories (`TrajectoryCodec`), then each group's size, then
/// a trailer of small counts; every size is a little-endian UInt32, each list followed by
/// its length.
enum GroupsMessage {
    /// The trajectories, then each group's size (the form of buffered rollouts in a
    /// checkpoint's buffer.bin).
    static func encode(_ groups: [[Trajectory]]) -> [UInt8] {
        TrajectoryCodec.encode(groups.flatMap { $0 }) + sizes(groups.map(\.count))
    }

    /// The groups of a message written by `encode(_:)`.
    /// - Throws: `TrajectoryCodec.DecodeError` when the message is malformed.
    static func decode(_ message: [UInt8]) throws -> [[Trajectory]] {
        var bytes = message
        let counts = try readSizes(&bytes)
        let all = try TrajectoryCodec.decode(bytes)
        guard counts.allSatisfy({ $0 >= 0 }), counts.reduce(0, +) == all.count else { throw TrajectoryCodec.DecodeError() }
        var out: [[Trajectory]] = [], k = 0
        for c in counts { out.append(Array(all[k..<(k + c)])); k += c }
        return out
    }

    /// Groups followed by a trailer of small counts.
    static func encode(_ groups: [[Trajectory]], trailer: [Int]) -> [UInt8] { encode(groups) + sizes(trailer) }

    /// The groups and the trailer of a message written by `encode(_:trailer:)`.
    static func decodeWithTrailer(_ message: [UInt8]) throws -> (groups: [[Trajectory]], trailer: [Int]) {
        var bytes = message
        let trailer = try readSizes(&bytes)
        return (try decode(bytes), trailer)
    }

    static func sizes(_ values: [Int]) -> [UInt8] {
        var out: [UInt8] = []
        for s in values { withUnsafeBytes(of: UInt32(truncatingIfNeeded: s).littleEndian) { out += $0 } }
        withUnsafeBytes(of: UInt32(values.count).littleEndian) { out += $0 }
        return out
    }

    /// Reads a list written by `sizes` from the end of `bytes` and removes it.
    static func readSizes(_ bytes: inout [UInt8]) throws -> [Int] {
        func u32(_ at: Int) -> Int { Int(bytes[at]) | Int(bytes[at + 1]) << 8 | Int(bytes[at + 2]) << 16 | Int(bytes[at + 3]) << 24 }
        guard bytes.count >= 4 else { throw TrajectoryCodec.DecodeError() }
        let n = u32(bytes.count - 4)
        guard bytes.count >= 4 + 4 * n else { throw TrajectoryCodec.DecodeError() }
        let base = bytes.count - 4 - 4 * n
        let values = (0..<n).map { u32(base + 4 * $0) }
        bytes.removeLast(4 + 4 * n)
        return values
    }
}

/// Rollouts finished but not yet trained, as a checkpoint holds them: buffer.bin (the
/// groups) and, in state.json, `buffered_ids` (every trajectory id in it) and
/// `buffered_files`. Any rank layout resumes them: with rollout ranks they refill trainer
/// 0's buffer, without they are trained before new groups are generated.
enum BufferedRollouts {
    static let file = "buffer.bin"

    static func checkpoint(_ groups: [[Trajectory]]) -> (fields: [(String, JSON)], files: [String: Data]) {
        let ids = groups.flatMap { $0.map { JSON.string($0.id) } }
        return ([("buffered_ids", .array(ids)), ("buffered_files", [.string(file)])],
                [file: Data(GroupsMessage.encode(groups))])
    }

    /// The groups a checkpoint holds (none when it has no buffer file).
    /// - Throws: `RunError.checkpoint` when the file does not decode or does not match
    ///   `buffered_ids`.
    static func load(state: JSON, directory: String) throws -> [[Trajectory]] {
        let path = directory + "/" + file
        guard let data = FileManager.default.contents(atPath: path) else { return [] }
        let groups: [[Trajectory]]
        do { groups = try GroupsMessage.decode(Array(data)) } catch { throw RunError.checkpoint(path: path, reason: "\(error)") }
        if let listed = state["buffered_ids"]?.arrayValue?.compactMap(\.stringValue),
           listed != groups.flatMap({ $0.map(\.id) }) {
            throw RunError.checkpoint(path: path, reason: "holds other trajectories than state.json's buffered_ids")
        }
        return groups
    }
}
