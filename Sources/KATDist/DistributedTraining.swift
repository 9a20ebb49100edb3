import Foundation
import KATModel
import KATRL
import KATTrie
#if canImport(Glibc)
import Glibc
#endif

/// `kat-dist train` as one rank of an MPI job (SPEC section 6).
///
/// Ranks 0..T-1 train, ranks T..N-1 generate rollouts. Trainers split every global batch
/// into T trie shards, sum gradients with MPI and apply the same step. With R = 0 the
/// trainers generate too, each a share of the groups (synchronous). With R > 0 the rollout
/// ranks generate continuously with the newest weights they hold and send finished groups
/// to trainer 0; a bounded buffer there pushes back; trajectories older than
/// `max_staleness` versions are dropped and counted.
public enum DistributedTraining {
    enum Tag { static let group = 10, weights = 11, stop = 12, done = 13, bye = 14 }

    /// Runs this rank's part. Returns the process exit code; a failure on any rank ends the
    /// whole job through MPI_Abort with a message naming the rank.
    public static func run(config: TrainConfig, runDirectory: String, resume: String? = nil, log: @escaping (String) -> Void,
                           progress: @escaping (String) -> Void) -> Int32 {
        let world: Communicator
        do { world = try Communicator.initWorld() } catch {
            FileHandle.standardError.write(Data("kat-dist: \(error)\n".utf8))
            return 1
        }
        let n = world.size
        let t = config.int("ranks.trainers")
        let r = config.optionalInt("ranks.rollouts") ?? (n - t)
        if t + r != n || r < 0 {
            if world.rank == 0 {
                FileHandle.standardError.write(Data("kat-dist train: ranks.trainers (\(t)) + ranks.rollouts (\(r)) must equal the number of MPI ranks (\(n))\n".utf8))
            }
            world.finalize()
            return 2
        }
        if case .trajectories = config.dataSource, r > 0 {
            if world.rank == 0 {
                FileHandle.standardError.write(Data("kat-dist train: offline training (data.trajectories) has no rollout ranks: set ranks.trainers to the number of ranks (\(n))\n".utf8))
            }
            world.finalize()
            return 2
        }
        if config.bool("deterministic") { BLASRuntime.setThreads(1) }
        do {
            let trainers = try world.split(color: world.rank < t ? 0 : 1, key: world.rank)
            if world.rank < t {
                try trainer(world: world, trainers: trainers, t: t, r: r, config: config, runDirectory: runDirectory, resume: resume,
                            log: world.rank == 0 ? log : { _ in }, progress: world.rank == 0 ? progress : { _ in })
            } else {
                try rollout(world: world, t: t, config: config, runDirectory: runDirectory)
            }
        } catch {
            world.abort("\(error)")
        }
        world.finalize()
        return 0
    }

    // MARK: - Trainers

    static func role(_ trainers: Communicator, poll: @escaping () throws -> Void = {}) -> TrainerRole {
        var role = TrainerRole(index: trainers.rank, count: trainers.size,
                               reduceGradients: { g in try trainers.allreduceSum(g.pointer, count: g.count) },
                               reduceStats: { v in try trainers.allreduceSum(&v) })
        role.poll = poll
        return role
    }

    /// Sum of all parameters in double: equal on every trainer when they agree.
    static func checksum(_ m: GPT2) -> Double {
        var s = 0.0
        for i in 0..<m.params.count { s += Double(m.params[i]) * Double(1 + i % 7) }
        return s
    }

