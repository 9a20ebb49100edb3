/// One trajectory's occurrence at a trie node: trajectory index and position (= depth).
public struct TrieTerm: Sendable, Equatable {
    public var trajectory: Int32
    public var position: Int32
}

/// Trajectories merged by shared token prefixes, laid out in depth-first pre-order.
///
/// Row u has token `tokens[u]`, parent `parents[u]` (-1 at a root, always an earlier
/// row) and depth = position. Every trajectory through u keeps its own term
/// (`terms(of: u)`), so shared tokens may carry different masks, behaviour log-probs
/// and advantages. Children are laid out in the order their first trajectory appeared,
/// so the layout is deterministic.
public struct Trie: Sendable {
    public let tokens: [Int32]
    public let parents: [Int32]
    public let depths: [Int32]
    /// Terms of row u: `terms[termStart[u]..<termStart[u+1]]`.
    public let termStart: [Int32]
    public let terms: [TrieTerm]
    /// Row of each trajectory's last token.
    public let endRow: [Int32]
    public let trajectoryCount: Int

    public var count: Int { tokens.count }
    /// Tokens of the flattened batch (every trajectory on its own).
    public var flatTokens: Int { terms.count }

    public func terms(of row: Int) -> ArraySlice<TrieTerm> { terms[Int(termStart[row])..<Int(termStart[row + 1])] }

    /// Merges the token sequences by shared prefixes.
    /// - Complexity: O(total tokens) expected (one hash lookup per token).
    public init(sequences: [[Int32]]) {
        // Build with temporary ids in insertion order.
        var childOf: [UInt64: Int32] = [:]
        var tmpToken: [Int32] = [], tmpParent: [Int32] = [], tmpChildren: [[Int32]] = []
        var roots: [Int32] = []
        var paths: [[Int32]] = []
        childOf.reserveCapacity(sequences.reduce(0) { $0 + $1.count })
        for seq in sequences {
            var path: [Int32] = []
            path.reserveCapacity(seq.count)
            var parent: Int32 = -1
            for tok in seq {
                let key = (UInt64(UInt32(bitPattern: parent)) << 32) | UInt64(UInt32(bitPattern: tok))
                if let node = childOf[key] {
                    parent = node
                } else {
                    let node = Int32(tmpToken.count)
                    tmpToken.append(tok); tmpParent.append(parent); tmpChildren.append([])
                    if parent >= 0 { tmpChildren[Int(parent)].append(node) } else { roots.append(node) }
                    childOf[key] = node
                    parent = node
                }
                path.append(parent)
            }
            paths.append(path)
        }
        // Depth-first pre-order.
        let n = tmpToken.count
        var newIndex = [Int32](repeating: -1, count: n)
        var order: [Int32] = []
        order.reserveCapacity(n)
        var stack: [Int32] = roots.reversed()
        while let node = stack.popLast() {
            newIndex[Int(node)] = Int32(order.count)
            order.append(node)
            stack.append(contentsOf: tmpChildren[Int(node)].reversed())
        }
        tokens = order.map { tmpToken[Int($0)] }
        parents = order.map { let p = tmpParent[Int($0)]; return p < 0 ? -1 : newIndex[Int(p)] }
        var depth = [Int32](repeating: 0, count: n)
        for u in 0..<n where parents[u] >= 0 { depth[u] = depth[Int(parents[u])] + 1 }
        depths = depth
        // Terms grouped by row (CSR).
        var counts = [Int32](repeating: 0, count: n + 1)
        for path in paths { for node in path { counts[Int(newIndex[Int(node)]) + 1] += 1 } }
        for u in 0..<n { counts[u + 1] += counts[u] }
        var fill = counts
        var ts = [TrieTerm](repeating: TrieTerm(trajectory: 0, position: 0), count: Int(counts[n]))
        var ends = [Int32]()
        for (s, path) in paths.enumerated() {
            for (t, node) in path.enumerated() {
                let r = Int(newIndex[Int(node)])
                ts[Int(fill[r])] = TrieTerm(trajectory: Int32(s), position: Int32(t))
                fill[r] += 1
            }
            ends.append(path.last.map { newIndex[Int($0)] } ?? -1)
        }
        termStart = counts
        terms = ts
        endRow = ends
        trajectoryCount = sequences.count
    }

    /// The trie of trajectories' tokens.
    public init(_ trajectories: [Trajectory]) { self.init(sequences: trajectories.map(\.tokens)) }

    /// Every trajectory as its own chain, with no sharing: the flat layout, for comparison.
    public static func flat(sequences: [[Int32]]) -> Trie {
        // Distinct roots per sequence: build each alone and concatenate.
        var tokens: [Int32] = [], parents: [Int32] = []
        var seqs: [[Int32]] = []
        for s in sequences {
            for (k, t) in s.enumerated() { parents.append(k == 0 ? -1 : Int32(tokens.count - 1)); tokens.append(t) }
            seqs.append(s)
        }
        return Trie(layoutTokens: tokens, parents: parents, sequences: seqs)
    }

    private init(layoutTokens: [Int32], parents: [Int32], sequences: [[Int32]]) {
        tokens = layoutTokens
        self.parents = parents
        var depth = [Int32](repeating: 0, count: layoutTokens.count)
        for u in 0..<layoutTokens.count where parents[u] >= 0 { depth[u] = depth[Int(parents[u])] + 1 }
        depths = depth
        termStart = (0...layoutTokens.count).map { Int32($0) }
        var ts: [TrieTerm] = [], ends: [Int32] = []
        for (s, seq) in sequences.enumerated() {
            for t in 0..<seq.count { ts.append(TrieTerm(trajectory: Int32(s), position: Int32(t))) }
            ends.append(Int32(ts.count - 1))
        }
        terms = ts
        endRow = ends
        trajectoryCount = sequences.count
    }
}
