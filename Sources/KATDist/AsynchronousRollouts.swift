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
    /// rollout -> its home trainer: one finished group.
    static let group = 10
    /// tree parent -> leader: a weights message (64-byte header with the version and the
    /// publication number, then the parameters).
    static let weights = 11
    /// home trainer -> rollout: stop generating (payload: the last publication number).
    static let stop = 12
    /// rollout -> home trainer: stopped, last group sent, last weights passed on (payload:
    /// the unfinished episodes it gave up, Int64).
    static let done = 13
    /// home trainer -> rollout: every message has been drained; exit.
    static let bye = 14
    /// rollout -> home trainer: alive.
    static let rolloutHeartbeat = 15
    /// home trainer -> rollout: alive.
    static let trainerHeartbeat = 16
    /// trainer -> the next trainer around the ring: alive.
    static let ringHeartbeat = 17
    /// rollout -> home trainer: SIGUSR1 arrived here; stop the run as if it had arrived there.
    static let preempt = 18
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
    /// When this side last checked: a long gap means this side itself was stopped or
    /// starved, and its silence is not the peers' fault.
    var lastCheck = monotonicSeconds()

    /// - Parameter armed: watch the peers from now on; otherwise each from when it is
    ///   first heard from (a side still loading its model is not silent).
    init(watchdog: Double, peers: [Int], armed: Bool = true) {
        self.watchdog = watchdog
        interval = min(5, watchdog / 4)
        let now = monotonicSeconds()
        lastHeard = armed ? Dictionary(uniqueKeysWithValues: peers.map { ($0, now) }) : [:]
    }

    mutating func heard(_ rank: Int) { lastHeard[rank] = monotonicSeconds() }

    /// Whether a heartbeat is due now (and, when it is, the clock restarts).
    mutating func beatDue() -> Bool {
        let now = monotonicSeconds()
        guard now - lastSent >= interval else { return false }
        lastSent = now
        return true
    }

    /// One round of heartbeats: takes every heartbeat `source` sent (tag `receiving`),
    /// sends ours to `target` (tag `sending`) when one is due and the last has gone, then
    /// checks the watchdog.
    /// - Throws: `RunError.silentRank` naming a peer silent too long.
    mutating func exchange(over c: MPICollective, from source: Int, receiving: Int, to target: Int, sending: Int,
                           beat: inout MPICollective.PendingRequest?) throws {
        while try c.probe(source: source, tag: receiving) != nil {
            _ = try c.receive(from: source, tag: receiving)
            heard(source)
        }
        if beatDue(), try beat.map({ try c.test($0) }) ?? true {
            beat = try c.isend([], to: target, tag: sending)
        }
        try check()
    }

    /// Throws for the first peer silent longer than the watchdog.
    mutating func check() throws {
        let now = monotonicSeconds()
        defer { lastCheck = now }
        if now - lastCheck > watchdog / 2 {
            // This side did not run for a while (stopped, or starved): start counting again.
            for k in lastHeard.keys { lastHeard[k] = now }
            return
        }
        for (rank, t) in lastHeard.sorted(by: { $0.key < $1.key }) where now - t > watchdog {
            throw RunError.silentRank(rank: rank, seconds: watchdog)
        }
    }
}

/// A finished group waiting to be trained, with where it came from. Oldest first orders
/// groups by policy version, then source rank, then that rank's sequence number.
struct BufferedGroup {
    var trajectories: [Trajectory]
    var source: Int
    var sequence: Int
    /// The oldest policy version of its trajectories (each the version of its oldest
    /// token): staleness and order count from there.
    var version: Int { trajectories.compactMap(\.policyVersion).min() ?? 0 }
    var key: (Int, Int, Int) { (version, source, sequence) }

    /// The source of the groups trainer `rank` makes itself (multiplexing): after every
    /// world rank, so that at equal versions the rollout ranks' groups (and restored ones,
    /// source -1) go first. A rollout rank's group pushed back behind a trainer's own would
    /// go stale although admission control let it start; a trainer's own group costs
    /// only the time it would have waited idle.
    static func trainerSource(_ rank: Int) -> Int { 1 << 40 + rank }
    var isTrainers: Bool { source >= 1 << 40 }
}

/// A trainer's buffer of finished groups, bounded by `capacity` (a full buffer stops
/// intake, which pushes back on the rollout ranks).
struct RolloutBuffer {
    let capacity: Int
    var groups: [BufferedGroup] = []
    /// Flat tokens of the groups received, episodes truncated and abandoned by the
    /// senders, and their admission-control waits, since the counts were last taken.
    var counts = BatchCounts()

    init(capacity: Int) { self.capacity = capacity }

    var isFull: Bool { groups.count >= capacity }
    var isEmpty: Bool { groups.isEmpty }

    mutating func append(_ group: [Trajectory], source: Int = 0, sequence: Int = 0) {
        guard !group.isEmpty else { return }
        counts.receivedTokens += group.reduce(0) { $0 + $1.tokens.count }
        groups.append(BufferedGroup(trajectories: group, source: source, sequence: sequence))
    }

    /// Removes the groups more than `maxStaleness` versions behind `version`.
    /// - Returns: the trajectories dropped and their flat tokens.
    mutating func dropStale(version: Int, maxStaleness: Int) -> (trajectories: Int, tokens: Int) {
        var dropped = (trajectories: 0, tokens: 0)
        groups.removeAll { g in
            let stale = version - g.version > maxStaleness
            if stale {
                dropped.trajectories += g.trajectories.count
                dropped.tokens += g.trajectories.reduce(0) { $0 + $1.tokens.count }
            }
            return stale
        }
        return dropped
    }

