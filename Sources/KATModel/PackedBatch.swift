/// A run of consecutive packed rows `[start, end)` that a query may attend to.
public struct KeyRun: Equatable, Sendable {
    public var start: Int
    public var end: Int
    public var count: Int { end - start }
}

/// A maximal chain of packed rows in which each row's parent is the row before it.
///
/// Every query of the segment sees the same ancestor runs (the root path of the
/// segment's first row's parent, root first) plus the segment's own rows up to itself.
public struct AttentionSegment: Equatable, Sendable {
    public var start: Int
    public var end: Int
    /// Ancestor runs, root first, not including the segment itself.
    public var ancestors: [KeyRun]
    public var length: Int { end - start }
    /// Keys visible to the segment's last row.
    public var keyCount: Int { ancestors.reduce(0) { $0 + $1.count } + length }
}

/// Tokens packed without padding, with "which earlier tokens may this token see" given
/// by parent pointers: a token sees itself and its root path, nothing else.
///
/// A flat sequence is a chain (each token's parent is the token before it); a trie in
/// depth-first pre-order is the general case. Position = depth. The next-token
/// log-prob of row `u` is read from its parent's output, so a row with several
/// children scores each of them.
public struct PackedBatch: Sendable {
    /// Token id of each row.                        (N)
    public let tokens: [Int32]
    /// Parent row of each row, -1 for a root; always smaller than the row.  (N)
    public let parents: [Int32]
    /// Depth of each row = its position id.           (N)
    public let depths: [Int32]
    /// The attention segments, in row order, covering every row once.
    public let segments: [AttentionSegment]
    /// Rows that have at least one scored child: the rows whose output distribution is
    /// computed by the head (every row with children unless the batch was packed with
    /// `scoring`).
    public let headRows: [Int32]
    /// For head row k, its scored children are `children[childStart[k]..<childStart[k+1]]`.
    public let childStart: [Int32]
    public let children: [Int32]

    public var count: Int { tokens.count }

    /// Number of (query, key) pairs the mask allows: the sum over rows of depth + 1.
    public var attentionPairs: Int { depths.reduce(0) { $0 + Int($1) + 1 } }

    /// Packs rows given by tokens and parent pointers.
    /// - Parameter scoring: when given, the rows whose log-prob is wanted (for training, the
    ///   rows that carry a loss token); the head then computes only their parents'
    ///   distributions, and the other rows get log-prob and entropy 0. Nil scores every row.
    /// - Throws: `ModelError.badInput` naming the row when a parent is not an earlier row,
    ///   a token is outside the vocabulary or a depth reaches `maxPositions`.
    public init(tokens: [Int], parents: [Int], vocabSize: Int, maxPositions: Int, scoring: [Bool]? = nil) throws(ModelError) {
        guard tokens.count == parents.count else {
            throw .badInput(reason: "packed batch: \(tokens.count) tokens but \(parents.count) parents")
        }
        if let scoring, scoring.count != tokens.count {
            throw .badInput(reason: "packed batch: \(tokens.count) tokens but \(scoring.count) scoring flags")
        }
        let n = tokens.count
        var depth = [Int32](repeating: 0, count: n)
        var childCount = [Int32](repeating: 0, count: n)
        for i in 0..<n {
            let t = tokens[i], p = parents[i]
            if t < 0 || t >= vocabSize { throw .badInput(reason: "packed batch: row \(i): token \(t) is outside the vocabulary (size \(vocabSize))") }
            if p < -1 || p >= i { throw .badInput(reason: "packed batch: row \(i): parent \(p) is not an earlier row") }
            if p >= 0 {
                depth[i] = depth[p] + 1
                if scoring?[i] ?? true { childCount[p] += 1 }
            }
            if Int(depth[i]) >= maxPositions {
                throw .badInput(reason: "packed batch: row \(i): depth \(depth[i]) exceeds n_positions (\(maxPositions))")
            }
        }
        self.tokens = tokens.map { Int32($0) }
        self.parents = parents.map { Int32($0) }
        self.depths = depth

        // Segments: a new one starts wherever a row's parent is not the row before it.
        var segStart = [Int](repeating: 0, count: n)
        var segs: [AttentionSegment] = []
        var i = 0
        while i < n {
            var j = i + 1
            while j < n, parents[j] == j - 1 { j += 1 }
            for k in i..<j { segStart[k] = i }
            var runs: [KeyRun] = []
            var p = parents[i]
            while p >= 0 {
                let s = segStart[p]
                runs.append(KeyRun(start: s, end: p + 1))
                p = parents[s]
            }
            segs.append(AttentionSegment(start: i, end: j, ancestors: runs.reversed()))
            i = j
        }
        segments = segs

        // Children grouped by parent (CSR), for the output head.
        var rows: [Int32] = []
        var start: [Int32] = [0]
        var slot = [Int32](repeating: -1, count: n)
        for r in 0..<n where childCount[r] > 0 {
            slot[r] = Int32(rows.count)
            rows.append(Int32(r))
            start.append(start[start.count - 1] + childCount[r])
        }
        var fill = Array(start.dropLast())
        var kids = [Int32](repeating: 0, count: start[start.count - 1] == 0 ? 0 : Int(start[start.count - 1]))
        for u in 0..<n where parents[u] >= 0 && scoring?[u] ?? true {
            let k = Int(slot[parents[u]])
            kids[Int(fill[k])] = Int32(u)
            fill[k] += 1
        }
        headRows = rows
        childStart = start
        children = kids
    }

    /// Packs flat sequences one after another, each a chain.
    public init(sequences: [[Int]], vocabSize: Int, maxPositions: Int) throws(ModelError) {
        var toks: [Int] = [], pars: [Int] = []
        for s in sequences {
            for (k, t) in s.enumerated() {
                pars.append(k == 0 ? -1 : toks.count - 1)
                toks.append(t)
            }
        }
        try self.init(tokens: toks, parents: pars, vocabSize: vocabSize, maxPositions: maxPositions)
    }
}
