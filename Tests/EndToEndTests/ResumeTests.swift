import Foundation
import XCTest
import KATSupport
import KATTestSupport
import KATModel
import KATTrie

/// A tiny online run with checkpoints every 2 RL steps (at steps 5, 7, 9: 3 warm-start steps first).
let resumable = tinyRun + ["--set", "steps=6", "--set", "checkpoint.every=2", "--set", "checkpoint.keep=5", "--set", "deterministic=true"]

func params(_ ckpt: String) throws -> [Float] { try ModelDirectory.load(ckpt).params.array }

final class ResumeTests: TemporaryDirectoryTestCase {

    /// Deterministic synchronous runs: N steps straight and a run killed with SIGKILL on a
    /// chosen rank in the middle of a step, then resumed with --resume auto, end with
    /// bit-identical weights, for several kill points and ranks.
    func testResumeAfterSIGKILLGivesTheUninterruptedWeights() throws {
        let straight = dir + "/straight"
        XCTAssertEqual(try mpirun(2, [katDist(), "train", "--run-dir", straight, "--set", "ranks.trainers=2"] + resumable, timeout: 180).code, 0)
        let expected = try params(straight + "/checkpoints/step-000009")
        for (kill, np) in [("6:1", 2), ("8:0", 2), ("9:1", 2), ("7", 1)] {
            let run = dir + "/killed-\(kill.replacingOccurrences(of: ":", with: "-"))-\(np)"
            let t = ["--set", "ranks.trainers=\(np)"]
            let killed = try mpirun(np, [katDist(), "train", "--run-dir", run] + t + resumable, timeout: 180, env: ["KAT_FAULT_KILL_AT": kill])
            XCTAssertNotEqual(killed.code, 0, "the kill at \(kill) happened")
            let resumed = try mpirun(np, [katDist(), "train", "--run-dir", run, "--resume", "auto"] + t + resumable, timeout: 180)
            XCTAssertEqual(resumed.code, 0, resumed.output)
            XCTAssertTrue(resumed.output.contains("resume: continuing from step-"), resumed.output)
            if np == 2 { XCTAssertEqual(try params(run + "/checkpoints/step-000009"), expected, "kill at \(kill)") }
            let steps = try metricsLines(run).map { $0["step"]!.intValue! }
            XCTAssertEqual(steps, Array(1...9), "metrics keep the lines up to the checkpoint and continue from there")
        }
    }

    /// A damaged newest checkpoint (truncated weights, or one flipped byte in any file) is
    /// skipped with a message and the previous one is used.
    func testCorruptCheckpointFallsBackToThePreviousOne() throws {
        let base = dir + "/base"
        XCTAssertEqual(try mpirun(1, [katDist(), "train", "--run-dir", base] + resumable, timeout: 180).code, 0)
        let files = ["model.safetensors", "optimizer.safetensors", "config.json", "state.json", "MANIFEST"]
        var cases: [(String, (String) throws -> Void)] = [("truncated model.safetensors", { p in
            let f = p + "/model.safetensors"
            let d = try Data(contentsOf: URL(fileURLWithPath: f))
            try d.prefix(d.count / 2).write(to: URL(fileURLWithPath: f))
        })]
        for name in files {
            cases.append(("flipped byte in \(name)", { p in
                let f = p + "/" + name
                var d = try Data(contentsOf: URL(fileURLWithPath: f))
                d[d.count / 3] ^= 0x01
                try d.write(to: URL(fileURLWithPath: f))
            }))
        }
        for (k, (what, damage)) in cases.enumerated() {
            let run = dir + "/c\(k)"
            try FileManager.default.copyItem(atPath: base, toPath: run)
            try damage(run + "/checkpoints/step-000009")
            let r = try mpirun(1, [katDist(), "train", "--run-dir", run, "--resume", "auto"] + resumable, timeout: 180)
            XCTAssertEqual(r.code, 0, "\(what): \(r.output)")
            XCTAssertTrue(r.output.contains("resume: skipping step-000009"), "\(what): \(r.output)")
            XCTAssertTrue(r.output.contains("resume: continuing from step-000007"), "\(what): \(r.output)")
            XCTAssertEqual(try params(run + "/checkpoints/step-000009"), try params(base + "/checkpoints/step-000009"), what)
        }
    }

