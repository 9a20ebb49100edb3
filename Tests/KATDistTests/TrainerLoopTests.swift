import Foundation
import XCTest
import KATTestSupport
@testable import KATDist
import KATModel
import KATRL
import KATSupport
import KATTrie

/// A console that keeps what the run printed.
final class RecordingConsole: Console {
    var lines: [String] = []
    func line(_ text: String) { lines.append(text) }
    func status(_ text: String, final: Bool) {}
    var text: String { lines.joined(separator: "\n") }
}

/// Settings of a tiny online run on the code task: small model, few prompts.
func tinySettings(_ overrides: [String]) throws -> RunSettings {
    var c = TrainConfig()
    for o in ["model.n_embd=32", "model.n_layer=2", "model.n_head=2", "batch.prompts=2", "rollout.group_size=4",
              "warmstart.batch=8", "eval.every=0", "eval.prompts=8", "deterministic=true", "checkpoint.keep=50"] + overrides {
        try c.apply(override: o)
    }
    try c.validate(source: "test")
    return RunSettings(c)
}

/// Runs a whole job in this process, the way `kat-dist train` does outside mpirun.
func runInProcess(_ settings: RunSettings, _ dir: String, resume: String? = nil) throws -> RecordingConsole {
    let console = RecordingConsole()
    let code = try Training.run(settings, runDirectory: dir, resume: resume, console: console)
    XCTAssertEqual(code, 0)
    return console
}

/// A source that passes through to another and raises the pre-emption flag while
/// collecting one chosen step, as SIGUSR1 would between two steps.
final class PreemptAt: BatchSource {
    let inner: BatchSource
    let step: Int
    init(_ inner: BatchSource, step: Int) { self.inner = inner; self.step = step }
    var phase: Phase { inner.phase }
    var schedule: PhaseSchedule { inner.schedule }
    func begin(version: Int) throws { try inner.begin(version: version) }
    func collect(step s: Int, version: Int) throws -> CollectedBatch {
        if s == step { Preemption.flag = 1 }
        return try inner.collect(step: s, version: version)
    }
    func service() throws { try inner.service() }
    func stepDone(version: Int, updated: Bool) throws -> Int { try inner.stepDone(version: version, updated: updated) }
    func prepareCheckpoint() throws { try inner.prepareCheckpoint() }
    func checkpoint() -> (fields: [(String, JSON)], files: [String: Data]) { inner.checkpoint() }
    func restore(state: JSON, directory: String) throws { try inner.restore(state: state, directory: directory) }
    func finish() throws { try inner.finish() }
}

/// A trainer collective of two in which the other trainer asks to stop at its `stopCall`-th
/// stop agreement: every other operation behaves as if the peer held nothing (the loop's
/// order is under test here, not the sums).
final class PeerAsksToStop: Collective {
    let stopCall: Int
    var agreements = 0
    init(stopCall: Int) { self.stopCall = stopCall }
    var rank: Int { 0 }
    var size: Int { 1 }
    func allreduceSum(_ buffer: FloatBuffer) throws {}
    func allreduceSum(_ values: inout [Double]) throws {
        guard values.count == 1 else { return } // the stop flag is the only one-number sum
        agreements += 1
        if agreements == stopCall { values[0] += 1 }
    }
    func allreduceMaxMin(_ value: Double) throws -> (max: Double, min: Double) { (value, value) }
    func broadcast(bytes: [UInt8], root: Int) throws -> [UInt8] { bytes }
    func allgather(bytes: [UInt8]) throws -> [[UInt8]] { [bytes] }
}

final class TrainerLoopTests: TemporaryDirectoryTestCase {
    override func tearDown() { Preemption.flag = 0; super.tearDown() }

    func checkpointSteps(_ run: String) -> [Int] { Checkpoint.names(in: run + "/checkpoints").compactMap(Checkpoint.step(ofName:)) }

