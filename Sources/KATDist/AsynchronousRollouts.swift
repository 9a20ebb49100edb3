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
    /// rollout -> trainer 0: alive.
    static let rolloutHeartbeat = 15
    /// trainer 0 -> rollout: alive.
    static let trainerHeartbeat = 16
}

/// Heartbeats between two sides: when to send the next one, and when the other side was
/// last heard from. A side silent for `watchdog` seconds is named in an error that ends
/// the job.
struct Liveness {
    let watchdog: Double
    /// Seconds between heartbeats: often enough that a few may be lost within the watchdog.
    let interval: Double
    var lastSent = -Double.infinity
    var lastHeard: [Int: Double]

    init(watchdog: Double, peers: [Int]) {
        self.watchdog = watchdog
        interval = min(5, watchdog / 4)
        let now = monotonicSeconds()
        lastHeard = Dictionary(uniqueKeysWithValues: peers.map { ($0, now) })
    }

    mutating func heard(_ rank: Int) { lastHeard[rank] = monotonicSeconds() }

    /// Whether a heartbeat is due now (and, when it is, the clock restarts).
    mutating func beatDue() -> Bool {
        let now = monotonicSeconds()
        guard now - lastSent >= interval else { return false }
        lastSent = now
        return true
    }

    /// Throws for the first peer silent longer than the watchdog.
    func check() throws {
        let now = monotonicSeconds()
        for (rank, t) in lastHeard.sorted(by: { $0.key < $1.key }) where now - t > watchdog {
            throw RunError.silentRank(rank: rank, seconds: watchdog)
        }
    }
}

/// The trainers' buffer of finished groups, in arrival order, bounded by `capacity`
/// (a full buffer stops intake, which pushes back on the rollout ranks).
struct RolloutBuffer {
    let capacity: Int
    var groups: [[Trajectory]] = []
    /// Flat tokens of the groups received since the counter was last reset.
    var receivedTokens = 0
    /// Episodes truncated and abandoned by the senders since the counters were last reset.
    var truncatedEpisodes = 0
    var abandonedEpisodes = 0

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
    var beats: [Int: MPICollective.PendingSend] = [:]
    var liveness: Liveness

    init(world: MPICollective, rollouts: [Int], capacity: Int, watchdog: Double) {
        self.world = world; self.rollouts = rollouts
        buffer = RolloutBuffer(capacity: capacity)
        liveness = Liveness(watchdog: watchdog, peers: rollouts)
    }

    /// Receives waiting groups while the buffer has room and every heartbeat, advances
    /// weight sends, sends a heartbeat when one is due, and checks that every rollout rank
    /// was heard from within the watchdog.
    /// - Throws: `RunError.silentRank` naming a rollout rank silent for too long.
    func poll() throws {
        while let m = try world.probe(source: nil, tag: Tag.rolloutHeartbeat) {
            _ = try world.receive(from: m.source, tag: Tag.rolloutHeartbeat)
            liveness.heard(m.source)
        }
        if liveness.beatDue() {
            for rank in rollouts where try beats[rank].map({ try world.test($0) }) ?? true {
                beats[rank] = try world.isend([], to: rank, tag: Tag.trainerHeartbeat)
            }
        }
        while !buffer.isFull, let m = try world.probe(source: nil, tag: Tag.group) {
            let bytes = try world.receive(from: m.source, tag: Tag.group)
            liveness.heard(m.source)
            do {
                let message = try GroupsMessage.decodeWithTrailer(bytes)
                guard message.trailer.count == 2 else { throw TrajectoryCodec.DecodeError() }
                for g in message.groups where !g.isEmpty { buffer.append(g) }
                buffer.truncatedEpisodes += message.trailer[0]
                buffer.abandonedEpisodes += message.trailer[1]
            } catch {
                throw RunError.badMessage(rank: m.source, reason: "\(error)")
            }
        }
        for (rank, send) in weightSends where try world.test(send) { weightSends[rank] = nil }
        try liveness.check()
    }

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

