import CLinux
import Foundation
import KATModel
import KATSupport

/// Who sends new weights to whom: trainer 0 writes them into its node's shared memory and
/// sends one copy per child along a binary tree of node leaders (one rank per node that
/// has rollout ranks); every leader writes what it receives into its node's shared memory
/// and forwards it to its own children. Trainer 0 sends at most two copies per update
/// whatever the number of rollout ranks; each node receives one.
struct WeightTree: Equatable {
    /// Leaders in tree order: trainer 0 first, then one rank per other node with rollout
    /// ranks (its lowest rollout rank), ordered by rank.
    let leaders: [Int]

    /// - Parameters:
    ///   - nodeOf: the node (any key) of each world rank.
    ///   - rollouts: the rollout ranks.
    init(nodeOf: [Int], rollouts: [Int]) {
        let rootNode = nodeOf.first ?? 0
        var seen: Set<Int> = [rootNode]
        var out = [0]
        for r in rollouts.sorted() where !seen.contains(nodeOf[r]) {
            seen.insert(nodeOf[r])
            out.append(r)
        }
        leaders = out
    }

    func parent(of rank: Int) -> Int? {
        guard let i = leaders.firstIndex(of: rank), i > 0 else { return nil }
        return leaders[(i - 1) / 2]
    }

    func children(of rank: Int) -> [Int] {
        guard let i = leaders.firstIndex(of: rank) else { return [] }
        return [2 * i + 1, 2 * i + 2].filter { $0 < leaders.count }.map { leaders[$0] }
    }

    func isLeader(_ rank: Int) -> Bool { leaders.contains(rank) }
}

/// What a weights message says besides the parameters.
struct Publication: Equatable {
    /// The policy version: optimizer updates applied.
    var version: Int
    /// Grows by one per publication (once per step, also when a step left the weights
    /// unchanged), so rollout ranks count steps by it.
    var number: Int
    /// Groups the trainers had generated themselves (multiplexing) by then.
    var trainerGroups: Int
    /// Groups the trainers took back from the checkpoint this run segment resumed (they
    /// count against the admission bound like groups started in it).
    var restoredGroups = 0
}

/// The weights of one node in shared memory: three slots of the model's size, each a
/// message (a 64-byte header holding the policy version, the publication number and the
/// groups the trainers generated so far, then the parameters) with a
/// sequence number and a reader count beside it, so that one copy per node serves every
/// rank on it and no rank ever reads half-written weights.
///
/// One writer per node (its leader) fills a slot that is neither the newest nor in use:
/// it makes the slot's sequence number odd while writing and even when done, then makes
/// the slot the newest. A reader pins the newest slot (reader count + 1), checks that its
/// sequence number is even and that it is still the newest, copies, and unpins.
final class NodeWeights {
    static let slotCount = 3
    /// Bytes of the message header before the parameters.
    static let headerBytes = 64
    let floats: Int
    /// Bytes of one slot's message: header and parameters.
    let messageBytes: Int
    let control: UnsafeMutablePointer<UInt64>
    let data: UnsafeMutableRawPointer

    // Control words: [0] newest slot + 1 (0: none yet); per slot k at 8 + 8k: seq, readers.
    func seq(_ k: Int) -> UnsafeMutablePointer<UInt64> { control + 8 + 8 * k }
    func readers(_ k: Int) -> UnsafeMutablePointer<UInt64> { control + 9 + 8 * k }
    var newestWord: UnsafeMutablePointer<UInt64> { control }

    /// Allocates the node's slots (collective over the node's ranks).
    init(node: MPICollective, floats: Int) throws {
        self.floats = floats
        messageBytes = NodeWeights.headerBytes + 4 * floats
        let controlBytes = 8 * (8 + 8 * NodeWeights.slotCount)
        let base = try node.sharedMemory(bytes: controlBytes + NodeWeights.slotCount * messageBytes)
        control = base.bindMemory(to: UInt64.self, capacity: controlBytes / 8)
        data = base + controlBytes
        if node.rank == 0 { control.update(repeating: 0, count: controlBytes / 8) }
        try node.barrier()
    }