    static func trainer(world: Communicator, trainers: Communicator, t: Int, r: Int, config: TrainConfig, runDirectory: String,
                        resume: String?, log: @escaping (String) -> Void, progress: @escaping (String) -> Void) throws {
        let leader = world.rank == 0
        if case .trajectories = config.dataSource {
            var offlineRole = role(trainers)
            offlineRole.poll = {}
            let offline = try OfflineRun(config: config, runDirectory: runDirectory, role: offlineRole, isLeader: leader, resume: resume,
                                         stopRequested: {
                                             var flag = [preemptionRequested ? 1.0 : 0.0]
                                             try trainers.allreduceSum(&flag)
                                             return flag[0] > 0
                                         }, log: log)
            try offline.train()
            return
        }
        let inbox = r > 0 && leader ? Inbox(world: world, rollouts: Array(t..<(t + r)), capacity: config.int("buffer.max_groups")) : nil
        var hooks = RunHooks()
        hooks.isLeader = leader
        hooks.role = role(trainers, poll: { try inbox?.poll() })
        hooks.reduceEval = { v in try trainers.allreduceSum(&v) }
        hooks.stopRequested = {
            var flag = [preemptionRequested ? 1.0 : 0.0]
            try trainers.allreduceSum(&flag)
            return flag[0] > 0
        }
        if let inbox {
            hooks.checkpointExtras = { ["buffer.bin": Data(TrajectoryCodec.encode(inbox.buffer.flatMap { $0 }) + sizeBytes(inbox.buffer.map(\.count)))] }
            hooks.restoreExtras = { dir in
                guard let data = FileManager.default.contents(atPath: dir + "/buffer.bin") else { return }
                inbox.buffer = try splitGroups(Array(data))
            }
        }
        // The hooks are made before the run they serve exists; they reach it through this box.
        let current = RunBox()
        hooks.stepDone = { step in
            guard let model = current.run?.model else { return }
            let c = try trainers.allreduceMaxMin(checksum(model))
            if c.max != c.min {
                throw RunError(path: "trainers", reason: "weights diverged across trainer ranks after step \(step + 1) (checksums \(c.min) and \(c.max))")
            }
        }
        let prompts = config.int("batch.prompts")
        if r == 0 {
            if t > 1 {
                hooks.collect = { step, version in
                    let t0 = monotonicSeconds()
                    var mine: [Trajectory] = []
                    var sizes: [Int] = []
                    guard let run = current.run else { throw RunError(path: "trainer", reason: "batch requested before the run started") }
                    for group in try run.generateGroups(step: step, indices: Array(stride(from: trainers.rank, to: prompts, by: t)), version: version) {
                        sizes.append(group.count)
                        mine += group
                    }
                    let all = try trainers.allgather(bytes: TrajectoryCodec.encode(mine) + sizeBytes(sizes))
                    var perRank: [[[Trajectory]]] = []
                    for bytes in all { perRank.append(try splitGroups(bytes)) }
                    var trajs: [Trajectory] = [], groups: [[Int]] = []
                    for g in 0..<prompts {
                        let group = perRank[g % t][g / t]
                        groups.append(Array(trajs.count..<(trajs.count + group.count)))
                        trajs += group
                    }
                    return CollectedBatch(trajectories: trajs, groups: groups, waitSeconds: monotonicSeconds() - t0, droppedStale: 0)
                }
            }
        } else {
            let maxStale = config.int("max_staleness")
            hooks.collect = { _, version in
                let t0 = monotonicSeconds()
                var payload: [UInt8] = []
                var dropped = 0
                if let inbox {
                    var picked: [[Trajectory]] = []
                    while picked.count < prompts {
                        if let g = inbox.take() {
                            let v = g.first?.policyVersion ?? version
                            if version - v > maxStale { dropped += g.count; continue }
                            picked.append(g)
                        } else {
                            try inbox.poll()
                            if inbox.isEmpty { usleep(500) }
                        }
                    }
                    let generated = inbox.receivedTokens
                    inbox.receivedTokens = 0
                    payload = TrajectoryCodec.encode(picked.flatMap { $0 }) + sizeBytes(picked.map(\.count)) + sizeBytes([dropped, generated])
                }
                let bytes = try trainers.broadcast(bytes: payload, root: 0)
                let (groups, trailer) = try splitGroupsWithTrailer(bytes)
                var trajs: [Trajectory] = [], idx: [[Int]] = []
                for g in groups { idx.append(Array(trajs.count..<(trajs.count + g.count))); trajs += g }
                return CollectedBatch(trajectories: trajs, groups: idx, waitSeconds: monotonicSeconds() - t0, droppedStale: trailer[0],
                                      generatedTokens: trailer[1])
            }
            if let inbox {
                hooks.published = { version in
                    guard let model = current.run?.model else { return }
                    try inbox.publish(model, version: version)
                }
            }
        }
        let online = try OnlineRun(config: config, runDirectory: runDirectory, hooks: hooks, resume: resume, log: log, progress: progress)
        current.run = online
        try online.train()
        try inbox?.shutdown()
    }

