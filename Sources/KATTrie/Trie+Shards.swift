/// A part of a trie that one rank (or one micro-batch) computes: whole subtrees, each
/// preceded by its repeated root path when the subtree was cut below a branch point.
public struct TrieShard: Sendable {
    /// Trie row of each shard row (a repeated prefix row appears in several shards).
    public let rowMap: [Int32]
    /// Parent of each shard row within the shard (-1 at a root).
    public let parents: [Int32]
    /// Whether the shard row carries its trie row's loss terms: exactly one copy of every
    /// trie row does, over all shards.
    public let carriesLoss: [Bool]

    public var count: Int { rowMap.count }
    public func tokens(of trie: Trie) -> [Int32] { rowMap.map { trie.tokens[Int($0)] } }
}

extension Trie {
    /// End (exclusive) of each row's subtree in the pre-order layout.
    public var subtreeEnds: [Int32] {
        var end = (0..<count).map { Int32($0 + 1) }
        for u in stride(from: count - 1, through: 0, by: -1) where parents[u] >= 0 {
            let p = Int(parents[u])
            end[p] = max(end[p], end[u])
        }
        return end
    }

    /// Splits the trie into `k` shards of whole subtrees balanced by estimated cost (sum of
    /// depths + 1 over computed rows: the attention pairs, which grow with the linear work).
    /// A unit heavier than a fair share is cut below its first branch point; each child
    /// subtree then repeats the root path, and only the first carries that path's loss.
    /// - Complexity: O(N log N) for N rows, plus the repeated prefixes.
    public func shards(_ k: Int) -> [TrieShard] {
        shards(k, maxTokens: Int.max).map { micro in
            // One micro-batch per shard when there is no token limit.
            micro.first ?? TrieShard(rowMap: [], parents: [], carriesLoss: [])
        }
    }

    /// Splits into `k` shards as above, each in micro-batches of at most `maxTokens` rows
    /// (repeated prefixes included). Units are cut below branch points until they fit; a
    /// single path longer than `maxTokens` cannot be cut and forms a micro-batch alone.
    /// Summing the gradients of every micro-batch of every shard gives the whole trie's.
    public func shards(_ k: Int, maxTokens: Int) -> [[TrieShard]] {
        precondition(k >= 1 && maxTokens >= 1, "shards: k and maxTokens must be at least 1")
        let ends = subtreeEnds
        // Cost of a subtree: sum over its rows of (depth + 1).
        var prefixCost = [Int](repeating: 0, count: count + 1)
        for u in 0..<count { prefixCost[u + 1] = prefixCost[u] + Int(depths[u]) + 1 }
        func subtreeCost(_ r: Int) -> Int { prefixCost[Int(ends[r])] - prefixCost[r] }

        struct Unit {
            var prefix: [Int32]; var ownsPrefix: [Bool]; var root: Int32; var cost: Int; var rows: Int
        }
        var units: [Unit] = []
        var r = 0
        while r < count {
            units.append(Unit(prefix: [], ownsPrefix: [], root: Int32(r), cost: subtreeCost(r), rows: Int(ends[r]) - r))
            r = Int(ends[r])
        }
        let total = units.reduce(0) { $0 + $1.cost }
        let fair = max(1, total / k)
        // Cut the heaviest unit while it exceeds a fair share (or the token limit) and has
        // a branch point; units that are single paths are left as they are.
        var unsplittable = Set<Int32>()
        while true {
            let candidates = units.indices.filter {
                !unsplittable.contains(units[$0].root) && (units[$0].cost > fair && units.count < 64 * k || units[$0].rows > maxTokens)
            }
            guard let i = candidates.max(by: { units[$0].cost < units[$1].cost }) else { break }
            let unit = units[i]
            // Walk the single-child chain from the root to the first branch point.
            var chain: [Int32] = []
            var u = Int(unit.root)
            var children: [Int] = []
            while true {
                chain.append(Int32(u))
                children = []
                var c = u + 1
                while c < Int(ends[u]) { children.append(c); c = Int(ends[c]) }
                if children.count != 1 { break }
                u = children[0]
            }
            if children.count < 2 { unsplittable.insert(unit.root); continue } // a single path
            units.remove(at: i)
            for (j, c) in children.enumerated() {
                let owns = j == 0
                units.append(Unit(prefix: unit.prefix + chain,
                                  ownsPrefix: unit.ownsPrefix.map { $0 && owns } + chain.map { _ in owns },
                                  root: Int32(c), cost: subtreeCost(c), rows: unit.prefix.count + chain.count + Int(ends[c]) - c))
            }
        }
        // Largest first onto the least loaded shard; ties keep trie order, so it is deterministic.
        let order = units.indices.sorted { (units[$0].cost, -$0) > (units[$1].cost, -$1) }
        var load = [Int](repeating: 0, count: k)
        var assigned = [[Int]](repeating: [], count: k)
        for i in order {
            let s = load.indices.min { (load[$0], $0) < (load[$1], $1) } ?? 0
            load[s] += units[i].cost + units[i].prefix.count
            assigned[s].append(i)
        }
        func layout(_ ids: [Int]) -> TrieShard {
            var rowMap: [Int32] = [], par: [Int32] = [], carries: [Bool] = []
            for i in ids {
                let unit = units[i]
                for (j, row) in unit.prefix.enumerated() {
                    par.append(j == 0 ? -1 : Int32(rowMap.count - 1))
                    rowMap.append(row)
                    carries.append(unit.ownsPrefix[j])
                }
                let base = rowMap.count
                let root = Int(unit.root)
                let attach: Int32 = unit.prefix.isEmpty ? -1 : Int32(base - 1)
                for u in root..<Int(ends[root]) {
                    par.append(u == root ? attach : Int32(base + Int(parents[u]) - root))
                    rowMap.append(Int32(u))
                    carries.append(true)
                }
            }
            return TrieShard(rowMap: rowMap, parents: par, carriesLoss: carries)
        }
        // Within a shard, units in trie order fill micro-batches up to maxTokens rows.
        return assigned.map { ids in
            var micro: [[Int]] = [], current: [Int] = [], rows = 0
            for i in ids.sorted() {
                if !current.isEmpty, rows + units[i].rows > maxTokens {
                    micro.append(current); current = []; rows = 0
                }
                current.append(i); rows += units[i].rows
            }
            if !current.isEmpty || micro.isEmpty { micro.append(current) }
            return micro.map(layout)
        }
    }
}