    func finalWeights(_ run: String) throws -> [Float] {
        let latest = try String(contentsOfFile: run + "/checkpoints/latest", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        return try ModelDirectory.load(run + "/checkpoints/" + latest).params.array
    }

    /// Builds the phases of a run as `Training` does, lets `wrap` replace them, and runs the loop.
    func runLoop(_ settings: RunSettings, _ dir: String, collective: Collective = LocalCollective(), resume: String? = nil,
                 wrap: ([BatchSource]) -> [BatchSource] = { $0 }) throws -> RecordingConsole {
        let console = RecordingConsole()
        let model = try settings.initialModel()
        let plan = try Training.phases(settings, model: model, collective: collective, world: nil, topology: nil,
                                       layout: Training.Layout(trainers: 1, rollouts: 0))
        let loop = try TrainerLoop(settings: settings, collective: collective, isLeader: true, worldRank: 0, console: console, model: model,
                                   phases: wrap(plan.phases), evaluator: plan.evaluator, runDirectory: dir, resume: resume, title: "test")
        try loop.run()
        return console
    }

    /// The warm start is a phase like RL: it checkpoints every checkpoint.every of its steps
    /// and at its end, and the checkpoints say which phase and step they hold.
    func testWarmStartCheckpointsAtItsCadenceAndItsEnd() throws {
        let s = try tinySettings(["warmstart.steps=5", "steps=2", "checkpoint.every=2"])
        _ = try runInProcess(s, dir + "/run")
        XCTAssertEqual(checkpointSteps(dir + "/run"), [2, 4, 5, 7], "warm start 2, 4 and its end (5); RL step 2 = step 7, the final one")
        let state = try JSON.parse(String(contentsOfFile: dir + "/run/checkpoints/step-000004/state.json", encoding: .utf8))
        XCTAssertEqual(state["phase"], .string("warmstart"))
        XCTAssertEqual(state["phase_step"], .int(4))
        let last = try JSON.parse(String(contentsOfFile: dir + "/run/checkpoints/step-000007/state.json", encoding: .utf8))
        XCTAssertEqual(last["phase"], .string("rl"))
        XCTAssertEqual(last["rl_step"], .int(2))
    }

    /// SIGUSR1 during the warm start: the step finishes, a checkpoint is written, the run
    /// stops; a resume continues the warm start and then RL, and ends with the weights of
    /// the uninterrupted run (deterministic mode).
    func testPreemptionDuringWarmStartResumesToTheUninterruptedWeights() throws {
        let s = try tinySettings(["warmstart.steps=6", "steps=3"])
        _ = try runInProcess(s, dir + "/straight")
        let stopped = try runLoop(s, dir + "/stopped") { phases in
            phases.map { $0.phase == .warmstart ? PreemptAt($0, step: 2) : $0 }
        }
        XCTAssertTrue(stopped.text.contains("stopping after step 3 on request"), stopped.text)
        XCTAssertEqual(checkpointSteps(dir + "/stopped"), [3])
        Preemption.flag = 0
        let resumed = try runInProcess(s, dir + "/stopped", resume: "auto")
        XCTAssertTrue(resumed.text.contains("resumed at step 3 (policy version 3, warmstart step 3 of 6)"), resumed.text)
        XCTAssertEqual(try finalWeights(dir + "/stopped"), try finalWeights(dir + "/straight"))
        let steps = try String(contentsOfFile: dir + "/stopped/metrics.jsonl", encoding: .utf8).split(separator: "\n")
            .compactMap { try JSON.parse(String($0))["step"]?.intValue }
        XCTAssertEqual(steps, Array(1...9))
    }

    /// A warm start that diverges (SGD at a huge learning rate, no clipping) stops with an
    /// error after the fifth non-finite update in a row instead of ending "successfully".
    func testDivergingWarmStartStopsAfterRepeatedNonFiniteUpdates() throws {
        let s = try tinySettings(["optimizer.name=sgd", "warmstart.lr=10", "optimizer.grad_clip=0", "warmstart.steps=200", "steps=2"])
        XCTAssertThrowsError(try runInProcess(s, dir + "/diverge")) { error in
            guard case let RunError.nonFinite(_, inARow) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(inARow, TrainerLoop.nonFiniteLimit)
        }
        let lines = try String(contentsOfFile: dir + "/diverge/metrics.jsonl", encoding: .utf8).split(separator: "\n").map { try JSON.parse(String($0)) }
        XCTAssertLessThan(lines.count, 200, "the run stopped early")
        XCTAssertEqual(lines.suffix(5).map { $0["skipped"] }, Array(repeating: .bool(true), count: 5))
        XCTAssertEqual(lines.last?["phase"], .string("warmstart"))
    }

    /// Trainers agree on stopping: when another trainer asks, this one stops after the same
    /// step, with a checkpoint of it.
    func testAStopAskedByAnotherTrainerEndsTheRunAfterThatStep() throws {
        let s = try tinySettings(["warmstart.steps=0", "steps=6"])
        let console = try runLoop(s, dir + "/peer", collective: PeerAsksToStop(stopCall: 4))
        XCTAssertTrue(console.text.contains("stopping after step 4 on request"), console.text)
        XCTAssertEqual(checkpointSteps(dir + "/peer"), [4])
    }

    /// Offline checkpoints follow checkpoint.every and always include the final step.
    func testOfflineCheckpointCadence() throws {
        var lines = ""
        for g in 0..<6 {
            for k in 0..<2 {
                lines += #"{"id": "g\#(g)-\#(k)", "group": "p\#(g)", "tokens": [256, \#(g), \#(k + 1), 7], "prompt_len": 2, "reward": \#(k)}"# + "\n"
            }
        }
        try lines.write(toFile: dir + "/t.jsonl", atomically: true, encoding: .utf8)
        let s = try tinySettings(["data.trajectories=\(dir)/t.jsonl", "steps=5", "batch.trajectories=4", "checkpoint.every=2",
                                  "advantage.entropy_scaling=false"])
        _ = try runInProcess(s, dir + "/offline")
        XCTAssertEqual(checkpointSteps(dir + "/offline"), [2, 4, 5])
    }

    /// Every step's staleness histogram has max_staleness + 1 bins.
    func testStalenessHistogramHasOneBinPerAllowedLag() throws {
        let s = try tinySettings(["warmstart.steps=2", "steps=2", "max_staleness=3"])
        _ = try runInProcess(s, dir + "/hist")
        let lines = try String(contentsOfFile: dir + "/hist/metrics.jsonl", encoding: .utf8).split(separator: "\n").map { try JSON.parse(String($0)) }
        XCTAssertEqual(lines.count, 4)
        for l in lines { XCTAssertEqual(l["staleness_hist"]?.arrayValue?.count, 4) }
    }
}

final class BatchAssemblyTests: XCTestCase {
    func group(_ id: String, version: Int, size: Int = 2) -> [Trajectory] {
        (0..<size).map { Trajectory(id: "\(id)-\($0)", group: id, tokens: [1, 2, 3], lossMask: [0, 1, 1], reward: 1, policyVersion: version) }
    }