    /// Holds the run for the hooks that were created before it.
    final class RunBox { var run: OnlineRun? }

    static func sizeBytes(_ sizes: [Int]) -> [UInt8] {
        var out: [UInt8] = []
        for s in sizes { withUnsafeBytes(of: UInt32(s).littleEndian) { out += $0 } }
        withUnsafeBytes(of: UInt32(sizes.count).littleEndian) { out += $0 }
        return out
    }

    /// Reads a trailer of sizes written by `sizeBytes` from the end of `bytes`.
    static func readSizes(_ bytes: inout [UInt8]) throws -> [Int] {
        func u32(_ at: Int) -> Int { Int(bytes[at]) | Int(bytes[at + 1]) << 8 | Int(bytes[at + 2]) << 16 | Int(bytes[at + 3]) << 24 }
        guard bytes.count >= 4 else { throw TrajectoryCodec.DecodeError() }
        let n = u32(bytes.count - 4)
        guard bytes.count >= 4 + 4 * n else { throw TrajectoryCodec.DecodeError() }
        let base = bytes.count - 4 - 4 * n
        let sizes = (0..<n).map { u32(base + 4 * $0) }
        bytes.removeLast(4 + 4 * n)
        return sizes
    }

    static func splitGroups(_ message: [UInt8]) throws -> [[Trajectory]] {
        var bytes = message
        let sizes = try readSizes(&bytes)
        let all = try TrajectoryCodec.decode(bytes)
        var out: [[Trajectory]] = [], k = 0
        for s in sizes { out.append(Array(all[k..<(k + s)])); k += s }
        return out
    }

    /// Groups and the trailer (dropped trajectories, generated tokens) of a batch message.
    static func splitGroupsWithTrailer(_ message: [UInt8]) throws -> ([[Trajectory]], [Int]) {
        var bytes = message
        let trailer = try readSizes(&bytes)
        guard trailer.count == 2 else { throw TrajectoryCodec.DecodeError() }
        return (try splitGroups(bytes), trailer)
    }

    // MARK: - Trainer 0's inbox of rollouts and its weight distribution

    final class Inbox {
        let world: Communicator
        let rollouts: [Int]
        let capacity: Int
        var buffer: [[Trajectory]] = []
        /// Flat tokens of the groups received since the counter was last reset.
        var receivedTokens = 0
        var weightSends: [Int: Communicator.PendingSend] = [:]
        init(world: Communicator, rollouts: [Int], capacity: Int) {
            self.world = world; self.rollouts = rollouts; self.capacity = capacity
        }
        var isEmpty: Bool { buffer.isEmpty }

        /// Receives waiting groups while the buffer has room, and advances weight sends.
        func poll() throws {
            while buffer.count < capacity, let m = try world.probe(source: nil, tag: Tag.group) {
                let g = try TrajectoryCodec.decode(try world.receive(from: m.source, tag: Tag.group))
                receivedTokens += g.reduce(0) { $0 + $1.tokens.count }
                buffer.append(g)
            }
            for (rank, send) in weightSends where try world.test(send) { weightSends[rank] = nil }
        }

        func take() -> [Trajectory]? { buffer.isEmpty ? nil : buffer.removeFirst() }

        /// Sends the weights of `version` to every rollout rank whose previous copy arrived.
        func publish(_ model: GPT2, version: Int) throws {
            try poll()
            var bytes = [UInt8]()
            withUnsafeBytes(of: UInt64(version).littleEndian) { bytes += $0 }
            bytes += UnsafeRawBufferPointer(model.params.buffer)
            for rank in rollouts where weightSends[rank] == nil {
                weightSends[rank] = try world.isend(bytes, to: rank, tag: Tag.weights)
            }
        }

        /// Tells every rollout rank to stop, drains their last groups and lets every weight
        /// send finish (the rollout ranks keep receiving until told goodbye), then says goodbye.
        func shutdown() throws {
            for rank in rollouts { try world.send([], to: rank, tag: Tag.stop) }
            var done = Set<Int>()
            while done.count < rollouts.count || !weightSends.isEmpty {
                if let m = try world.probe(source: nil, tag: Tag.done) {
                    _ = try world.receive(from: m.source, tag: Tag.done)
                    done.insert(m.source)
                }
                while let m = try world.probe(source: nil, tag: Tag.group) { _ = try world.receive(from: m.source, tag: Tag.group) }
                for (rank, send) in weightSends where try world.test(send) { weightSends[rank] = nil }
                usleep(200)
            }
            for rank in rollouts { try world.send([], to: rank, tag: Tag.bye) }
        }
    }

