import Foundation
import XCTest
import KATSupport
import KATTestSupport

/// Answers long enough that an episode spans several training steps: no warm start (the
/// initial model rarely says the stop token) and 96 new tokens per answer, so generation is
/// the slow side and new weights arrive while episodes are unfinished.
let longAnswers = ["--set", "model.n_embd=32", "--set", "model.n_layer=1", "--set", "model.n_head=2", "--set", "warmstart.steps=0",
                   "--set", "eval.every=0", "--set", "batch.prompts=2", "--set", "rollout.group_size=4",
                   "--set", "rollout.max_new_tokens=96", "--set", "ranks.multiplex=false"]

/// Rollout ranks sleep 1 ms after each decode step, so that a 96-token answer takes longer
/// than a training step of this model (about 30-70 ms here) and weights are published while
/// episodes are unfinished whatever the machine's load.
let slowDecoding = "1000"

/// Lines of a JSON Lines file.
func jsonLines(_ path: String) throws -> [JSON] {
    try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map { try JSON.parse(String($0)) }
}

final class PartialRolloutTests: TemporaryDirectoryTestCase {
    /// 1 trainer and 3 rollout ranks on one node: trainer 0 sends at most one model copy per
    /// update (here none: the rollout ranks read its node's shared memory), and every rollout
    /// rank samples a new publication within two of its decode steps: of the decode steps
    /// it finishes after the publication was written, at most the first used older weights.
    /// Measured from the KAT_TRACE_WEIGHTS trace (trainer 0's publication times, each rollout
    /// rank's decode steps with the publication they used, on the node's monotonic clock).
    func testEveryRolloutRankSamplesANewVersionWithinTwoDecodeSteps() throws {
        let run = dir + "/run", trace = dir + "/trace"
        try FileManager.default.createDirectory(atPath: trace, withIntermediateDirectories: true)
        let out = try mpirun(4, [katDist(), "train", "--run-dir", run, "--set", "ranks.trainers=1", "--set", "steps=12"] + longAnswers,
                             timeout: 240, env: ["KAT_TRACE_WEIGHTS": trace, "KAT_FAULT_DECODE_DELAY_US": slowDecoding])
        XCTAssertEqual(out.code, 0, out.output)
        let rl = try metricsLines(run).filter { $0["phase"] == .string("rl") }
        XCTAssertEqual(rl.count, 12, out.output)
        let oneCopy = 64 + 4 * (try parameterCount(run + "/checkpoints/step-000012/model.safetensors"))
        for line in rl {
            let bytes = try XCTUnwrap(line["weight_bytes_root"]?.intValue)
            XCTAssertLessThanOrEqual(bytes, oneCopy, "step \(line["step"]!): at most one model copy leaves trainer 0")
        }
        let publications = try jsonLines(trace + "/rank-0.jsonl").compactMap { l in
            l["publish"]?.intValue.flatMap { p in l["t"]?.doubleValue.map { (number: p, time: $0) } }
        }
        XCTAssertGreaterThanOrEqual(publications.count, 12, "one publication per step")
        for rank in 1...3 {
            let lines = try jsonLines(trace + "/rank-\(rank).jsonl")
            let steps = lines.compactMap { l in l["step"]?.intValue.flatMap { p in l["t"]?.doubleValue.map { (used: p, time: $0) } } }
            let midEpisode = lines.filter { $0["install"] != nil && $0["mid"] == .bool(true) }.count
            XCTAssertGreaterThan(midEpisode, 0, "rank \(rank) took new weights mid-episode")
            var worst = 0, covered = 0
            for p in publications {
                let after = steps.filter { $0.time > p.time }
                let old = after.filter { $0.used < p.number }.count
                worst = max(worst, old)
                if after.count > old { covered += 1 }
                XCTAssertLessThanOrEqual(old, 1, "rank \(rank): \(old) decode steps after publication \(p.number) used older weights")
            }
            // The claim is about ranks that were decoding: most publications found this one at it.
            XCTAssertGreaterThanOrEqual(covered, publications.count / 2, "rank \(rank) decoded after most publications")
        }
    }