    /// Takes up to `count` groups oldest first for the step that turns `version` into the
    /// next one, dropping (and counting) stale ones first.
    mutating func take(_ count: Int, version: Int, maxStaleness: Int) -> (groups: [[Trajectory]], dropped: (trajectories: Int, tokens: Int)) {
        let dropped = dropStale(version: version, maxStaleness: maxStaleness)
        groups.sort { $0.key < $1.key }
        let taken = groups.prefix(count).map(\.trajectories)
        groups.removeFirst(taken.count)
        return (Array(taken), dropped)
    }
}

/// A trainer's link to its rollout ranks (those it is home to): their groups, their
/// heartbeats, and the end of the run.
final class RolloutLink {
    let world: MPICollective
    let rollouts: [Int]
    var buffer: RolloutBuffer
    var beats: [Int: MPICollective.PendingRequest] = [:]
    var liveness: Liveness

    init(world: MPICollective, rollouts: [Int], capacity: Int, watchdog: Double) {
        self.world = world; self.rollouts = rollouts
        buffer = RolloutBuffer(capacity: capacity)
        liveness = Liveness(watchdog: watchdog, peers: rollouts)
    }

    /// Receives every heartbeat and the waiting groups while the buffer has room, sends a
    /// heartbeat when one is due, and checks that every rollout rank was heard from
    /// within the watchdog.
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
        while let m = try world.probe(source: nil, tag: Tag.preempt) {
            _ = try world.receive(from: m.source, tag: Tag.preempt)
            liveness.heard(m.source)
            Preemption.request()
        }
        while !buffer.isFull, let m = try world.probe(source: nil, tag: Tag.group) {
            let bytes = try world.receive(from: m.source, tag: Tag.group)
            liveness.heard(m.source)
            do {
                let message = try GroupsMessage.decode(bytes, trailer: GroupNote.self)
                for g in message.groups { buffer.append(g, source: m.source, sequence: message.trailer.sequence) }
                buffer.counts.episodes += message.trailer.episodes
                buffer.counts.throttledMicros += message.trailer.throttledMicros
                buffer.counts.backpressureMicros += message.trailer.backpressureMicros
            } catch {
                throw RunError.badMessage(rank: m.source, reason: "\(error)")
            }
        }
        try liveness.check()
    }

    /// Tells every rollout rank to stop (and the last publication it must pass on),
    /// drains their last groups and heartbeats until each says done, then says goodbye.
    /// - Parameter serve: run while waiting (trainer 0's weight sends must progress).
    /// - Throws: `RunError.silentRank` when a rollout rank does not answer within the
    ///   watchdog (the job then ends without it).
    /// - Returns: the unfinished episodes the rollout ranks gave up at the stop (the
    ///   payload of their done messages).
    @discardableResult
    func shutdown(lastPublication: Int, serve: () throws -> Void) throws -> Int {
        var v = [UInt8]()
        withUnsafeBytes(of: Int64(lastPublication).littleEndian) { v += $0 }
        var stops: [MPICollective.PendingRequest] = []
        for rank in rollouts { stops.append(try world.isend(v, to: rank, tag: Tag.stop)) }
        var done = Set<Int>()
        var unfinished = 0
        while done.count < rollouts.count {
            try serve()
            if let m = try world.probe(source: nil, tag: Tag.done) {
                let bytes = try world.receive(from: m.source, tag: Tag.done)
                guard bytes.count == 8 else { throw RunError.badMessage(rank: m.source, reason: "done message of \(bytes.count) bytes") }
                unfinished += bytes.withUnsafeBytes { Int(Int64(littleEndian: $0.loadUnaligned(as: Int64.self))) }
                done.insert(m.source)
                liveness.heard(m.source)
            }
            for tag in [Tag.group, Tag.preempt] {
                while let m = try world.probe(source: nil, tag: tag) { _ = try world.receive(from: m.source, tag: tag); liveness.heard(m.source) }
            }
            while let m = try world.probe(source: nil, tag: Tag.rolloutHeartbeat) {
                _ = try world.receive(from: m.source, tag: Tag.rolloutHeartbeat)
                liveness.heard(m.source)
            }
            for rank in rollouts where !done.contains(rank) {
                if monotonicSeconds() - (liveness.lastHeard[rank] ?? 0) > liveness.watchdog {
                    throw RunError.silentRank(rank: rank, seconds: liveness.watchdog)
                }
            }
            usleep(200)
        }
        for rank in rollouts { try world.send([], to: rank, tag: Tag.bye) }
        return unfinished
    }
}

/// Trainer 0's side of weight sync: new weights go into its node's shared memory (read
/// there by the rollout ranks of that node) and, from that same memory, to its children in
/// the tree of node leaders.
final class WeightPublisher {
    let world: MPICollective
    let node: NodeWeights
    let children: [Int]
    /// Sends in flight from each pinned slot.
    var sends: [(slot: Int, sends: [MPICollective.PendingRequest])] = []
    /// The number the next publication gets (publication numbers grow by one per call to
    /// `publish`; rollout ranks take any newer one).
    private(set) var nextPublication = 0
    /// The number of the newest publication written (-1: none yet).
    private(set) var lastPublication = -1
    /// A publication that found no free slot (each was the newest, read, or still being
    /// sent from), retried by `retry` while the weights are still the same.
    private(set) var pending: Publication?
    let trace = WeightTrace.fromEnvironment(rank: LaunchEnvironment.worldRank)

