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

    /// Groups followed by a trailer of named counts.
    static func encode<T: MessageTrailer>(_ groups: [[Trajectory]], trailer: T) -> [UInt8] { encode(groups) + sizes(trailer.words) }

    /// The groups and the trailer of a message written by `encode(_:trailer:)`.
    /// - Throws: `TrajectoryCodec.DecodeError` when the message is malformed or its
    ///   trailer does not have `T`'s fields.
    static func decode<T: MessageTrailer>(_ message: [UInt8], trailer: T.Type) throws -> (groups: [[Trajectory]], trailer: T) {
        var bytes = message
        let words = try readSizes(&bytes)
        guard words.count == T.fieldCount, words.allSatisfy({ $0 >= 0 }) else { throw TrajectoryCodec.DecodeError() }
        return (try decode(bytes), T(words: words))
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

/// Counts that travel after a message's groups, each a non-negative integer below 2^32,
/// in the fixed order of `words`.
protocol MessageTrailer {
    static var fieldCount: Int { get }
    var words: [Int] { get }
    /// - Precondition: `words.count == fieldCount`.
    init(words: [Int])
}

/// Episodes cut by the context length and abandoned after an environment failure.
struct EpisodeCounts: MessageTrailer, Equatable {
    var truncated = 0
    var abandoned = 0

    static let fieldCount = 2
    var words: [Int] { [truncated, abandoned] }
    init(truncated: Int = 0, abandoned: Int = 0) { self.truncated = truncated; self.abandoned = abandoned }
    init(words: [Int]) { self.init(truncated: words[0], abandoned: words[1]) }

    static func + (a: Self, b: Self) -> Self { Self(truncated: a.truncated + b.truncated, abandoned: a.abandoned + b.abandoned) }
    static func += (a: inout Self, b: Self) { a = a + b }
}

/// What a rollout rank sends after each group: the episodes it cut or abandoned since its
/// previous group, the group's sequence number, and the microseconds it was held back by
/// admission control and by back-pressure (its sends in flight at their limit) since its
/// previous group.
struct GroupNote: MessageTrailer {
    var episodes = EpisodeCounts()
    var sequence = 0
    var throttledMicros = 0
    var backpressureMicros = 0

    static let fieldCount = 5
    var words: [Int] { episodes.words + [sequence, throttledMicros, backpressureMicros] }
    init(episodes: EpisodeCounts, sequence: Int, throttledMicros: Int, backpressureMicros: Int) {
        self.episodes = episodes; self.sequence = sequence; self.throttledMicros = throttledMicros
        self.backpressureMicros = backpressureMicros
    }
    init(words: [Int]) {
        self.init(episodes: EpisodeCounts(words: Array(words[0..<2])), sequence: words[2], throttledMicros: words[3], backpressureMicros: words[4])
    }
}

/// A trainer's counts for the batch it helps assemble, summed over trainers.
struct BatchCounts: MessageTrailer {
    /// Trajectories dropped as stale, and their flat tokens.
    var droppedStale = 0
    var droppedStaleTokens = 0
    /// Flat tokens of the groups received since the previous batch.
    var receivedTokens = 0
    var episodes = EpisodeCounts()
    /// Microseconds this trainer waited with nothing to do, and spent generating.
    var idleMicros = 0
    var generateMicros = 0
    /// Microseconds its rollout ranks were held back by admission control, and by
    /// back-pressure (summed).
    var throttledMicros = 0
    /// Groups this trainer generated itself (multiplexing).
    var multiplexedGroups = 0
    var backpressureMicros = 0

    static let fieldCount = 10
    var words: [Int] {
        [droppedStale, droppedStaleTokens, receivedTokens] + episodes.words
            + [idleMicros, generateMicros, throttledMicros, multiplexedGroups, backpressureMicros]
    }
    init() {}
    init(words w: [Int]) {
        droppedStale = w[0]; droppedStaleTokens = w[1]; receivedTokens = w[2]
        episodes = EpisodeCounts(words: Array(w[3..<5]))
        idleMicros = w[5]; generateMicros = w[6]; throttledMicros = w[7]; multiplexedGroups = w[8]; backpressureMicros = w[9]
    }

    static func + (a: Self, b: Self) -> Self { Self(words: zip(a.words, b.words).map { $0 + $1 }) }
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