    /// An asynchronous run with partial rollouts (1 trainer, 2 rollout ranks, episodes
    /// spanning steps) trains trajectories whose tokens come from several versions, within
    /// the staleness bound on every token, and its staleness metrics count from each
    /// trajectory's oldest token; the episodes unfinished when the rollout ranks stop are
    /// discarded and counted.
    func testMixedVersionsTrainWithinTheStalenessBoundOnEveryToken() throws {
        let run = dir + "/run"
        let maxStale = 2
        let out = try mpirun(3, [katDist(), "train", "--run-dir", run, "--set", "ranks.trainers=1", "--set", "log.trained_ids=true",
                                 "--set", "max_staleness=\(maxStale)", "--set", "steps=12"] + longAnswers,
                             timeout: 240, env: ["KAT_FAULT_DECODE_DELAY_US": slowDecoding])
        XCTAssertEqual(out.code, 0, out.output)
        let rl = try metricsLines(run).filter { $0["phase"] == .string("rl") }
        XCTAssertEqual(rl.count, 12)
        let mixed = rl.compactMap { $0["mixed_version_trajectories"]?.intValue }.reduce(0, +)
        XCTAssertGreaterThan(mixed, 0, "some trained trajectories took new weights mid-episode")
        let lines = try jsonLines(run + "/trained_ids.jsonl")
        XCTAssertEqual(lines.count, 12)
        var mixedLogged = 0
        for (line, metrics) in zip(lines, rl) {
            let (lags, mixedHere) = try tokenLags(line, maxStale: maxStale)
            mixedLogged += mixedHere
            XCTAssertEqual(metrics["staleness_max"]?.intValue, lags.max(), "step \(line["step"]!): staleness counts from the oldest token")
        }
        XCTAssertEqual(mixedLogged, mixed, "mixed_version_trajectories counts the trajectories with several token versions")
        // The rollout ranks were decoding when told to stop: their unfinished episodes are counted.
        XCTAssertTrue(out.output.contains("unfinished episodes were discarded"), out.output)
    }

    /// Killed and resumed, an asynchronous run with partial rollouts trains every buffered
    /// trajectory of the checkpoint once after it (or drops it and counts it as stale), none
    /// twice, every token within the staleness bound. Training is the slow side here (12
    /// updates per step), so the rollout ranks are ahead and the checkpoint holds groups.
    func testKilledPartialRunTrainsEveryBufferedTrajectoryOnce() throws {
        let run = dir + "/run"
        let maxStale = 36
        let args = [katDist(), "train", "--run-dir", run, "--set", "ranks.trainers=1", "--set", "log.trained_ids=true",
                    "--set", "max_staleness=\(maxStale)", "--set", "loss.ppo_epochs=12", "--set", "steps=12", "--set", "checkpoint.every=3",
                    "--set", "checkpoint.keep=10"] + longAnswers
        XCTAssertNotEqual(try mpirun(3, args, timeout: 240, env: ["KAT_FAULT_KILL_AT": "11:0"]).code, 0, "killed at step 11")
        let buffered = Set(try state(run + "/checkpoints/step-000009")["buffered_ids"]?.arrayValue?.compactMap(\.stringValue) ?? [])
        XCTAssertFalse(buffered.isEmpty, "the checkpoint holds buffered rollouts")
        let r = try mpirun(3, args + ["--resume", "auto"], timeout: 240)
        XCTAssertEqual(r.code, 0, r.output)
        let rl = try metricsLines(run).filter { $0["phase"] == .string("rl") }
        XCTAssertEqual(rl.map { $0["step"]?.intValue ?? 0 }, Array(1...12))
        var seen = Set<String>()
        let lines = try jsonLines(run + "/trained_ids.jsonl")
        for line in lines {
            for id in line["ids"]?.arrayValue?.compactMap(\.stringValue) ?? [] { XCTAssertTrue(seen.insert(id).inserted, "\(id) trained twice") }
            _ = try tokenLags(line, maxStale: maxStale)
        }
        let after = Set(lines.filter { ($0["step"]?.intValue ?? 0) > 9 }.flatMap { $0["ids"]?.arrayValue?.compactMap(\.stringValue) ?? [] })
        let dropped = rl.filter { ($0["step"]?.intValue ?? 0) > 9 }.compactMap { $0["dropped_stale"]?.intValue }.reduce(0, +)
        let lost = buffered.subtracting(after)
        XCTAssertLessThanOrEqual(lost.count, dropped, "every buffered id is trained after the checkpoint or counted as dropped")
        if dropped == 0 { XCTAssertTrue(lost.isEmpty, "\(lost) neither trained nor dropped") }
    }

