import Foundation
import KATModel
import KATRL
import KATSupport
import KATTrie
#if canImport(Glibc)
import Glibc
#endif

/// Message tags between trainers and rollout ranks on the world communicator.
enum Tag {
    /// rollout -> trainer 0: one finished group.
    static let group = 10
    /// trainer 0 -> rollout: version (UInt64) and the weights.
    static let weights = 11
    /// trainer 0 -> rollout: stop generating.
    static let stop = 12
    /// rollout -> trainer 0: stopped, last group sent.
    static let done = 13
    /// trainer 0 -> rollout: every message has been drained; exit.
    static let bye = 14
}

/// The trainers' buffer of finished groups, in arrival order, bounded by `capacity`
/// (a full buffer stops intake, which pushes back on the rollout ranks).
struct RolloutBuffer {
    let capacity: Int
    var groups: [[Trajectory]] = []
    /// Flat tokens of the groups received since the counter was last reset.
    var receivedTokens = 0

    init(capacity: Int) { self.capacity = capacity }

    var isFull: Bool { groups.count >= capacity }
    var isEmpty: Bool { groups.isEmpty }

    mutating func append(_ group: [Trajectory]) {
        receivedTokens += group.reduce(0) { $0 + $1.tokens.count }
        groups.append(group)
    }

    /// Takes groups oldest first for the step that turns `version` into the next one:
    /// a group sampled more than `maxStaleness` versions before is dropped and counted.
    /// Stops when `count` groups are taken or the buffer is empty.
    /// - Returns: the groups taken and the trajectories dropped.
    mutating func take(_ count: Int, version: Int, maxStaleness: Int) -> (groups: [[Trajectory]], dropped: Int) {
        var picked: [[Trajectory]] = [], dropped = 0
        while picked.count < count, !groups.isEmpty {
            let g = groups.removeFirst()
            let v = g.first?.policyVersion ?? version
            if version - v > maxStaleness { dropped += g.count; continue }
            picked.append(g)
        }
        return (picked, dropped)
    }
}

/// Trainer 0's side of the rollout ranks: the buffer of received groups, and the
/// versioned weights it sends them.
final class RolloutLink {
    let world: MPICollective
    let rollouts: [Int]
    var buffer: RolloutBuffer
    var weightSends: [Int: MPICollective.PendingSend] = [:]

    init(world: MPICollective, rollouts: [Int], capacity: Int) {
        self.world = world; self.rollouts = rollouts
        buffer = RolloutBuffer(capacity: capacity)
    }

    /// Receives waiting groups while the buffer has room, and advances weight sends.
    func poll() throws {
        while !buffer.isFull, let m = try world.probe(source: nil, tag: Tag.group) {
            let bytes = try world.receive(from: m.source, tag: Tag.group)
            do { buffer.append(try TrajectoryCodec.decode(bytes)) } catch { throw RunError.badMessage(rank: m.source, reason: "\(error)") }
        }
        for (rank, send) in weightSends where try world.test(send) { weightSends[rank] = nil }
    }

