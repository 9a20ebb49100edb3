import KATSupport

/// Group keys: the `group` field, or a group of its own when it is missing.
public func groupKeys(_ trajectories: [Trajectory]) -> [String] {
    trajectories.map { $0.group.map { "g:" + $0 } ?? "solo:" + $0.id }
}

/// Offline batches (Docs/formats.md): whole groups in file order until
/// `batch.trajectories` is reached (a group is never split; a group larger than the batch
/// is a step of its own); after the last group the next epoch starts, its groups shuffled
/// by the seed when `shuffle` is on.
public struct OfflineData: Sendable {
    public let trajectories: [Trajectory]
    /// Trajectory indices of each group, groups in order of first appearance.
    public let groups: [[Int]]
    public let batchSize: Int
    public let shuffle: Bool
    public let seed: UInt64
    /// Position: epoch and index into that epoch's group order.
    public private(set) var epoch = 0
    public private(set) var position = 0
    private var order: [Int]

    public init(trajectories: [Trajectory], batchSize: Int, shuffle: Bool, seed: UInt64) {
        self.trajectories = trajectories
        var index: [String: Int] = [:]
        var gs: [[Int]] = []
        for (s, key) in groupKeys(trajectories).enumerated() {
            if let g = index[key] { gs[g].append(s) } else { index[key] = gs.count; gs.append([s]) }
        }
        groups = gs
        self.batchSize = batchSize
        self.shuffle = shuffle
        self.seed = seed
        order = Array(0..<gs.count)
    }

    /// The group order of an epoch: file order first, then a seeded shuffle per epoch.
    func orderOf(epoch e: Int) -> [Int] {
        var o = Array(0..<groups.count)
        guard e > 0, shuffle else { return o }
        var rng = SplitMix64(seed: seed &* 0x9E37_79B9 &+ UInt64(e))
        for i in stride(from: o.count - 1, to: 0, by: -1) {
            let j = Int(rng.next() % UInt64(i + 1))
            o.swapAt(i, j)
        }
        return o
    }

    /// Moves the cursor to a saved position (for resume).
    public mutating func seek(epoch e: Int, position p: Int) {
        epoch = e; position = p; order = orderOf(epoch: e)
    }

    /// The next batch, as groups of trajectory indices.
    public mutating func nextBatch() -> [[Int]] {
        var batch: [[Int]] = []
        var count = 0
        while true {
            // Peek at the next group (possibly the first of the next epoch) before taking it.
            let wraps = position >= order.count
            let nextOrder = wraps ? orderOf(epoch: epoch + 1) : order
            let g = groups[nextOrder[wraps ? 0 : position]]
            if !batch.isEmpty && count + g.count > batchSize { break }
            if wraps { epoch += 1; position = 0; order = nextOrder }
            batch.append(g)
            count += g.count
            position += 1
            if count >= batchSize { break }
        }
        return batch
    }
}

/// Splits groups into `k` minibatches of whole groups with about equal trajectory counts,
/// keeping their order. Fewer minibatches come back when there are fewer groups.
public func minibatches(_ groups: [[Int]], _ k: Int) -> [[Int]] {
    let total = groups.reduce(0) { $0 + $1.count }
    let parts = max(1, min(k, groups.count))
    var out: [[Int]] = []
    var current: [Int] = []
    var done = 0
    for (i, g) in groups.enumerated() {
        current += g
        done += g.count
        let target = Double(total) * Double(out.count + 1) / Double(parts)
        let groupsLeft = groups.count - i - 1, partsLeft = parts - out.count - 1
        if out.count < parts - 1, Double(done) >= target || groupsLeft == partsLeft {
            out.append(current); current = []
        }
    }
    if !current.isEmpty { out.append(current) }
    return out
}