    /// Groups are taken oldest first; a group more than max_staleness versions behind is
    /// dropped and its trajectories counted; fresh groups wait for the next step.
    func testBufferDropsStaleGroupsAndKeepsOrder() {
        var b = RolloutBuffer(capacity: 10)
        for (id, v) in [("a", 1), ("b", 5), ("c", 6), ("d", 7)] { b.append(group(id, version: v)) }
        let taken = b.take(2, version: 7, maxStaleness: 2)
        XCTAssertEqual(taken.groups.map { $0[0].group }, ["b", "c"])
        XCTAssertEqual(taken.dropped.trajectories, 2, "group a (lag 6) is dropped")
        XCTAssertEqual(taken.dropped.tokens, 2 * 3)
        XCTAssertEqual(b.groups.map { $0.trajectories[0].group }, ["d"])
        XCTAssertEqual(b.counts.receivedTokens, 4 * 2 * 3)
    }

    /// Oldest first is by policy version, then source rank, then that rank's sequence
    /// number, whatever the arrival order.
    func testOldestFirstOrdersByVersionRankAndSequence() {
        var b = RolloutBuffer(capacity: 10)
        b.append(group("v5-r3-s0", version: 5), source: 3, sequence: 0)
        b.append(group("v4-r3-s1", version: 4), source: 3, sequence: 1)
        b.append(group("v4-r2-s7", version: 4), source: 2, sequence: 7)
        b.append(group("v4-r3-s0", version: 4), source: 3, sequence: 0)
        let taken = b.take(4, version: 5, maxStaleness: 4)
        XCTAssertEqual(taken.groups.map { $0[0].group }, ["v4-r2-s7", "v4-r3-s0", "v4-r3-s1", "v5-r3-s0"])
    }