    /// Sends the weights of `version` to every rollout rank whose previous copy arrived.
    func publish(_ model: any LanguageModel, version: Int) throws {
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

/// Rollouts from rollout ranks that generate continuously with the newest weights they
/// hold. Trainer 0 takes groups from its buffer oldest first, drops those more than
/// `max_staleness` versions behind, and broadcasts the step's batch to the other trainers.
final class AsynchronousRollouts: BatchSource {
    /// Trainer 0's link to the rollout ranks; nil on the other trainers.
    let link: RolloutLink?
    let collective: Collective
    let model: any LanguageModel
    let prompts: Int
    let maxStaleness: Int
    let optimizer: OptimizerConfig
    let totalSteps: Int

    init(link: RolloutLink?, collective: Collective, model: any LanguageModel, settings: RunSettings) {
        self.link = link
        self.collective = collective
        self.model = model
        prompts = settings.prompts
        maxStaleness = settings.ranks.maxStaleness
        optimizer = settings.optimizer
        totalSteps = settings.run.steps
    }

    var phase: Phase { .rl }
    var steps: Int { totalSteps }
    func learningRate(step: Int) -> Float { optimizer.learningRate(step: step, totalSteps: totalSteps) }

    func begin(version: Int) throws { try link?.publish(model, version: version) }

    func collect(step: Int, version: Int) throws -> CollectedBatch {
        let t0 = monotonicSeconds()
        var payload: [UInt8] = []
        if let link {
            var picked: [[Trajectory]] = []
            var dropped = 0
            while picked.count < prompts {
                let taken = link.buffer.take(prompts - picked.count, version: version, maxStaleness: maxStaleness)
                picked += taken.groups
                dropped += taken.dropped
                if picked.count < prompts {
                    try link.poll()
                    if link.buffer.isEmpty { usleep(500) }
                }
            }
            payload = GroupsMessage.encode(picked, trailer: [dropped, link.buffer.receivedTokens])
            link.buffer.receivedTokens = 0
        }
        let message: (groups: [[Trajectory]], trailer: [Int])
        do { message = try GroupsMessage.decodeWithTrailer(try collective.broadcast(bytes: payload, root: 0)) } catch let e as TrajectoryCodec.DecodeError {
            throw RunError.badMessage(rank: 0, reason: "\(e)")
        }
        guard message.trailer.count == 2 else { throw RunError.badMessage(rank: 0, reason: "batch message without its counts") }
        var batch = CollectedBatch(groups: message.groups)
        batch.droppedStale = message.trailer[0]
        batch.generatedTokens = message.trailer[1]
        batch.waitSeconds = monotonicSeconds() - t0
        return batch
    }

    func service() throws { try link?.poll() }

    func stepDone(version: Int, updated: Bool) throws {
        if updated { try link?.publish(model, version: version) }
    }

    func checkpoint() -> (fields: [(String, JSON)], files: [String: Data]) {
        guard let link else { return ([], [:]) }
        return ([("buffered_files", ["buffer.bin"])], ["buffer.bin": Data(GroupsMessage.encode(link.buffer.groups))])
    }

    func restore(state: JSON, directory: String) throws {
        guard let link, let data = FileManager.default.contents(atPath: directory + "/buffer.bin") else { return }
        do { link.buffer.groups = try GroupsMessage.decode(Array(data)) } catch {
            throw RunError.checkpoint(path: directory + "/buffer.bin", reason: "\(error)")
        }
    }

    func finish() throws { try link?.shutdown() }
}

// MARK: - Rollout ranks

/// The loop of a rollout rank: wait for weights, then generate groups with the newest
/// weights held and send them to trainer 0, one at a time with a synchronous send (a
/// full buffer at trainer 0 pushes back), until told to stop. Built from the sampler and
/// the environments only: no optimizer, no run directory.
final class RolloutRankLoop {
    let world: MPICollective
    let model: any LanguageModel
    let generator: GroupGenerator
    let perBatch: Int
    let faults: FaultInjection

    init(world: MPICollective, settings: RunSettings) throws {
        self.world = world
        model = try settings.initialModel()
        generator = GroupGenerator(model: model, settings: settings, environments: try EnvironmentSource(settings))
        perBatch = max(1, min(4, settings.ranks.bufferGroups))
        faults = FaultInjection(worldRank: world.rank)
    }

    var version = -1

    /// Installs every weights message waiting (the newest wins). A message is complete
    /// before anything is copied: sampling never sees half of it.
    func takeWeights() throws {
        while let m = try world.probe(source: 0, tag: Tag.weights) {
            let bytes = try world.receive(from: 0, tag: Tag.weights)
            guard bytes.count == 8 + 4 * model.params.count, m.bytes == bytes.count else {
                throw RunError.badMessage(rank: 0, reason: "weights message of \(bytes.count) bytes, expected \(8 + 4 * model.params.count)")
            }
            bytes.withUnsafeBytes { raw in
                version = Int(UInt64(littleEndian: raw.loadUnaligned(as: UInt64.self)))
                UnsafeMutableRawBufferPointer(model.params.buffer).copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[8...]))
            }
        }
    }

    func stopRequested() throws -> Bool {
        guard try world.probe(source: 0, tag: Tag.stop) != nil else { return false }
        _ = try world.receive(from: 0, tag: Tag.stop)
        return true
    }

    /// Drops weights messages until trainer 0 says goodbye, so that every send of both
    /// sides completes.
    func drainUntilBye() throws {
        while try world.probe(source: 0, tag: Tag.bye) == nil {
            while try world.probe(source: 0, tag: Tag.weights) != nil { _ = try world.receive(from: 0, tag: Tag.weights) }
            usleep(200)
        }
        _ = try world.receive(from: 0, tag: Tag.bye)
    }

    func run() throws {
        // The first weights come after the trainers' warm start.
        while version < 0 {
            if try stopRequested() {
                try world.send([], to: 0, tag: Tag.done)
                try drainUntilBye()
                return
            }
            try takeWeights()
            if version < 0 { usleep(1000) }
        }
        // Groups are decoded several at a time (one cache call per token for all their
        // samples) and sent one by one; a new batch starts when the last one is on its way.
        var firstVersion = -1
        var counter = 0
        var ready: [[Trajectory]] = []
        var pending: MPICollective.PendingSend?
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
                faults.killIfDue(counter + 1)
                // Ids and samples are unique per run segment: a resumed run starts at a later version.
                let indices = (0..<perBatch).map { 1_000_000 + world.rank * 64 + $0 }
                let names = (0..<perBatch).map { "v\(firstVersion)-r\(world.rank)-c\(counter)-\($0)" }
                ready = try generator.generate(step: counter &+ firstVersion &* 1_000_003, indices: indices, version: version, names: names)
                counter += 1
            }
            pending = try world.isend(TrajectoryCodec.encode(ready.removeFirst()), to: 0, tag: Tag.group, synchronous: true)
        }
        // Finish the group in flight (trainer 0 drains it), say done, and wait for goodbye.
        while let p = pending, try !world.test(p) {
            while try world.probe(source: 0, tag: Tag.weights) != nil { _ = try world.receive(from: 0, tag: Tag.weights) }
            usleep(200)
        }
        try world.send([], to: 0, tag: Tag.done)
        try drainUntilBye()
    }
}