    /// The message of slot `k`: header (version, publication, trainers' groups) and parameters.
    func message(_ k: Int) -> UnsafeMutableRawPointer { data + k * messageBytes }
    func parameters(_ k: Int) -> UnsafeMutablePointer<Float> {
        (message(k) + NodeWeights.headerBytes).bindMemory(to: Float.self, capacity: floats)
    }
    func version(_ k: Int) -> Int { Int(message(k).loadUnaligned(as: UInt64.self)) }
    /// The publication number of slot `k`: it grows with every publication, also when a
    /// step left the weights (and so the version) unchanged.
    func publication(_ k: Int) -> Int { Int(message(k).loadUnaligned(fromByteOffset: 8, as: UInt64.self)) }
    /// The publication number of a message's header.
    static func publication(ofMessage m: UnsafeRawPointer) -> Int { Int(m.loadUnaligned(fromByteOffset: 8, as: UInt64.self)) }
    /// Groups the trainers had generated themselves (multiplexing) when slot `k` was published.
    func trainerGroups(_ k: Int) -> Int { Int(message(k).loadUnaligned(fromByteOffset: 16, as: UInt64.self)) }
    /// Groups restored from the checkpoint, as slot `k`'s publication says.
    func restoredGroups(_ k: Int) -> Int { Int(message(k).loadUnaligned(fromByteOffset: 24, as: UInt64.self)) }

    var newest: Int? {
        let n = Int(kat_atomic_load(newestWord))
        return n == 0 ? nil : n - 1
    }

    // MARK: Writer (the node's leader)

    /// A slot to write: neither the newest nor pinned. Nil when every other slot is in use
    /// (the update is then skipped; the next one gets through).
    func beginWrite() -> Int? {
        let newest = self.newest
        for k in 0..<NodeWeights.slotCount where k != newest && kat_atomic_load(readers(k)) == 0 {
            let s = kat_atomic_load(seq(k))
            guard s % 2 == 0, kat_atomic_cas(seq(k), s, s + 1) != 0 else { continue }
            // A reader may have pinned it in between: give it back.
            if kat_atomic_load(readers(k)) != 0 { kat_atomic_store(seq(k), s); continue }
            return k
        }
        return nil
    }

    /// Makes a written slot readable and the newest.
    func finishWrite(_ k: Int) {
        kat_atomic_add(seq(k), 1)
        kat_atomic_store(newestWord, UInt64(k + 1))
    }

    /// Writes the header and the parameters into a free slot and publishes it.
    /// - Returns: the slot, or nil when none was free.
    func publish(_ params: UnsafePointer<Float>, _ header: Publication) -> Int? {
        guard let k = beginWrite() else { return nil }
        message(k).storeBytes(of: UInt64(header.version), as: UInt64.self)
        message(k).storeBytes(of: UInt64(header.number), toByteOffset: 8, as: UInt64.self)
        message(k).storeBytes(of: UInt64(header.trainerGroups), toByteOffset: 16, as: UInt64.self)
        message(k).storeBytes(of: UInt64(header.restoredGroups), toByteOffset: 24, as: UInt64.self)
        parameters(k).update(from: params, count: floats)
        finishWrite(k)
        return k
    }

    // MARK: Readers

    /// Pins the newest slot if its publication number is above `publication`.
    /// - Returns: the slot and its header; unpin it with `unpin`.
    func pinNewer(than publication: Int) -> (slot: Int, header: Publication)? {
        for _ in 0..<64 {
            guard let n = newest else { return nil }
            kat_atomic_add(readers(n), 1)
            if kat_atomic_load(seq(n)) % 2 == 0, self.newest == n {
                let p = self.publication(n)
                if p > publication { return (n, Publication(version: self.version(n), number: p, trainerGroups: trainerGroups(n),
                                                     restoredGroups: restoredGroups(n))) }
                unpin(n)
                return nil
            }
            unpin(n)
        }
        return nil
    }

    func pin(_ k: Int) { kat_atomic_add(readers(k), 1) }
    func unpin(_ k: Int) { kat_atomic_sub(readers(k), 1) }
}