    init(world: MPICollective, node: NodeWeights, tree: WeightTree) {
        self.world = world
        self.node = node
        children = tree.children(of: world.rank)
    }

    /// Completes the sends that are done and unpins their slots.
    func poll() throws {
        var left: [(slot: Int, sends: [MPICollective.PendingRequest])] = []
        for entry in sends {
            let pending = try world.unfinished(entry.sends)
            if pending.isEmpty { node.unpin(entry.slot) } else { left.append((entry.slot, pending)) }
        }
        sends = left
    }

    /// Publishes the weights of `version` under the next publication number; when no
    /// slot is free it is kept pending (a newer publication replaces it).
    /// - Returns: the bytes this rank sent for it (one message per tree child).
    /// - Parameters:
    ///   - trainerGroups: groups the trainers generated themselves so far.
    ///   - restoredGroups: groups taken back from the checkpoint this run resumed.
    func publish(_ params: FloatBuffer, version: Int, trainerGroups: Int, restoredGroups: Int) throws -> Int {
        pending = Publication(version: version, number: nextPublication, trainerGroups: trainerGroups, restoredGroups: restoredGroups)
        nextPublication += 1
        return try retry(params)
    }

    /// Writes the pending publication if a slot is now free. Call it only while the
    /// weights are still those of the pending publication (between steps).
    /// - Returns: the bytes this rank sent (one message per tree child), 0 when nothing
    ///   was pending or no slot was free.
    func retry(_ params: FloatBuffer) throws -> Int {
        try poll()
        guard let p = pending, let slot = node.publish(params.pointer, p) else { return 0 }
        trace?.publish(p)
        pending = nil
        lastPublication = p.number
        guard !children.isEmpty else { return 0 }
        node.pin(slot)
        var out: [MPICollective.PendingRequest] = []
        for c in children { out += try world.isend(from: node.message(slot), bytes: node.messageBytes, to: c, tag: Tag.weights) }
        sends.append((slot, out))
        return children.count * node.messageBytes
    }
}

/// Heartbeats around the ring of trainers: each sends to the next and watches the one
/// before, so that a stopped trainer is named by the trainer after it (the others see a
/// collective stall).
final class TrainerRing {
    let trainers: MPICollective
    let next: Int
    let previous: Int
    var liveness: Liveness
    var beat: MPICollective.PendingRequest?

    init(trainers: MPICollective, watchdog: Double) {
        self.trainers = trainers
        next = (trainers.rank + 1) % trainers.size
        previous = (trainers.rank + trainers.size - 1) % trainers.size
        liveness = Liveness(watchdog: watchdog, peers: [previous])
    }

    func poll() throws {
        try liveness.exchange(over: trainers, from: previous, receiving: Tag.ringHeartbeat, to: next, sending: Tag.ringHeartbeat, beat: &beat)
    }
}

/// What a trainer serves between micro-batches, evaluation episodes and checkpoint files,
/// and while it waits in a collective: its rollout ranks (heartbeats, intake), on trainer
/// 0 weight sends, and the trainers' ring of heartbeats.
final class RolloutPeers {
    let link: RolloutLink?
    let publisher: WeightPublisher?
    let ring: TrainerRing?

    init(link: RolloutLink?, publisher: WeightPublisher?, ring: TrainerRing? = nil) {
        self.link = link
        self.publisher = publisher
        self.ring = ring
    }

    func poll() throws {
        try link?.poll()
        try publisher?.poll()
        try ring?.poll()
    }
}

/// Rollouts from rollout ranks that generate continuously with the newest weights they
/// hold, each sending its groups to its home trainer. For every step the trainers agree
/// on the batch from their buffers' metadata: the oldest `batch.prompts` groups over all
/// trainers, stale ones dropped. When there are not enough and `ranks.multiplex` is on,
/// every trainer generates groups itself with the current weights instead of waiting.
final class AsynchronousRollouts: BatchSource {
    let peers: RolloutPeers
    let collective: Collective
    let model: any LanguageModel
    /// Generates groups on this trainer while it would wait (multiplexing); nil when off.
    let generator: GroupGenerator?
    let prompts: Int
    let maxStaleness: Int
    let schedule: PhaseSchedule
    var sequence = 0
    /// The groups of every trainer, gathered for the checkpoint trainer 0 writes.
    var checkpointGroups: [[Trajectory]] = []

    /// Rollout ranks in the job (their admission waits are reported as a mean).
    let rolloutRanks: Int

    init(peers: RolloutPeers, collective: Collective, model: any LanguageModel, generator: GroupGenerator?, rolloutRanks: Int,
         settings: RunSettings) {
        self.peers = peers
        self.rolloutRanks = rolloutRanks
        self.collective = collective
        self.model = model
        self.generator = generator
        prompts = settings.prompts
        maxStaleness = settings.ranks.maxStaleness
        partial = settings.rollout.partial
        multiplexGroups = max(1, min(4, settings.ranks.bufferGroups, settings.prompts))
        schedule = PhaseSchedule(steps: settings.run.steps, optimizer: settings.optimizer)
    }

    var phase: Phase { .rl }
    /// Groups all trainers generated themselves this run segment (as of the last batch):
    /// rollout ranks leave that much of the admission bound to them.
    var trainerGroups = 0
    var buffer: RolloutBuffer {
        get { peers.link?.buffer ?? localBuffer }
        set { if let link = peers.link { link.buffer = newValue } else { localBuffer = newValue } }
    }
    /// The buffer of a trainer that is home to no rollout rank (its multiplexed groups).
    var localBuffer = RolloutBuffer(capacity: Int.max)