    /// A trainer's offer of its buffer round-trips through its bytes; a garbled one is an
    /// error naming the rank.
    func testBatchOffersRoundTrip() throws {
        let offer = AsynchronousRollouts.Offer(interrupted: true, keys: [(3, 5, 1), (4, 2, 0)])
        let back = try AsynchronousRollouts.Offer(offer.bytes, rank: 1)
        XCTAssertTrue(back.interrupted)
        XCTAssertEqual(back.keys.map { [$0.version, $0.source, $0.sequence] }, [[3, 5, 1], [4, 2, 0]])
        XCTAssertThrowsError(try AsynchronousRollouts.Offer(Array(offer.bytes.dropLast(8)), rank: 1)) {
            XCTAssertTrue("\($0)".contains("rank 1"), "\($0)")
        }
    }

    /// Weights travel along a binary tree of node leaders rooted at trainer 0: one leader
    /// per node with rollout ranks (its lowest rollout rank), at most two children each, so
    /// trainer 0 sends at most two copies whatever the number of rollout ranks and nodes.
    func testWeightTreeHasOneLeaderPerNodeAndBoundedFanOut() {
        // 4 nodes of 4 ranks; 2 trainers (ranks 0, 1) on node 0.
        let nodeOf = (0..<16).map { $0 / 4 }
        let tree = WeightTree(nodeOf: nodeOf, rollouts: Array(2..<16))
        XCTAssertEqual(tree.leaders, [0, 4, 8, 12])
        XCTAssertEqual(tree.children(of: 0), [4, 8])
        XCTAssertEqual(tree.children(of: 4), [12])
        XCTAssertEqual(tree.parent(of: 12), 4)
        XCTAssertNil(tree.parent(of: 0))
        XCTAssertFalse(tree.isLeader(5), "rank 5 reads its node's shared memory")
        // One node: trainer 0 alone sends nothing; its node's ranks read its shared memory.
        let one = WeightTree(nodeOf: [0, 0, 0, 0], rollouts: [1, 2, 3])
        XCTAssertEqual(one.leaders, [0])
        XCTAssertEqual(one.children(of: 0), [])
        // Many nodes: the root's fan-out stays two.
        let many = WeightTree(nodeOf: (0..<512).map { $0 / 2 }, rollouts: Array(1..<512))
        XCTAssertEqual(many.leaders.count, 256)
        XCTAssertLessThanOrEqual(many.leaders.map { many.children(of: $0).count }.max() ?? 0, 2)
    }

    /// A full buffer takes no more groups.
    func testBufferIsBounded() {
        var b = RolloutBuffer(capacity: 2)
        b.append(group("a", version: 0)); b.append(group("b", version: 0))
        XCTAssertTrue(b.isFull)
        _ = b.take(1, version: 0, maxStaleness: 0)
        XCTAssertFalse(b.isFull)
    }

