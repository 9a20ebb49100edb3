import Foundation
import KATEnv
import KATModel
import KATRL
import KATSupport
import KATTrie

/// `kat-dist train`: one process, or one rank of an MPI job.
///
/// In a job of N ranks, ranks 0..T-1 train (T = ranks.trainers) and the other R ranks
/// generate rollouts. Trainers split every global batch into T trie shards, sum gradients
/// and apply the same update. With R = 0 the trainers generate too, each a share of the
/// groups (synchronous); with R > 0 rollout ranks generate continuously with the newest
/// weights they hold (asynchronous). One process is the case N = T = 1, run by the same
/// loop with a local collective.
public enum Training {
    /// How the ranks of a job are split.
    public struct Layout: Equatable, Sendable {
        public var trainers: Int
        public var rollouts: Int
    }

    /// Checks the rank layout against the job's size before anything starts.
    /// - Throws: `RunError.settings` naming the keys at fault.
    public static func layout(_ settings: RunSettings, worldSize n: Int) throws(RunError) -> Layout {
        let t = settings.ranks.trainers
        guard let r = settings.ranks.rollouts else {
            guard t <= n else {
                throw .settings(key: "ranks.trainers", reason: "ranks.trainers (\(t)) is more than the number of MPI ranks (\(n))")
            }
            return try checked(Layout(trainers: t, rollouts: n - t), settings)
        }
        guard t + r == n else {
            throw .settings(key: "ranks.trainers", reason: "ranks.trainers (\(t)) + ranks.rollouts (\(r)) must equal the number of MPI ranks (\(n))")
        }
        return try checked(Layout(trainers: t, rollouts: r), settings)
    }

    /// Checks that a layout can make progress with these settings.
    static func checked(_ layout: Layout, _ settings: RunSettings) throws(RunError) -> Layout {
        let (t, r) = (layout.trainers, layout.rollouts)
        if !settings.data.isOnline, r > 0 {
            throw .settings(key: "ranks.rollouts", reason: "offline training (data.trajectories) has no rollout ranks: set ranks.trainers to the number of ranks (\(t + r))")
        }
        if settings.data.isOnline, r > 0, !settings.trainersMultiplex {
            // Rollout rank k sends to trainer k mod T; without multiplexing only those
            // trainers' buffers can hold the groups of a batch.
            let room = min(t, r) * settings.ranks.bufferGroups
            if room < settings.prompts {
                let why = settings.ranks.multiplex
                    ? "with trainers that do not multiplex (max_staleness below twice batch.minibatches x loss.ppo_epochs)" : "with ranks.multiplex=false"
                throw .settings(key: "buffer.max_groups", reason: "the trainers' buffers hold \(room) group\(room == 1 ? "" : "s") (buffer.max_groups \(settings.ranks.bufferGroups) x \(min(t, r)) trainer\(min(t, r) == 1 ? "" : "s") with rollout ranks) but a batch needs batch.prompts (\(settings.prompts)) \(why): raise buffer.max_groups to at least \((settings.prompts + min(t, r) - 1) / min(t, r))\(settings.ranks.multiplex ? ", or max_staleness" : ", or turn ranks.multiplex on")")
            }
        }
        return layout
    }

    /// Checks what can be checked before any rank starts: the rank layout, the task, and
    /// (with `files`) that the files the settings name exist here.
    /// - Throws: `RunError.settings` naming the key.
    public static func check(_ settings: RunSettings, worldSize: Int, files: Bool = true) throws(RunError) {
        _ = try layout(settings, worldSize: worldSize)
        if case let .task(name) = settings.data, settings.task == nil {
            throw RunError.unknownTask(name)
        }
        if files { try checkFiles(settings) }
    }

    /// Checks that the files the settings name exist on this process's machine.
    /// - Throws: `RunError.settings` naming the key and the path.
    public static func checkFiles(_ settings: RunSettings) throws(RunError) {
        let fm = FileManager.default
        if case let .trajectories(path) = settings.data, !fm.fileExists(atPath: path) {
            throw .settings(key: "data.trajectories", reason: "\(path): no such file")
        }
        if case let .directory(dir) = settings.model {
            guard fm.fileExists(atPath: dir) else { throw .settings(key: "model.init", reason: "\(dir): no such directory") }
            do { _ = try Checkpoint.resolveModelDirectory(dir) } catch { throw .settings(key: "model.init", reason: "\(error)") }
        }
    }