    // MARK: - Rollout ranks

    static func rollout(world: Communicator, t: Int, config: TrainConfig, runDirectory: String) throws {
        var hooks = RunHooks()
        hooks.isLeader = false
        hooks.generatesOnly = true
        let gen = try OnlineRun(config: config, runDirectory: runDirectory, hooks: hooks, log: { _ in }, progress: { _ in })
        let model = gen.model
        var version = -1
        var pending: Communicator.PendingSend?
        var counter = 0
        var firstVersion = -1
        func takeWeights() throws {
            while let m = try world.probe(source: 0, tag: Tag.weights) {
                let bytes = try world.receive(from: 0, tag: Tag.weights)
                guard bytes.count == 8 + 4 * model.params.count, m.bytes == bytes.count else {
                    throw RunError(path: "rollout", reason: "weights message of \(bytes.count) bytes, expected \(8 + 4 * model.params.count)")
                }
                // The message is complete before anything is copied: sampling never sees half of it.
                bytes.withUnsafeBytes { raw in
                    version = Int(UInt64(littleEndian: raw.loadUnaligned(as: UInt64.self)))
                    UnsafeMutableRawBufferPointer(model.params.buffer).copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[8...]))
                }
            }
        }
        func stopRequested() throws -> Bool {
            if try world.probe(source: 0, tag: Tag.stop) != nil { _ = try world.receive(from: 0, tag: Tag.stop); return true }
            return false
        }
        // Wait for the first weights (after the trainers' warm start).
        while version < 0 {
            if try stopRequested() {
                try world.send([], to: 0, tag: Tag.done)
                while try world.probe(source: 0, tag: Tag.bye) == nil {
                    while try world.probe(source: 0, tag: Tag.weights) != nil { _ = try world.receive(from: 0, tag: Tag.weights) }
                    usleep(200)
                }
                _ = try world.receive(from: 0, tag: Tag.bye)
                return
            }
            try takeWeights()
            if version < 0 { usleep(1000) }
        }
        // Groups are decoded several at a time (one cache call per token for all their
        // samples) and sent one by one; a new batch starts when the last one is on its way.
        let perBatch = max(1, min(4, config.int("buffer.max_groups")))
        var ready: [[Trajectory]] = []
        while true {
            if try stopRequested() { break }
            try takeWeights()
            if let p = pending, try !world.test(p) {
                usleep(200) // back-pressure: trainer 0's buffer is full
                continue
            }
            pending = nil
            if ready.isEmpty {
                if firstVersion < 0 { firstVersion = version }
                if let k = faultKillStep(), k == counter + 1 { kill(getpid(), SIGKILL) } // tests: a rollout rank dies
                // Ids and samples are unique per run segment: a resumed run starts at a later version.
                let indices = (0..<perBatch).map { 1_000_000 + world.rank * 64 + $0 }
                let names = (0..<perBatch).map { "v\(firstVersion)-r\(world.rank)-c\(counter)-\($0)" }
                ready = try gen.generateGroups(step: counter &+ firstVersion &* 1_000_003, indices: indices, version: version, names: names)
                counter += 1
            }
            pending = try world.isend(TrajectoryCodec.encode(ready.removeFirst()), to: 0, tag: Tag.group, synchronous: true)
        }
        // Finish the group in flight (trainer 0 drains it), say done, and keep taking weight
        // messages until trainer 0 says goodbye, so that every send of both sides completes.
        while let p = pending, try !world.test(p) {
            while try world.probe(source: 0, tag: Tag.weights) != nil { _ = try world.receive(from: 0, tag: Tag.weights) }
            usleep(200)
        }
        try world.send([], to: 0, tag: Tag.done)
        while try world.probe(source: 0, tag: Tag.bye) == nil {
            while try world.probe(source: 0, tag: Tag.weights) != nil { _ = try world.receive(from: 0, tag: Tag.weights) }
            usleep(200)
        }
        _ = try world.receive(from: 0, tag: Tag.bye)
    }
}