    /// Resume a 2-trainer run with 1 trainer and with 3: training continues from the saved weights.
    func testElasticResume() throws {
        let run = dir + "/two"
        XCTAssertNotEqual(try mpirun(2, [katDist(), "train", "--run-dir", run, "--set", "ranks.trainers=2"] + resumable, timeout: 180,
                                     env: ["KAT_FAULT_KILL_AT": "8:0"]).code, 0)
        let saved = try params(run + "/checkpoints/step-000007")
        for t in [1, 3] {
            let copy = dir + "/as\(t)"
            try FileManager.default.copyItem(atPath: run, toPath: copy)
            let r = try mpirun(t, [katDist(), "train", "--run-dir", copy, "--resume", "auto", "--set", "ranks.trainers=\(t)"] + resumable, timeout: 180)
            XCTAssertEqual(r.code, 0, r.output)
            XCTAssertTrue(r.output.contains("resumed at step 7"), r.output)
            XCTAssertEqual(try params(copy + "/checkpoints/step-000007"), saved)
            XCTAssertEqual(try metricsLines(copy).last?["step"], .int(9))
            XCTAssertNotEqual(try params(copy + "/checkpoints/step-000009"), saved, "training went on")
        }
    }

    /// SIGUSR1 to mpirun: the trainers finish the step, write a checkpoint, and every rank exits 0.
    func testSIGUSR1CheckpointsAndExitsCleanly() throws {
        let run = dir + "/preempt"
        var sent = false
        let r = try mpirun(2, [katDist(), "train", "--run-dir", run, "--set", "ranks.trainers=1"] + tinyRun + ["--set", "steps=500", "--set", "eval.every=0"],
                           timeout: 180, whileRunning: { p in
            guard !sent, let text = try? String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8),
                  text.contains("\"phase\":\"rl\"") else { return }
            kill(p.processIdentifier, SIGUSR1)
            sent = true
        })
        XCTAssertTrue(sent)
        XCTAssertEqual(r.code, 0, r.output)
        // The stop comes after a step, or while trainer 0 waits for rollouts.
        XCTAssertTrue(r.output.contains("stopping after step") || r.output.contains("stopping at step"), r.output)
        let last = try metricsLines(run).last!["step"]!.intValue!
        XCTAssertLessThan(last, 503, "stopped early")
        let latest = try String(contentsOfFile: run + "/checkpoints/latest", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertEqual(latest, RunDirectoryName.of(last))
        XCTAssertLessThan(r.seconds, 120)
    }

    /// A NaN gradient skips the step: weights unchanged, `skipped` in the metrics.
    func testNonFiniteGradientSkipsTheStep() throws {
        let run = dir + "/nan"
        let r = try mpirun(1, [katDist(), "train", "--run-dir", run] + tinyRun + ["--set", "checkpoint.every=1", "--set", "checkpoint.keep=10"],
                           timeout: 180, env: ["KAT_FAULT_NAN_AT": "5"])
        XCTAssertEqual(r.code, 0, r.output)
        let m = try metricsLines(run)
        XCTAssertEqual(m[4]["skipped"], .bool(true))
        XCTAssertEqual(m[4]["policy_version"], m[3]["policy_version"])
        XCTAssertEqual(m[5]["skipped"], .bool(false))
        XCTAssertEqual(try params(run + "/checkpoints/step-000005"), try params(run + "/checkpoints/step-000004"))
    }

    /// Killing any rank ends the whole job within seconds, with a message, never a hang.
    /// Without multiplexing the trainer needs the rollout rank's groups (16 in 4 batches),
    /// so the rollout rank surely reaches its second batch, where it is killed.
    func testADeadRankEndsTheJob() throws {
        for kill in ["2:1", "6:0"] {
            let r = try mpirun(2, [katDist(), "train", "--run-dir", dir + "/dead\(kill.prefix(1))", "--set", "ranks.trainers=1",
                                   "--set", "ranks.multiplex=false"] + tinyRun,
                               timeout: 120, env: ["KAT_FAULT_KILL_AT": kill])
            XCTAssertNotEqual(r.code, 0)
            XCTAssertTrue(r.output.contains("exited on signal 9"), r.output)
            XCTAssertLessThan(r.seconds, 60)
        }
    }