    /// What `kat-dist train --check` looks for on this machine, beyond `checkFiles`: the
    /// program of `data.env_command` (its first word, on PATH or as a path) and each of its
    /// arguments that holds a slash (taken as a file), and, when resuming, the checkpoint
    /// to continue from. Every rank of a job reads these, so on a cluster they must be on
    /// storage every node shares (Docs/cluster.md).
    /// - Throws: `RunError.settings` naming the key and the path.
    public static func checkFilesForLaunch(_ settings: RunSettings, runDirectory: String?, resume: String?) throws(RunError) {
        try checkFiles(settings)
        let fm = FileManager.default
        if case let .external(command) = settings.data {
            let words = command.split(separator: " ").map(String.init)
            if let program = words.first {
                let found = program.contains("/") ? fm.isExecutableFile(atPath: program)
                    : (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").contains { fm.isExecutableFile(atPath: "\($0)/\(program)") }
                if !found { throw .settings(key: "data.env_command", reason: "\(program): no such program here") }
            }
            for w in words.dropFirst() where w.contains("/") && !w.hasPrefix("-") && !fm.fileExists(atPath: w) {
                throw .settings(key: "data.env_command", reason: "\(w): no such file here")
            }
        }
        if let resume, let run = runDirectory {
            let path = resume == "auto" ? run + "/checkpoints" : resume
            if !fm.fileExists(atPath: path) { throw .runDirectory(path: path, reason: "not found here: nothing to resume from") }
        }
    }

    /// The file check on every rank of a job, reported once: each distinct fault on one
    /// line, naming the ranks and hosts that see it when not all do (a file missing from
    /// one node's storage).
    /// - Returns: the lines to print (rank 0 prints them); empty when every rank is fine.
    static func checkFilesOnEveryRank(_ settings: RunSettings, world: MPICollective) throws -> [String] {
        var mine = ""
        do { try checkFiles(settings) } catch { mine = "\(error)" }
        return try faultsOnEveryRank(mine, world: world)
    }

    /// Every rank's fault (empty: none) gathered on every rank, as the lines to print once.
    static func faultsOnEveryRank(_ mine: String, world: MPICollective) throws -> [String] {
        let all = try world.allgather(bytes: Array((MetricsLog.hostName() + "\t" + mine).utf8)).map { bytes -> (host: String, fault: String) in
            let parts = String(decoding: bytes, as: UTF8.self).split(separator: "\t", maxSplits: 1, omittingEmptySubsequences: false)
            return (String(parts.first ?? ""), parts.count > 1 ? String(parts[1]) : "")
        }
        return faultLines(all)
    }

    /// One line per distinct fault of `ranks` (indexed by rank; an empty fault is none),
    /// in order of the first rank that has it.
    static func faultLines(_ ranks: [(host: String, fault: String)]) -> [String] {
        var order: [String] = [], where_: [String: [Int]] = [:]
        for (r, x) in ranks.enumerated() where !x.fault.isEmpty {
            if where_[x.fault] == nil { order.append(x.fault) }
            where_[x.fault, default: []].append(r)
        }
        return order.map { fault in
            let rs = where_[fault] ?? []
            if rs.count == ranks.count { return fault }
            let hosts = Set(rs.map { ranks[$0].host }).sorted().joined(separator: ", ")
            return fault + " (on rank\(rs.count > 1 ? "s" : "") \(rs.map(String.init).joined(separator: ", ")) of \(ranks.count), host \(hosts))"
        }
    }

    /// Runs a training job: in one process with a local collective, or, when started by an
    /// MPI launcher, as this rank's part (trainer or rollout rank).
    /// - Returns: the exit code. A failure in one process is thrown; on a rank of a job it
    ///   ends the whole job through MPI_Abort with a message naming the rank.
    public static func run(_ settings: RunSettings, runDirectory: String, resume: String?, console: Console) throws -> Int32 {
        guard LaunchEnvironment.launchedByMPI else {
            try check(settings, worldSize: 1)
            if settings.run.deterministic { BLASRuntime.setThreads(1) }
            try trainer(settings, model: try settings.initialModel(), collective: LocalCollective(), world: nil, topology: nil,
                        layout: Layout(trainers: 1, rollouts: 0), runDirectory: runDirectory, resume: resume, console: console)
            return 0
        }
        let world: MPICollective
        do { world = try MPICollective.initWorld() } catch {
            FileHandle.standardError.write(Data("kat-dist: \(error)\n".utf8))
            return 1
        }
        let layout: Layout
        do { layout = try self.layout(settings, worldSize: world.size) } catch {
            if world.rank == 0 { FileHandle.standardError.write(Data("kat-dist train: \(error)\n".utf8)) }
            world.finalize()
            return 2
        }
        do {
            let faults = try checkFilesOnEveryRank(settings, world: world)
            if !faults.isEmpty {
                if world.rank == 0 { FileHandle.standardError.write(Data(faults.map { "kat-dist train: \($0)\n" }.joined().utf8)) }
                world.finalize()
                return 2
            }
        } catch {
            world.abort("\(error)")
        }
        if settings.run.deterministic { BLASRuntime.setThreads(1) }
        // Setting up: every rank builds its part, and the ranks agree that all of them
        // could before any runs, so that a fault of the input (a model, a data file, a run
        // directory, an environment command) is reported once, by rank 0, naming the ranks
        // that see it, and the job ends with exit 2 (settings) or 1 without an abort.
        var fault: Error?
        func agreed() throws -> Int32? {
            let lines = try faultsOnEveryRank(fault.map { "\($0)" } ?? "", world: world)
            guard !lines.isEmpty else { return nil }
            if world.rank == 0 { FileHandle.standardError.write(Data(lines.map { "kat-dist train: \($0)\n" }.joined().utf8)) }
            let settingsFault = fault.map { if case RunError.settings = $0 { return true } else { return false } } ?? true
            return settingsFault ? 2 : 1
        }
        do {
            let isTrainer = world.rank < layout.trainers
            let trainers = try world.split(color: isTrainer ? 0 : 1, key: world.rank)
            var model: (any LanguageModel)?
            do { model = try settings.initialModel() } catch { fault = error }
            if let code = try agreed() { world.finalize(); return code }
            guard let model else { world.abort("the model was not built") }
            let topology = layout.rollouts > 0 ? try Topology(world: world, layout: layout, floats: model.params.count) : nil
            var work: (() throws -> Void)?
            do {
                if isTrainer {
                    let loop = try trainerLoop(settings, model: model, collective: trainers, world: world, topology: topology, layout: layout,
                                               runDirectory: runDirectory, resume: resume, console: world.rank == 0 ? console : SilentConsole())
                    work = loop.run
                } else if let topology {
                    let loop = try RolloutRankLoop(world: world, model: model, node: topology.node, tree: topology.tree,
                                                   trainers: layout.trainers, settings: settings)
                    work = loop.run
                }
            } catch { fault = error }
            if let code = try agreed() { world.finalize(); return code }
            try work?()
        } catch {
            world.abort("\(error)")
        }
        world.finalize()
        return 0
    }

    /// The shape of an asynchronous job: each node's shared weights, and the tree of node
    /// leaders that new weights travel along.
    struct Topology {
        let node: NodeWeights
        let tree: WeightTree

        /// Collective over the world: finds each rank's node and allocates the node's slots.
        init(world: MPICollective, layout: Layout, floats: Int) throws {
            let nodeComm = try world.splitShared()
            // Every rank must agree with its node's other ranks on who they are (the MPI
            // library decides by host; ranks started oddly can disagree, and then the
            // node's collectives would fail inside MPI).
            let members = try nodeComm.members(inWorldOf: world)
            let everyone = try world.allgather(bytes: members.flatMap { m in withUnsafeBytes(of: Int64(m).littleEndian) { Array($0) } })
                .map { b in b.withUnsafeBytes { raw in (0..<(b.count / 8)).map { Int(Int64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self))) } } }
            for (r, list) in everyone.enumerated() {
                for m in list where m < 0 || m >= everyone.count || everyone[m] != list {
                    let theirs = m >= 0 && m < everyone.count ? everyone[m].map(String.init).joined(separator: ",") : "none"
                    throw RunError.inconsistentNodes(detail: "rank \(r) shares a node with ranks \(list.map(String.init).joined(separator: ",")), but rank \(m) with ranks \(theirs)")
                }
            }
            // A node is named by the world rank of its first rank.
            let first = try nodeComm.broadcast(bytes: withUnsafeBytes(of: Int64(world.rank).littleEndian) { Array($0) }, root: 0)
            let nodeOf = try world.allgather(bytes: first).map { b in b.withUnsafeBytes { Int(Int64(littleEndian: $0.loadUnaligned(as: Int64.self))) } }
            node = try NodeWeights(node: nodeComm, floats: floats)
            tree = WeightTree(nodeOf: nodeOf, rollouts: Array(layout.trainers..<(layout.trainers + layout.rollouts)))
        }
    }

    /// The trainers' ring of heartbeats, when there are several trainers under MPI.
    static func ringOnly(_ collective: Collective, _ settings: RunSettings) -> RolloutPeers? {
        guard let mpi = collective as? MPICollective, mpi.size > 1 else { return nil }
        return RolloutPeers(link: nil, publisher: nil, ring: TrainerRing(trainers: mpi, watchdog: settings.watchdog))
    }

    /// Builds a trainer's phases and runs its loop.
    static func trainer(_ settings: RunSettings, model: any LanguageModel, collective: Collective, world: MPICollective?, topology: Topology?,
                        layout: Layout, runDirectory: String, resume: String?, console: Console) throws {
        try trainerLoop(settings, model: model, collective: collective, world: world, topology: topology, layout: layout,
                        runDirectory: runDirectory, resume: resume, console: console).run()
    }

    /// Builds a trainer's phases and its loop (reading the data, the run directory and the
    /// checkpoint to resume), without running it.
    static func trainerLoop(_ settings: RunSettings, model: any LanguageModel, collective: Collective, world: MPICollective?, topology: Topology?,
                            layout: Layout, runDirectory: String, resume: String?, console: Console) throws -> TrainerLoop {
        let plan = try phases(settings, model: model, collective: collective, world: world, topology: topology, layout: layout)
        if let mpi = collective as? MPICollective {
            // A collective that waits serves heartbeats and intake, and gives up after the
            // watchdog (a little later than the ring, which names the stopped trainer).
            mpi.watchdog = settings.watchdog * 1.5
            mpi.whileWaiting = { try plan.peers?.poll() }
        }
        if collective.rank == 0, let why = settings.warmStartUnused { console.line(why) }
        if collective.rank == 0, layout.rollouts > 0, settings.data.isOnline {
            if let why = settings.multiplexOffReason { console.line(why) }
            let room = min(layout.trainers, layout.rollouts) * settings.ranks.bufferGroups
            if settings.trainersMultiplex, room < settings.prompts {
                console.line("the trainers' buffers hold \(room) of a batch's \(settings.prompts) groups from rollout ranks (buffer.max_groups \(settings.ranks.bufferGroups)): "
                             + "the trainers will make the rest themselves; raise buffer.max_groups to at least \((settings.prompts + room / settings.ranks.bufferGroups - 1) / (room / settings.ranks.bufferGroups)) to let the rollout ranks make them")
            }
        }
        return try TrainerLoop(settings: settings, collective: collective, isLeader: collective.rank == 0, worldRank: world?.rank ?? 0,
                               console: console, model: model, phases: plan.phases, evaluator: plan.evaluator, peers: plan.peers,
                               runDirectory: runDirectory, resume: resume, title: "kat-dist run \(runDirectory) (\(plan.title))")
    }

    /// A trainer's phases in order (warm start then RL, or offline), its evaluator, its
    /// rollout ranks and weight sends, and a title naming the data.
    static func phases(_ settings: RunSettings, model: any LanguageModel, collective: Collective, world: MPICollective?, topology: Topology?,
                       layout: Layout) throws -> (phases: [BatchSource], evaluator: Evaluator?, peers: RolloutPeers?, title: String) {
        switch settings.data {
        case let .trajectories(path):
            let trajs = try TrajectoryReader.read(path: path, vocabSize: model.config.vocabSize, maxPositions: model.config.nPositions)
            // The estimator's fields are checked on the whole file before the first step.
            _ = try computeAdvantages(trajs, config: settings.advantage)
            return ([OfflineSource(trajectories: trajs, settings: settings)], nil, ringOnly(collective, settings), "offline training on \(path)")
        case .task, .external:
            let environments = try EnvironmentSource(settings, vocabSize: model.config.vocabSize)
            try environments.checkFits(contextLength: model.config.nPositions, settings: settings)
            var phases: [BatchSource] = []
            if let task = environments.task, settings.warmStart.steps > 0 {
                phases.append(WarmStartSource(task: task, config: settings.warmStart, seed: settings.run.seed,
                                              tokenizer: environments.tokenizer))
            }
            var peers: RolloutPeers?
            if let world, let topology, layout.rollouts > 0 {
                // Rollout rank r sends its groups to trainer (r - T) mod T.
                let mine = (layout.trainers..<(layout.trainers + layout.rollouts)).filter { ($0 - layout.trainers) % layout.trainers == world.rank }
                let link = mine.isEmpty ? nil : RolloutLink(world: world, rollouts: mine, capacity: settings.ranks.bufferGroups,
                                                            watchdog: settings.watchdog)
                let publisher = world.rank == 0 ? WeightPublisher(world: world, node: topology.node, tree: topology.tree) : nil
                let p = RolloutPeers(link: link, publisher: publisher, ring: ringOnly(collective, settings)?.ring)
                peers = p
                // The trainer's own decodings get environment processes of their own (started
                // when first used): a parked decoding holds its episodes' processes between
                // two steps, and evaluation must not reset them meanwhile.
                let generator = settings.trainersMultiplex
                    ? GroupGenerator(model: model, settings: settings, environments: try EnvironmentSource(settings, vocabSize: model.config.vocabSize))
                    : nil
                phases.append(AsynchronousRollouts(peers: p, collective: collective, model: model, generator: generator, rolloutRanks: layout.rollouts,
                                                   settings: settings))
            } else {
                let generator = GroupGenerator(model: model, settings: settings, environments: environments)
                phases.append(SynchronousRollouts(generator: generator, collective: collective, settings: settings))
                peers = ringOnly(collective, settings)
            }
            return (phases, Evaluator(model: model, settings: settings, environments: environments), peers, environments.name)
        }
    }
}