    /// Admission control counts the groups a resumed run took back from its checkpoint:
    /// rollout ranks leave room for them, so that no group made after the resume is dropped
    /// as stale; only restored ones may be, when they were old already. (Counting only the
    /// groups started after the resume let the rollout ranks fill the buffer again on top
    /// of the restored ones, and a whole batch of new groups went stale.) One rollout rank:
    /// with several, a slow rank's group admitted in time can still be overtaken by a
    /// faster rank's newer ones and go stale, whatever admission control counts.
    func testAResumedRunLeavesRoomForItsRestoredGroups() throws {
        let run = dir + "/run"
        let env = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Launch/envs/reverse_env.py").standardized.path
        let args = [katDist(), "train", "--run-dir", run, "--set", "model.n_embd=64", "--set", "model.n_layer=2", "--set", "model.n_head=2",
                    "--set", "warmstart.steps=0", "--set", "eval.every=0", "--set", "steps=12", "--set", "batch.prompts=2",
                    "--set", "rollout.group_size=8", "--set", "rollout.max_new_tokens=8", "--set", "rollout.turns=3",
                    "--set", "data.env_command=python3 \(env)", "--set", "loss.off_policy=decoupled", "--set", "optimizer.lr=0.01",
                    "--set", "checkpoint.every=1", "--set", "ranks.multiplex=false", "--set", "loss.ppo_epochs=4",
                    "--set", "log.trained_ids=true", "--set", "checkpoint.keep=20"]
        XCTAssertNotEqual(try mpirun(2, args, timeout: 240, env: ["KAT_FAULT_KILL_AT": "6:0"]).code, 0, "killed at step 6")
        let r = try mpirun(2, args + ["--resume", "auto"], timeout: 240)
        XCTAssertEqual(r.code, 0, r.output)
        let rl = try metricsLines(run).filter { $0["phase"] == .string("rl") }
        XCTAssertEqual(rl.last?["step"]?.intValue, 12)
        // The checkpoint the run resumed from, and its buffered trajectories.
        let from = try XCTUnwrap(r.output.range(of: #"resumed at step (\d+)"#, options: .regularExpression).map {
            Int(r.output[$0].split(separator: " ").last ?? "") }, r.output)
        let step = try XCTUnwrap(from)
        let buffered = Set(try state(run + "/checkpoints/" + String(format: "step-%06d", step))["buffered_ids"]?.arrayValue?
            .compactMap(\.stringValue) ?? [])
        let trainedAfter = Set(try jsonLines(run + "/trained_ids.jsonl").filter { ($0["step"]?.intValue ?? 0) > step }
            .flatMap { $0["ids"]?.arrayValue?.compactMap(\.stringValue) ?? [] })
        // Only restored trajectories may go stale (they may be old already); none made after.
        let dropped = rl.filter { ($0["step"]?.intValue ?? 0) > step }.compactMap { $0["dropped_stale"]?.intValue }.reduce(0, +)
        XCTAssertEqual(dropped, buffered.subtracting(trainedAfter).count,
                       "dropped as stale after step \(step): \(rl.map { $0["dropped_stale"]?.intValue ?? -1 }), restored \(buffered.count)")
    }

    /// The lag of each trajectory of a trained_ids.jsonl line (the version before the step
    /// minus its oldest token's version), checked against the bound on every token, and how
    /// many trajectories hold several versions.
    func tokenLags(_ line: JSON, maxStale: Int) throws -> (lags: [Int], mixed: Int) {
        let ids = line["ids"]?.arrayValue?.compactMap(\.stringValue) ?? []
        let before = try XCTUnwrap(line["version_before"]?.intValue)
        let oldest = line["oldest_versions"]?.arrayValue ?? [], newest = line["newest_versions"]?.arrayValue ?? []
        XCTAssertEqual(oldest.count, ids.count)
        XCTAssertEqual(newest.count, ids.count)
        var lags: [Int] = [], mixed = 0
        for (k, id) in ids.enumerated() where k < oldest.count && k < newest.count {
            let lo = try XCTUnwrap(oldest[k].intValue, "\(id) has per-token versions"), hi = try XCTUnwrap(newest[k].intValue)
            XCTAssertLessThanOrEqual(before - lo, maxStale, "step \(line["step"]!): \(id) has a token \(before - lo) versions old")
            XCTAssertLessThanOrEqual(hi, before, "no token is newer than the weights being trained")
            lags.append(before - lo)
            if hi > lo { mixed += 1 }
        }
        return (lags, mixed)
    }

    /// Elements of every tensor of a safetensors file (from its JSON header).
    func parameterCount(_ path: String) throws -> Int {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let n = data.prefix(8).enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        let header = try JSON.parse(String(decoding: data.dropFirst(8).prefix(n), as: UTF8.self))
        var total = 0
        for (name, t) in header.objectMembers ?? [] where name != "__metadata__" {
            total += (t["shape"]?.arrayValue ?? []).compactMap(\.intValue).reduce(1, *)
        }
        return total
    }
}