    /// Asynchronous: kill trainer 0 mid-run and resume. On the committed timeline no id is
    /// trained twice, every buffered trajectory of the checkpoint is trained after the
    /// resume, and the staleness bound holds throughout.
    func testAsynchronousResumeLosesNothing() throws {
        let run = dir + "/async"
        let args = [katDist(), "train", "--run-dir", run, "--set", "ranks.trainers=1", "--set", "log.trained_ids=true", "--set", "batch.prompts=2",
                    "--set", "max_staleness=200", "--set", "loss.ppo_epochs=12"] + tinyRun + ["--set", "steps=12", "--set", "checkpoint.every=3", "--set", "checkpoint.keep=10"]
        XCTAssertNotEqual(try mpirun(3, args, timeout: 180, env: ["KAT_FAULT_KILL_AT": "11:0"]).code, 0)
        let ckpt = run + "/checkpoints/step-000009"
        var buffer = Array(try Data(contentsOf: URL(fileURLWithPath: ckpt + "/buffer.bin")))
        let n = Int(buffer[buffer.count - 4]) | Int(buffer[buffer.count - 3]) << 8
        buffer.removeLast(4 + 4 * n)
        let buffered = Set(try TrajectoryCodec.decode(buffer).map(\.id))
        XCTAssertFalse(buffered.isEmpty, "the checkpoint holds buffered rollouts")
        let r = try mpirun(3, args + ["--resume", "auto"], timeout: 180)
        XCTAssertEqual(r.code, 0, r.output)
        let lines = try String(contentsOfFile: run + "/trained_ids.jsonl", encoding: .utf8).split(separator: "\n").map { try JSON.parse(String($0)) }
        XCTAssertEqual(lines.map { $0["step"]!.intValue! }, Array(1...15), "one line per step (warm start and RL) on the committed timeline")
        var seen = Set<String>()
        for line in lines { for id in line["ids"]!.arrayValue! { XCTAssertTrue(seen.insert(id.stringValue!).inserted, "\(id) trained twice") } }
        let after = Set(lines.filter { $0["step"]!.intValue! > 9 }.flatMap { $0["ids"]!.arrayValue!.map { $0.stringValue! } })
        XCTAssertTrue(buffered.isSubset(of: after), "buffered ids not trained after resume: \(buffered.subtracting(after))")
        // 12 updates a step (ppo_epochs): the bound of 200 versions is what keeps the buffered groups trainable.
        for m in try metricsLines(run) where m["phase"] == .string("rl") { XCTAssertLessThanOrEqual(m["staleness_max"]!.intValue!, 200) }
    }
}

enum RunDirectoryName {
    static func of(_ step: Int) -> String { "step-" + String(repeating: "0", count: max(0, 6 - String(step).count)) + String(step) }
}

final class TerminationTests: XCTestCase {
    /// SIGTERM to mpirun ends the job at once; no checkpoint is damaged, and a resume
    /// continues from the last complete one to the end.
    func testSIGTERMLeavesResumableCheckpoints() throws {
        let run = NSTemporaryDirectory() + "sigterm-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: run) }
        let args = [katDist(), "train", "--run-dir", run, "--set", "ranks.trainers=1"] + tinyRun
            + ["--set", "steps=400", "--set", "eval.every=0", "--set", "checkpoint.every=1", "--set", "checkpoint.keep=3"]
        var sent = false
        let r = try mpirun(2, args, timeout: 180, whileRunning: { p in
            guard !sent, let text = try? String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8),
                  text.components(separatedBy: "\"phase\":\"rl\"").count > 20 else { return }
            kill(p.processIdentifier, SIGTERM)
            sent = true
        })
        XCTAssertTrue(sent)
        XCTAssertNotEqual(r.code, 0, "terminated")
        let resumed = try mpirun(2, args + ["--resume", "auto"], timeout: 300)
        XCTAssertEqual(resumed.code, 0, resumed.output)
        XCTAssertTrue(resumed.output.contains("resume: continuing from step-"), resumed.output)
        XCTAssertEqual(try metricsLines(run).map { $0["step"]!.intValue! }, Array(1...403))
    }
}