    /// Synchronous batches hold the step's groups in index order whatever the number of
    /// trainers: group g comes from trainer g mod T.
    func testSynchronousBatchReassemblesGroupsInOrder() throws {
        let s = try tinySettings(["batch.prompts=5", "rollout.group_size=2", "rollout.max_new_tokens=4"])
        let model = try s.initialModel()
        let env = try EnvironmentSource(s, vocabSize: model.config.vocabSize)
        final class TwoTrainers: Collective {
            let peer: [UInt8]
            init(peer: [UInt8]) { self.peer = peer }
            var rank: Int { 0 }
            var size: Int { 2 }
            func allreduceSum(_ buffer: FloatBuffer) throws {}
            func allreduceSum(_ values: inout [Double]) throws {}
            func allreduceMaxMin(_ value: Double) throws -> (max: Double, min: Double) { (value, value) }
            func broadcast(bytes: [UInt8], root: Int) throws -> [UInt8] { bytes }
            func allgather(bytes: [UInt8]) throws -> [[UInt8]] { [bytes, peer] }
        }
        let peerGroups = try GroupGenerator(model: model, settings: s, environments: env).generate(step: 3, indices: [1, 3], version: 0)
        let source = SynchronousRollouts(generator: GroupGenerator(model: model, settings: s, environments: env),
                                         collective: TwoTrainers(peer: GroupsMessage.encode(peerGroups, trailer: EpisodeCounts())), settings: s)
        let batch = try source.collect(step: 3, version: 0)
        XCTAssertEqual(batch.groups.map { g in batch.trajectories[g[0]].group }, (0..<5).map { "s3-g\($0)" })
        XCTAssertEqual(batch.groups.flatMap { $0 }, Array(0..<batch.trajectories.count))
    }

    /// Admission shares: the rollout ranks' shares sum to (steps + steps ahead + 1) x
    /// prompts less the trainers' own groups (never below 0), and differ by at most one.
    func testAdmissionSharesSumToTheBound() {
        for ranks in 1...5 {
            for prompts in [1, 3, 8] {
                for ahead in 0...2 {
                    for steps in 0...4 {
                        for trainerGroups in [0, 2, 1000] {
                            let shares = (0..<ranks).map {
                                RolloutRankLoop.admitted(publications: steps, stepsAhead: ahead, prompts: prompts, trainerGroups: trainerGroups,
                                                         rank: $0, of: ranks)
                            }
                            XCTAssertEqual(shares.reduce(0, +), max(0, (steps + ahead + 1) * prompts - trainerGroups))
                            XCTAssertLessThanOrEqual(shares.max()! - shares.min()!, 1)
                        }
                    }
                }
            }
        }
    }