    /// Groups trainer 0 took back from the checkpoint (published with the weights, so that
    /// rollout ranks leave room for them under admission control).
    var restoredGroups = 0

    func begin(version: Int) throws {
        _ = try peers.publisher?.publish(model.params, version: version, trainerGroups: trainerGroups, restoredGroups: restoredGroups)
    }

    /// One trainer's view of its buffer, as exchanged to agree on a batch.
    struct Offer {
        var interrupted: Bool
        var keys: [(version: Int, source: Int, sequence: Int)]

        var bytes: [UInt8] {
            var words = [Int64(interrupted ? 1 : 0), Int64(keys.count)]
            for k in keys { words += [Int64(k.version), Int64(k.source), Int64(k.sequence)] }
            return words.withUnsafeBytes { Array($0) }
        }

        init(interrupted: Bool, keys: [(version: Int, source: Int, sequence: Int)]) { self.interrupted = interrupted; self.keys = keys }

        init(_ bytes: [UInt8], rank: Int) throws {
            guard bytes.count % 8 == 0, bytes.count >= 16 else { throw RunError.badMessage(rank: rank, reason: "batch offer of \(bytes.count) bytes") }
            let w = bytes.withUnsafeBytes { raw in (0..<(bytes.count / 8)).map { Int(raw.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self)) } }
            guard w[1] >= 0, w.count == 2 + 3 * w[1] else { throw RunError.badMessage(rank: rank, reason: "batch offer does not decode") }
            interrupted = w[0] != 0
            keys = (0..<w[1]).map { (w[2 + 3 * $0], w[3 + 3 * $0], w[4 + 3 * $0]) }
        }
    }

    func collect(step: Int, version: Int) throws -> CollectedBatch {
        let t0 = monotonicSeconds()
        var generating = 0.0
        var dropped = (trajectories: 0, tokens: 0)
        while true {
            try peers.poll()
            // The weights are those of the last publication here: one that found no free
            // slot goes out now (rollout ranks wait for it under admission control).
            if let publisher = peers.publisher, publisher.pending != nil { _ = try publisher.retry(model.params) }
            let d = buffer.dropStale(version: version, maxStaleness: maxStaleness)
            dropped.trajectories += d.trajectories
            dropped.tokens += d.tokens
            buffer.groups.sort { $0.key < $1.key }
            let mine = Offer(interrupted: Preemption.requested, keys: buffer.groups.map { ($0.version, $0.source, $0.sequence) })
            var offers: [Offer] = []
            for (r, bytes) in try collective.allgather(bytes: mine.bytes).enumerated() { offers.append(try Offer(bytes, rank: r)) }
            let all = offers.enumerated().flatMap { (t, o) in o.keys.map { (key: $0, trainer: t) } }
                .sorted { ($0.key.version, $0.key.source, $0.key.sequence, $0.trainer) < ($1.key.version, $1.key.source, $1.key.sequence, $1.trainer) }
            if offers.contains(where: \.interrupted) {
                var batch = CollectedBatch(groups: [])
                batch.interrupted = true
                return batch
            }
            if all.count >= prompts {
                let chosen = all.prefix(prompts)
                let myCount = chosen.filter { $0.trainer == collective.rank }.count
                let taken = Array(buffer.groups.prefix(myCount))
                buffer.groups.removeFirst(myCount)
                return try assemble(chosen: Array(chosen), mine: taken.map(\.trajectories), dropped: dropped,
                                    generating: generating, started: t0)
            }
            if let generator {
                // Multiplexing: make a group here instead of waiting. Between its decode
                // steps the trainer keeps taking groups from its rollout ranks, and parks its
                // own group as soon as waiting would no longer be idle: with one trainer when
                // the batch is there, with several (whose buffers it cannot see) when a group
                // has arrived, so the batch is agreed on again. A parked group continues at
                // the next wait, with the weights of then (a partial rollout: each token
                // records the version that sampled it); without partial rollouts, or when
                // its first tokens would be stale, it is given up instead.
                let t = monotonicSeconds()
                try generateWhileWaiting(generator, version: version)
                generating += monotonicSeconds() - t
            } else {
                usleep(1000)
            }
        }
    }

    /// The trainer's own group under way (multiplexing), parked between two decode steps
    /// while the trainer trains; nil when none is.
    var multiplexed: ResumableGeneration?
    /// Whether a parked group may continue with newer weights (`rollout.partial`).
    let partial: Bool
    /// Groups a trainer decodes together when it multiplexes (as a rollout rank does).
    let multiplexGroups: Int
    /// Episodes of the trainer's own groups given up unfinished (stale, or at the end).
    var multiplexedDiscarded = 0
    /// The thread the trainer's own decodings run on (started at the first).
    var generationThread: GenerationThread?

    /// Multiplexing: starts a group, or continues the parked one, until it is done or until
    /// waiting would no longer be idle (then it stays parked).
    func generateWhileWaiting(_ generator: GroupGenerator, version: Int) throws {
        let g: ResumableGeneration
        var action = DecodeAction.proceed
        if let parked = multiplexed {
            g = parked
            if parked.version != version {
                action = partial && version - parked.startVersion <= maxStaleness ? .newWeights(version: version) : .stop
            }
        } else {
            // Several groups decoded together, as rollout ranks do (one cache call per token
            // for all their samples); a parked decoding loses nothing, so a batch of them
            // costs no more waiting than one group.
            let thread = generationThread ?? GenerationThread()
            generationThread = thread
            g = ResumableGeneration(generator: generator, thread: thread, step: sequence &+ version &* 1_000_003 &+ collective.rank &* 7_777_777,
                                    indices: (0..<multiplexGroups).map { 2_000_000 + collective.rank * 64 + $0 }, version: version,
                                    names: (0..<multiplexGroups).map { "m\(collective.rank)-v\(version)-c\(sequence)-\($0)" },
                                    sequence: sequence)
            sequence += multiplexGroups
            multiplexed = g
        }
        let before = buffer.groups.count
        while true {
            switch g.advance(action) {
            case .finished(let result):
                multiplexed = nil
                buffer.counts.episodes += generator.takeEpisodeCounts()
                switch result {
                case .success(let groups):
                    for (k, group) in groups.enumerated() where !group.isEmpty {
                        buffer.append(group, source: BufferedGroup.trainerSource(collective.rank), sequence: g.sequence + k)
                        buffer.counts.multiplexedGroups += 1
                    }
                case .failure(let e as GenerationInterrupted):
                    multiplexedDiscarded += e.episodes
                case .failure(let e):
                    throw e
                }
                return
            case .paused:
                do { try peers.poll() } catch {
                    multiplexedDiscarded += g.abandon()
                    multiplexed = nil
                    throw error
                }
                let arrived = buffer.groups.count
                if collective.size == 1 ? arrived >= prompts : arrived > before { return }
                action = .proceed
            }
        }
    }

    /// Gives up the parked group, if any (at the end of the run: a checkpoint does not
    /// hold it, so a resumed run starts new groups).
    func abandonMultiplexed() {
        guard let g = multiplexed else { return }
        multiplexed = nil
        multiplexedDiscarded += g.abandon()
        _ = generator?.takeEpisodeCounts()
    }

    /// Every trainer's chosen groups, in the agreed order, on every trainer, with the
    /// counts of every trainer summed.
    func assemble(chosen: [(key: (version: Int, source: Int, sequence: Int), trainer: Int)], mine: [[Trajectory]],
                  dropped: (trajectories: Int, tokens: Int), generating: Double, started: Double) throws -> CollectedBatch {
        var counts = buffer.counts
        buffer.counts = BatchCounts()
        counts.droppedStale = dropped.trajectories
        counts.droppedStaleTokens = dropped.tokens
        // Idle: the time gathering the batch (waiting for groups, and for the other
        // trainers in the agreement) that was not spent generating.
        counts.idleMicros = Int(max(0, monotonicSeconds() - started - generating) * 1e6)
        counts.generateMicros = Int(generating * 1e6)
        var perTrainer: [[[Trajectory]]] = []
        var sums = BatchCounts()
        for (r, bytes) in try collective.allgather(bytes: GroupsMessage.encode(mine, trailer: counts)).enumerated() {
            let m: (groups: [[Trajectory]], trailer: BatchCounts)
            do { m = try GroupsMessage.decode(bytes, trailer: BatchCounts.self) } catch { throw RunError.badMessage(rank: r, reason: "\(error)") }
            perTrainer.append(m.groups)
            sums = sums + m.trailer
        }
        var next = [Int](repeating: 0, count: perTrainer.count)
        var groups: [[Trajectory]] = []
        for c in chosen {
            guard next[c.trainer] < perTrainer[c.trainer].count else { throw RunError.badMessage(rank: c.trainer, reason: "fewer groups than offered") }
            groups.append(perTrainer[c.trainer][next[c.trainer]])
            next[c.trainer] += 1
        }
        var batch = CollectedBatch(groups: groups)
        batch.droppedStale = sums.droppedStale
        batch.droppedStaleTokens = sums.droppedStaleTokens
        batch.generatedTokens = sums.receivedTokens
        batch.episodes = sums.episodes
        // Trainers' idle and generation time: the mean over trainers; rollout ranks'
        // admission waits: the mean over rollout ranks.
        batch.idleSeconds = Double(sums.idleMicros) / 1e6 / Double(collective.size)
        batch.generateSeconds = Double(sums.generateMicros) / 1e6 / Double(collective.size)
        batch.trainerGroups = chosen.filter { $0.key.source >= BufferedGroup.trainerSource(0) }.count
        batch.throttledSeconds = Double(sums.throttledMicros) / 1e6 / Double(max(1, rolloutRanks))
        batch.backpressureSeconds = Double(sums.backpressureMicros) / 1e6 / Double(max(1, rolloutRanks))
        trainerGroups += sums.multiplexedGroups
        batch.waitSeconds = monotonicSeconds() - started
        return batch
    }

    /// Every step publishes, also one whose update was skipped (the same weights under a
    /// new publication number): rollout ranks count steps by publications for admission
    /// control.
    func stepDone(version: Int, updated: Bool) throws -> Int {
        guard let publisher = peers.publisher else { return 0 }
        return try publisher.publish(model.params, version: version, trainerGroups: trainerGroups, restoredGroups: restoredGroups)
    }

    func prepareCheckpoint() throws {
        // Trainer 0 writes the checkpoint: it gathers every trainer's buffered groups.
        var all: [[Trajectory]] = []
        for (r, bytes) in try collective.allgather(bytes: GroupsMessage.encode(buffer.groups.map(\.trajectories))).enumerated() {
            do { all += try GroupsMessage.decode(bytes) } catch { throw RunError.badMessage(rank: r, reason: "\(error)") }
        }
        checkpointGroups = all
    }

    func checkpoint() -> (fields: [(String, JSON)], files: [String: Data]) {
        checkpointGroups.isEmpty ? ([], [:]) : BufferedRollouts.checkpoint(checkpointGroups)
    }

    func restore(state: JSON, directory: String) throws {
        // Trainer 0 takes the buffered groups back; they are offered like any others.
        guard collective.rank == 0 else { return }
        for (k, g) in try BufferedRollouts.load(state: state, directory: directory).enumerated() {
            buffer.append(g, source: -1, sequence: k)
            restoredGroups += 1
        }
        buffer.counts = BatchCounts()
    }

    func finish() throws {
        // Trainer 0 tells every trainer the last publication it wrote; each stops its
        // rollout ranks, which pass that version down the tree before they say done.
        abandonMultiplexed()
        generationThread?.stop()
        var last = [Double(peers.publisher?.lastPublication ?? -1)]
        if collective.rank != 0 { last = [0] }
        try collective.allreduceSum(&last)
        var unfinished = [Double(try peers.link?.shutdown(lastPublication: Int(last[0])) { try peers.publisher?.poll() } ?? 0)
                          + Double(multiplexedDiscarded)]
        while let p = peers.publisher, !p.sends.isEmpty { try p.poll(); usleep(200) }
        try collective.allreduceSum(&unfinished)
        discardedUnfinished = Int(unfinished[0])
    }

    /// Unfinished episodes the rollout ranks gave up when they were stopped (partial
    /// rollouts stop mid-episode) and the trainers' own given up (multiplexing), summed
    /// over trainers by `finish`.
    var discardedUnfinished = 0

    var finishNotes: [String] {
        discardedUnfinished == 0 ? [] : ["\(discardedUnfinished) unfinished episodes were discarded (rollouts under way when the run stopped, or too stale to finish)"]
    }
}