    /// Tells every rollout rank to stop, drains their last groups and heartbeats, lets
    /// every weight send finish (the rollout ranks keep receiving until told goodbye),
    /// then says goodbye.
    /// - Throws: `RunError.silentRank` when a rollout rank does not answer within the
    ///   watchdog (the job then ends without it).
    func shutdown() throws {
        for rank in rollouts { _ = try world.isend([], to: rank, tag: Tag.stop) }
        var done = Set<Int>()
        while done.count < rollouts.count || !weightSends.isEmpty {
            if let m = try world.probe(source: nil, tag: Tag.done) {
                _ = try world.receive(from: m.source, tag: Tag.done)
                done.insert(m.source)
                liveness.heard(m.source)
            }
            while let m = try world.probe(source: nil, tag: Tag.group) { _ = try world.receive(from: m.source, tag: Tag.group); liveness.heard(m.source) }
            while let m = try world.probe(source: nil, tag: Tag.rolloutHeartbeat) {
                _ = try world.receive(from: m.source, tag: Tag.rolloutHeartbeat)
                liveness.heard(m.source)
            }
            for (rank, send) in weightSends where try world.test(send) { weightSends[rank] = nil }
            for rank in rollouts where !done.contains(rank) {
                if monotonicSeconds() - (liveness.lastHeard[rank] ?? 0) > liveness.watchdog {
                    throw RunError.silentRank(rank: rank, seconds: liveness.watchdog)
                }
            }
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
    let model: GPT2
    let prompts: Int
    let maxStaleness: Int
    let schedule: PhaseSchedule

    init(link: RolloutLink?, collective: Collective, model: GPT2, settings: RunSettings) {
        self.link = link
        self.collective = collective
        self.model = model
        prompts = settings.prompts
        maxStaleness = settings.ranks.maxStaleness
        schedule = PhaseSchedule(steps: settings.run.steps, optimizer: settings.optimizer)
    }

    var phase: Phase { .rl }

    func begin(version: Int) throws { try link?.publish(model, version: version) }

    func collect(step: Int, version: Int) throws -> CollectedBatch {
        let t0 = monotonicSeconds()
        var payload: [UInt8] = []
        if let link {
            var picked: [[Trajectory]] = []
            var dropped = 0
            var interrupted = 0
            while picked.count < prompts {
                let taken = link.buffer.take(prompts - picked.count, version: version, maxStaleness: maxStaleness)
                picked += taken.groups
                dropped += taken.dropped
                if picked.count < prompts {
                    // A stop request while waiting for data ends the wait: the step is not
                    // taken, and the groups already picked go back to the buffer.
                    if Preemption.requested {
                        link.buffer.groups.insert(contentsOf: picked, at: 0)
                        picked = []
                        interrupted = 1
                        break
                    }
                    try link.poll()
                    if link.buffer.isEmpty { usleep(500) }
                }
            }
            payload = GroupsMessage.encode(picked, trailer: [dropped, link.buffer.receivedTokens, link.buffer.truncatedEpisodes,
                                                             link.buffer.abandonedEpisodes, interrupted])
            link.buffer.receivedTokens = 0
            link.buffer.truncatedEpisodes = 0
            link.buffer.abandonedEpisodes = 0
        }
        let message: (groups: [[Trajectory]], trailer: [Int])
        do { message = try GroupsMessage.decodeWithTrailer(try collective.broadcast(bytes: payload, root: 0)) } catch let e as TrajectoryCodec.DecodeError {
            throw RunError.badMessage(rank: 0, reason: "\(e)")
        }
        guard message.trailer.count == 5 else { throw RunError.badMessage(rank: 0, reason: "batch message without its counts") }
        var batch = CollectedBatch(groups: message.groups)
        batch.interrupted = message.trailer[4] != 0
        batch.droppedStale = message.trailer[0]
        batch.generatedTokens = message.trailer[1]
        batch.truncatedEpisodes = message.trailer[2]
        batch.abandonedEpisodes = message.trailer[3]
        batch.waitSeconds = monotonicSeconds() - t0
        return batch
    }

    func stepDone(version: Int, updated: Bool) throws {
        if updated { try link?.publish(model, version: version) }
    }

    func checkpoint() -> (fields: [(String, JSON)], files: [String: Data]) {
        guard let link else { return ([], [:]) }
        return BufferedRollouts.checkpoint(link.buffer.groups)
    }

    func restore(state: JSON, directory: String) throws {
        guard let link else { return }
        for g in try BufferedRollouts.load(state: state, directory: directory) { link.buffer.append(g) }
        link.buffer.receivedTokens = 0
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
    let model: GPT2
    let generator: GroupGenerator
    let perBatch: Int
    let faults: FaultInjection

    init(world: MPICollective, settings: RunSettings) throws {
        self.world = world
        model = try settings.initialModel()
        generator = GroupGenerator(model: model, settings: settings,
                                   environments: try EnvironmentSource(settings, vocabSize: model.config.vocabSize))
        perBatch = max(1, min(4, settings.ranks.bufferGroups))
        faults = FaultInjection(worldRank: world.rank)
        liveness = Liveness(watchdog: settings.watchdog, peers: [0])
    }

    var version = -1
    var liveness: Liveness
    var beat: MPICollective.PendingSend?

    /// Takes trainer 0's heartbeats, sends ours when due, and checks that trainer 0 was
    /// heard from within the watchdog.
    /// - Throws: `RunError.silentRank` naming trainer 0 when it was silent too long.
    func keepAlive() throws {
        while try world.probe(source: 0, tag: Tag.trainerHeartbeat) != nil {
            _ = try world.receive(from: 0, tag: Tag.trainerHeartbeat)
            liveness.heard(0)
        }
        if liveness.beatDue(), try beat.map({ try world.test($0) }) ?? true {
            beat = try world.isend([], to: 0, tag: Tag.rolloutHeartbeat)
        }
        try liveness.check()
    }

    /// Installs every weights message waiting (the newest wins). A message is complete
    /// before anything is copied: sampling never sees half of it.
    func takeWeights() throws {
        while let m = try world.probe(source: 0, tag: Tag.weights) {
            let bytes = try world.receive(from: 0, tag: Tag.weights)
            guard bytes.count == 8 + 4 * model.params.count, m.bytes == bytes.count else {
                throw RunError.badMessage(rank: 0, reason: "weights message of \(bytes.count) bytes, expected \(8 + 4 * model.params.count)")
            }
            liveness.heard(0)
            bytes.withUnsafeBytes { raw in
                version = Int(UInt64(littleEndian: raw.loadUnaligned(as: UInt64.self)))
                UnsafeMutableRawBufferPointer(model.params.buffer).copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[8...]))
            }
        }
    }

    func stopRequested() throws -> Bool {
        try keepAlive()
        guard try world.probe(source: 0, tag: Tag.stop) != nil else { return false }
        _ = try world.receive(from: 0, tag: Tag.stop)
        return true
    }

    /// Drops weights messages until trainer 0 says goodbye, so that every send of both
    /// sides completes.
    func drainUntilBye() throws {
        while try world.probe(source: 0, tag: Tag.bye) == nil {
            while try world.probe(source: 0, tag: Tag.weights) != nil { _ = try world.receive(from: 0, tag: Tag.weights); liveness.heard(0) }
            try keepAlive()
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
            // The episode counts travel with the group that follows them.
            let message = GroupsMessage.encode([ready.removeFirst()], trailer: generator.takeEpisodeCounts())
            pending = try world.isend(message, to: 0, tag: Tag.group, synchronous: true)
        }
        // Finish the group in flight (trainer 0 drains it), say done, and wait for goodbye.
        while let p = pending, try !world.test(p) {
            while try world.probe(source: 0, tag: Tag.weights) != nil { _ = try world.receive(from: 0, tag: Tag.weights); liveness.heard(0) }
            try keepAlive()
            usleep(200)
        }
        try world.send([], to: 0, tag: Tag.done)
        try drainUntilBye()
    }
}