    /// Counts in a message's trailer come back by name; a trailer of another shape is an error.
    func testTrailersRoundTripAndAreChecked() throws {
        let note = GroupNote(episodes: EpisodeCounts(truncated: 3, abandoned: 1), sequence: 7, throttledMicros: 12345, backpressureMicros: 678)
        let message = GroupsMessage.encode([group("a", version: 2)], trailer: note)
        let back = try GroupsMessage.decode(message, trailer: GroupNote.self)
        XCTAssertEqual(back.trailer.episodes, note.episodes)
        XCTAssertEqual(back.trailer.sequence, 7)
        XCTAssertEqual(back.trailer.throttledMicros, 12345)
        XCTAssertEqual(back.trailer.backpressureMicros, 678)
        XCTAssertEqual(back.groups.map { $0.map(\.id) }, [["a-0", "a-1"]])
        XCTAssertThrowsError(try GroupsMessage.decode(message, trailer: BatchCounts.self))
        var counts = BatchCounts()
        counts.droppedStaleTokens = 5
        counts.throttledMicros = 9
        counts.backpressureMicros = 4
        let sum = counts + counts
        XCTAssertEqual(sum.backpressureMicros, 8)
        XCTAssertEqual(sum.droppedStaleTokens, 10)
        XCTAssertEqual(sum.throttledMicros, 18)
        XCTAssertEqual(BatchCounts(words: sum.words).words, sum.words)
    }
}

final class ResumableGenerationTests: XCTestCase {
    /// A trainer's own decoding parked between decode steps, while other decodings use the
    /// same model meanwhile, gives exactly the groups of an uninterrupted decoding; resumed
    /// with new weights, the tokens after the change record the new version and the
    /// trajectories keep the version they started with.
    func testParkedDecodingContinuesExactlyAndRecordsNewWeights() throws {
        let s = try tinySettings(["rollout.group_size=4", "rollout.max_new_tokens=12", "rollout.temperature=1.0"])
        let model = try s.initialModel()
        let env = try EnvironmentSource(s, vocabSize: model.config.vocabSize)
        let names = ["a", "b"]
        let plain = try GroupGenerator(model: model, settings: s, environments: env).generate(step: 5, indices: [0, 1], version: 0, names: names)
        XCTAssertEqual(plain.count, 2)

        let other = GroupGenerator(model: model, settings: s, environments: env)
        let parked = ResumableGeneration(generator: GroupGenerator(model: model, settings: s, environments: env), thread: GenerationThread(), step: 5, indices: [0, 1],
                                         version: 0, names: names, sequence: 0)
        var pauses = 0
        var result: [[Trajectory]]?
        while result == nil {
            switch parked.advance(.proceed) {
            case .paused:
                pauses += 1
                // Meanwhile the model serves another decoding (as evaluation or training would).
                _ = try other.generate(step: 9 + pauses, indices: [3], version: 0)
            case .finished(let r):
                result = try r.get()
            }
        }
        XCTAssertGreaterThanOrEqual(pauses, 2)
        XCTAssertTrue(parked.isFinished)
        let got = try XCTUnwrap(result)
        XCTAssertEqual(got.map { $0.map(\.tokens) }, plain.map { $0.map(\.tokens) })
        // Log-probs are NaN on prompt positions: compared with NaN as a number.
        func logprobs(_ groups: [[Trajectory]]) -> [[[Float]]] { groups.map { $0.map { ($0.logprobs ?? []).map { $0.isNaN ? -1e30 : $0 } } } }
        XCTAssertEqual(logprobs(got), logprobs(plain))

        // New weights after the first decode step.
        let saved = Array(UnsafeBufferPointer(start: model.params.pointer, count: model.params.count))
        defer { model.params.pointer.update(from: saved, count: saved.count) }
        let resumed = ResumableGeneration(generator: GroupGenerator(model: model, settings: s, environments: env), thread: GenerationThread(), step: 5, indices: [0, 1],
                                          version: 0, names: names, sequence: 0)
        guard case .paused = resumed.advance(.proceed) else { return XCTFail("finished after one decode step") }
        for k in 0..<model.params.count { model.params.pointer[k] *= 1.5 }
        var next = DecodeAction.newWeights(version: 1)
        var changed: [[Trajectory]]?
        while changed == nil {
            switch resumed.advance(next) {
            case .paused: next = .proceed
            case .finished(let r): changed = try r.get()
            }
        }
        XCTAssertEqual(resumed.version, 1)
        let trajectories = try XCTUnwrap(changed).flatMap { $0 }
        XCTAssertTrue(trajectories.allSatisfy { $0.policyVersion == 0 }, "a trajectory counts from its oldest token")
        let versions = trajectories.flatMap { t in (t.versions ?? []).filter { $0 >= 0 } }
        XCTAssertTrue(versions.contains(0) && versions.contains(1), "tokens of both versions: \(Set(versions))")
        // The first two answer tokens of every sample were drawn by the old weights.
        for t in trajectories {
            let answer = (t.versions ?? []).filter { $0 >= 0 }
            XCTAssertEqual(Array(answer.prefix(2)), [0, 0].prefix(answer.count).map { $0 })
            XCTAssertEqual(answer, answer.sorted(), "versions never go back")
        }
    }

    /// Giving a parked decoding up ends its thread and counts its episodes.
    func testAbandonedDecodingCountsItsEpisodes() throws {
        let s = try tinySettings(["rollout.group_size=4", "rollout.max_new_tokens=12"])
        let model = try s.initialModel()
        let env = try EnvironmentSource(s, vocabSize: model.config.vocabSize)
        let g = ResumableGeneration(generator: GroupGenerator(model: model, settings: s, environments: env), thread: GenerationThread(), step: 1, indices: [0, 1, 2],
                                    version: 0, names: ["x", "y", "z"], sequence: 0)
        guard case .paused = g.advance(.proceed) else { return XCTFail("finished after one decode step") }
        XCTAssertEqual(g.abandon(), 12)
        XCTAssertTrue(g.isFinished)
    }
}