// MARK: - Rollout ranks

/// The loop of a rollout rank: wait for weights, then generate groups with the newest
/// weights its node holds and send them to its home trainer with synchronous sends, up to
/// its share of a batch in flight (a trainer busy computing takes them when it next
/// collects; a full buffer there pushes back), until told to stop. A node leader
/// also receives each new version from its tree parent into its node's shared memory and
/// passes it on to its children. Built from the sampler and the environments only: no
/// optimizer, no run directory.
final class RolloutRankLoop {
    let world: MPICollective
    let model: any LanguageModel
    let generator: GroupGenerator
    let perBatch: Int
    /// Groups that may wait to be taken by the home trainer: this rank's share of a batch
    /// (at most `buffer.max_groups`). No more: a rank further ahead than its share would
    /// have its newer groups taken before an older one of a slower rank, which then goes
    /// stale although admission control let it start.
    let inFlight: Int
    /// Admission control: this rank's share of the groups all rollout ranks may have
    /// started per version held, (max_staleness + 1) x batch.prompts in all.
    let prompts: Int
    let stepsAhead: Int
    /// Whether admission control applies (`rollout.admission`).
    let admission: Bool
    let rolloutRanks: Int
    let faults: FaultInjection
    let home: Int
    let node: NodeWeights
    let parent: Int?
    let children: [Int]
    /// Where a message goes when no node slot is free to take it.
    var scratch: UnsafeMutableRawPointer?
    /// Forwarding sends in flight: the slot they read (-1: scratch) and the requests.
    var forwards: [(slot: Int, sends: [MPICollective.PendingRequest])] = []
    /// The newest publication this leader received from its tree parent.
    var lastReceived = -1
    /// The weights message being received from the tree parent: the node slot it fills
    /// (nil: scratch memory), where it goes, and the receive requests still in flight.
    var incoming: (slot: Int?, target: UnsafeMutableRawPointer, requests: [MPICollective.PendingRequest])?

    init(world: MPICollective, model: any LanguageModel, node: NodeWeights, tree: WeightTree, trainers: Int, settings: RunSettings) throws {
        self.world = world
        self.model = model
        self.node = node
        generator = GroupGenerator(model: model, settings: settings,
                                   environments: try EnvironmentSource(settings, vocabSize: model.config.vocabSize))
        perBatch = max(1, min(4, settings.ranks.bufferGroups))
        rolloutRanks = world.size - trainers
        let share = (settings.prompts + max(1, rolloutRanks) - 1) / max(1, rolloutRanks)
        inFlight = max(1, min(settings.ranks.bufferGroups, share))
        prompts = settings.prompts
        stepsAhead = settings.stepsAhead
        admission = settings.ranks.admission
        faults = FaultInjection(worldRank: world.rank)
        home = (world.rank - trainers) % trainers
        parent = tree.parent(of: world.rank)
        children = tree.children(of: world.rank)
        liveness = Liveness(watchdog: settings.watchdog, peers: [home], armed: false)
        if settings.rollout.partial {
            generator.worker.sampler.betweenSteps = { [unowned self] _ in self.betweenDecodeSteps() }
        } else if parent != nil {
            // Weights keep moving down the tree while this leader decodes with the ones it has.
            generator.worker.sampler.betweenSteps = { [unowned self] _ in self.relayBetweenDecodeSteps() }
        }
    }

    deinit { scratch?.deallocate() }

    /// Debug trace of the weights each decode step used (KAT_TRACE_WEIGHTS).
    let trace = WeightTrace.fromEnvironment(rank: LaunchEnvironment.worldRank)
    /// Partial rollouts: a stop that came mid-episode (its last publication number), an
    /// error met between decode steps (thrown once the decoding has stopped), and the
    /// unfinished episodes given up.
    var stopMessage: Int?
    var betweenStepsError: (any Error)?
    var discarded = 0
    /// Whether a decoding is under way (installs are then mid-episode).
    var decoding = false

    /// Between two decode steps of a partial rollout: what the loop does between groups
    /// that must not wait (heartbeats, relaying weights down the tree, passing on a
    /// preemption, the stop message) and the newest weights of the node when they are newer.
    func betweenDecodeSteps() -> DecodeAction {
        let used = version
        trace?.step(publication: publication)
        if faults.decodeDelayMicros > 0 { usleep(faults.decodeDelayMicros) }
        do {
            if let last = try stopRequested() { stopMessage = last; return .stop }
        } catch {
            betweenStepsError = error
            return .stop
        }
        return version != used ? .newWeights(version: version) : .proceed
    }

    /// Between two decode steps without partial rollouts: a leader advances the weights
    /// it receives and forwards; the decoding keeps the weights it started with.
    func relayBetweenDecodeSteps() -> DecodeAction {
        trace?.step(publication: publication)
        do {
            try relayWeights()
            return .proceed
        } catch {
            betweenStepsError = error
            return .stop
        }
    }

    /// The policy version and publication number of the weights this rank holds (-1: none
    /// yet), and the groups the trainers had generated by then.
    var version = -1
    var publication = -1
    var trainerGroups = 0
    /// Groups the trainers restored from the checkpoint (from the publication).
    var restoredGroups = 0
    var liveness: Liveness
    var beat: MPICollective.PendingRequest?

    /// Takes the home trainer's heartbeats, sends ours when due, and checks that it was
    /// heard from within the watchdog.
    /// - Throws: `RunError.silentRank` naming the home trainer when it was silent too long.
    func keepAlive() throws {
        try liveness.exchange(over: world, from: home, receiving: Tag.trainerHeartbeat, to: home, sending: Tag.rolloutHeartbeat, beat: &beat)
    }

    /// A leader receives every weights message from its parent, into a free node slot
    /// (else into scratch memory), and passes each on to its children. The receive is
    /// non-blocking: each call advances it, and the rank decodes in between (a message
    /// takes as long as a step over a slow link, and MPI moves it only inside MPI calls,
    /// so a blocking receive would hold the leader for most of every step).
    func relayWeights() throws {
        guard let parent else { return }
        try releaseFinishedForwards()
        while true {
            if incoming == nil {
                guard try world.probe(source: parent, tag: Tag.weights) != nil else { return }
                let slot = node.beginWrite()
                let target: UnsafeMutableRawPointer
                if let slot { target = node.message(slot) } else {
                    // Every slot is in use (readers, or earlier forwards): scratch memory, and
                    // the earlier forwards from it must be done first.
                    while forwards.contains(where: { $0.slot < 0 }) { try relayDrain() }
                    if scratch == nil { scratch = UnsafeMutableRawPointer.allocate(byteCount: node.messageBytes, alignment: 64) }
                    target = scratch ?? node.message(0)
                }
                incoming = (slot, target, try world.ireceive(into: target, bytes: node.messageBytes, from: parent, tag: Tag.weights))
                trace?.receiving()
            }
            guard let (slot, target, requests) = incoming else { return }
            let left = try world.unfinished(requests)
            guard left.isEmpty else { incoming = (slot, target, left); return }
            incoming = nil
            lastReceived = NodeWeights.publication(ofMessage: target)
            trace?.received(publication: lastReceived)
            if let slot { node.finishWrite(slot) }
            if !children.isEmpty {
                if let slot { node.pin(slot) }
                var sends: [MPICollective.PendingRequest] = []
                for c in children { sends += try world.isend(from: target, bytes: node.messageBytes, to: c, tag: Tag.weights) }
                forwards.append((slot ?? -1, sends))
            }
        }
    }

    /// Tests the forwarding sends once, and unpins the slots whose sends are all done.
    func releaseFinishedForwards() throws {
        var left: [(slot: Int, sends: [MPICollective.PendingRequest])] = []
        for f in forwards {
            let pending = try world.unfinished(f.sends)
            if pending.isEmpty { if f.slot >= 0 { node.unpin(f.slot) } } else { left.append((f.slot, pending)) }
        }
        forwards = left
    }

    /// Advances forwarding sends once.
    func relayDrain() throws {
        try releaseFinishedForwards()
        usleep(100)
    }

    /// Copies the node's newest weights when they are newer than ours. The slot is pinned
    /// while copying, so it is never overwritten under us.
    func installWeights() {
        guard let (slot, header) = node.pinNewer(than: publication) else { return }
        model.params.pointer.update(from: node.parameters(slot), count: node.floats)
        node.unpin(slot)
        version = header.version
        publication = header.number
        trainerGroups = header.trainerGroups
        restoredGroups = header.restoredGroups
        trace?.install(header, midEpisode: decoding)
    }

    /// Whether this rank already passed a SIGUSR1 on to its home trainer.
    var preemptionSent = false

    func serve() throws {
        try keepAlive()
        try relayWeights()
        installWeights()
        if Preemption.requested, !preemptionSent {
            preemptionSent = true
            try world.send([], to: home, tag: Tag.preempt)
        }
    }

    /// The stop message's last publication number, or nil when no stop came.
    func stopRequested() throws -> Int? {
        try serve()
        guard try world.probe(source: home, tag: Tag.stop) != nil else { return nil }
        let bytes = try world.receive(from: home, tag: Tag.stop)
        liveness.heard(home)
        guard bytes.count == 8 else { throw RunError.badMessage(rank: home, reason: "stop message of \(bytes.count) bytes") }
        return bytes.withUnsafeBytes { Int(Int64(littleEndian: $0.loadUnaligned(as: Int64.self))) }
    }

    /// After a stop: a leader takes every publication up to the last one and passes it
    /// on, so that no weights message is left unreceived; then done, then goodbye.
    func finish(lastPublication: Int) throws {
        if parent != nil {
            while lastReceived < lastPublication { try serve(); usleep(200) }
            while !forwards.isEmpty { try keepAlive(); try relayDrain() }
        }
        var payload = [UInt8]()
        withUnsafeBytes(of: Int64(discarded).littleEndian) { payload += $0 }
        try world.send(payload, to: home, tag: Tag.done)
        while try world.probe(source: home, tag: Tag.bye) == nil {
            try keepAlive()
            usleep(200)
        }
        _ = try world.receive(from: home, tag: Tag.bye)
    }

    /// The groups this rank may have started since it first held weights, `publications`
    /// publications later (trainers publish once per step, so publications count steps):
    /// its share of (steps + stepsAhead + 1) x batch.prompts less the groups the trainers
    /// generated themselves in that time, where stepsAhead = max_staleness / updates per
    /// step is how many steps a group may wait and still be trained. The shares of all
    /// rollout ranks sum to the total. This is AReaL's admission rule (Fu et al. 2025,
    /// "AReaL", section 5.1) with steps in place of versions.
    static func admitted(publications: Int, stepsAhead: Int, prompts: Int, trainerGroups: Int, rank index: Int, of ranks: Int) -> Int {
        let total = max(0, (publications + stepsAhead + 1) * prompts - trainerGroups)
        return total / ranks + (index < total % ranks ? 1 : 0)
    }

    func run() throws {
        // The first weights come after the trainers' warm start.
        while publication < 0 {
            if let last = try stopRequested() { try finish(lastPublication: last); return }
            if publication < 0 { usleep(1000) }
        }
        // Groups are decoded several at a time (one cache call per token for all their
        // samples) and sent one by one; a new batch starts when the last one is on its way.
        var firstVersion = -1, firstPublication = -1, firstTrainerGroups = 0
        var counter = 0, sequence = 0, started = 0
        var throttled = 0.0, backpressure = 0.0
        var ready: [[Trajectory]] = []
        // Sends in flight: the home trainer takes groups only between its micro-batches
        // and while it collects a batch, so the next groups are generated while earlier
        // ones wait to be taken, up to this rank's share of a batch: the next batch is
        // then ready when the trainer comes to collect it, one step behind at most.
        var pending: [MPICollective.PendingRequest] = []
        var lastPublication = -1
        while true {
            if let last = try stopRequested() { lastPublication = last; break }
            pending = try world.unfinished(pending)
            if pending.count >= inFlight {
                // Back-pressure: the home trainer's buffer is full, or it is computing.
                let t = monotonicSeconds()
                usleep(200)
                backpressure += monotonicSeconds() - t
                continue
            }
            if ready.isEmpty {
                if firstVersion < 0 { firstVersion = version; firstPublication = publication; firstTrainerGroups = trainerGroups }
                let allowed = !admission ? started + perBatch
                    : Self.admitted(publications: publication - firstPublication, stepsAhead: stepsAhead, prompts: prompts,
                                    trainerGroups: trainerGroups - firstTrainerGroups + restoredGroups,
                                    rank: world.rank - (world.size - rolloutRanks), of: rolloutRanks)
                if started >= allowed {
                    // Admission control: wait for newer weights rather than make groups
                    // that would be stale before they are trained.
                    let t = monotonicSeconds()
                    usleep(500)
                    throttled += monotonicSeconds() - t
                    continue
                }
                let count = min(perBatch, allowed - started)
                started += count
                faults.killIfDue(counter + 1)
                // Ids and samples are unique per run segment: a resumed run starts at a later version.
                let indices = (0..<count).map { 1_000_000 + world.rank * 64 + $0 }
                let names = (0..<count).map { "v\(firstVersion)-r\(world.rank)-c\(counter)-\($0)" }
                decoding = true
                do {
                    ready = try generator.generate(step: counter &+ firstVersion &* 1_000_003, indices: indices, version: version, names: names)
                        .filter { !$0.isEmpty }
                } catch let e as GenerationInterrupted {
                    // Stopped mid-episode: the groups are given up, and counted.
                    discarded += e.episodes
                    ready = []
                }
                decoding = false
                if let e = betweenStepsError { throw e }
                counter += 1
                if let last = stopMessage { lastPublication = last; break }
                if ready.isEmpty { continue }
            }
            // The episode counts and admission waits travel with the group that follows them.
            let note = GroupNote(episodes: generator.takeEpisodeCounts(), sequence: sequence, throttledMicros: Int(throttled * 1e6),
                                 backpressureMicros: Int(backpressure * 1e6))
            let message = GroupsMessage.encode([ready.removeFirst()], trailer: note)
            throttled = 0
            backpressure = 0
            sequence += 1
            pending.append(try world.isend(message, to: home, tag: Tag.group, synchronous: true))
        }
        // Finish the groups in flight (the home trainer drains them), pass on the last
        // weights, say done, and wait for goodbye.
        while true {
            pending = try world.unfinished(pending)
            if pending.isEmpty { break }
            try serve()
            usleep(200)
        }
        try finish(lastPublication: lastPublication)
    }
}

