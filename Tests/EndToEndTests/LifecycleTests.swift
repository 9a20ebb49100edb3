import Foundation
import XCTest
import KATSupport
import KATTestSupport
import KATModel
import KATDist

/// A short one-process online run on the code task.
let shortRun = ["train", "--set", "model.n_embd=32", "--set", "model.n_layer=1", "--set", "model.n_head=2",
                "--set", "warmstart.steps=3", "--set", "warmstart.batch=8", "--set", "batch.prompts=2",
                "--set", "rollout.group_size=4", "--set", "eval.every=0"]

func state(_ checkpoint: String) throws -> JSON {
    try JSON.parse(String(contentsOfFile: checkpoint + "/state.json", encoding: .utf8))
}

/// Runs a command and returns its exit status and output; the process is killed after
/// `timeout` seconds so that no test can hang.
func shell(_ command: String, timeout: TimeInterval = 60) throws -> (code: Int32, output: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/sh")
    p.arguments = ["-c", command]
    let out = Pipe()
    p.standardOutput = out
    p.standardError = out
    try p.run()
    let deadline = Date().addingTimeInterval(timeout)
    var data = Data()
    while p.isRunning {
        if Date() > deadline { p.terminate(); break }
        usleep(10_000)
    }
    data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}

final class LifecycleTests: TemporaryDirectoryTestCase {
    /// Resuming with `steps` at or below the RL steps the checkpoint has done says so,
    /// exits 0 and changes nothing: in one process and under mpirun.
    func testResumeWithNoStepsLeftChangesNothing() throws {
        let run = dir + "/run"
        XCTAssertEqual(try runKatDist(shortRun + ["--run-dir", run, "--set", "steps=6", "--set", "checkpoint.every=2"]).code, 0)
        let before = try Data(contentsOf: URL(fileURLWithPath: run + "/metrics.jsonl"))
        let listing = try FileManager.default.contentsOfDirectory(atPath: run + "/checkpoints").sorted()
        for steps in [3, 6] {
            let r = try runKatDist(shortRun + ["--run-dir", run, "--set", "steps=\(steps)", "--resume", "auto"])
            XCTAssertEqual(r.code, 0, r.stderr)
            XCTAssertTrue(r.stdout.contains("has done 6 rl steps and steps is \(steps): nothing left to train"), r.stdout)
            let m = try mpirun(2, [katDist()] + shortRun + ["--run-dir", run, "--set", "steps=\(steps)", "--set", "ranks.trainers=1", "--resume", "auto"])
            XCTAssertEqual(m.code, 0, m.output)
            XCTAssertTrue(m.output.contains("nothing left to train"), m.output)
        }
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: run + "/metrics.jsonl")), before)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: run + "/checkpoints").sorted(), listing)
    }

    /// A full disk while metrics and checkpoints are written: a message naming the file and
    /// the cause, a non-zero exit, metrics of whole lines, and a last checkpoint that verifies.
    func testDiskFullEndsWithAMessageAndLosesNothing() throws {
        let mnt = dir + "/small"
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        // About three checkpoints of this model, and 300 metrics lines, do not fit in 1 MB.
        guard try shell("mount -t tmpfs -o size=1m tmpfs '\(mnt)'").code == 0 else {
            throw XCTSkip("mounting a tmpfs needs root")
        }
        defer { _ = try? shell("umount '\(mnt)'") }
        let r = try runKatDist(shortRun + ["--run-dir", mnt + "/run", "--set", "steps=300", "--set", "checkpoint.every=1",
                                           "--set", "checkpoint.keep=2"], timeout: 300)
        XCTAssertNotEqual(r.code, 0)
        XCTAssertTrue(r.stderr.contains("No space left on device"), r.stderr)
        XCTAssertTrue(r.stderr.contains(mnt + "/run/"), "names the file: \(r.stderr)")
        XCTAssertFalse(r.stderr.contains("Fatal error"), r.stderr)
        let text = try String(contentsOfFile: mnt + "/run/metrics.jsonl", encoding: .utf8)
        XCTAssertTrue(text.isEmpty || text.hasSuffix("\n"))
        for line in text.split(separator: "\n") { XCTAssertNoThrow(try JSON.parse(String(line)), "a whole line: \(line)") }
        let latest = try String(contentsOfFile: mnt + "/run/checkpoints/latest", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertNil(Checkpoint.verify(mnt + "/run/checkpoints/" + latest), "the newest checkpoint verifies")
    }

    /// Two runs started at the same moment on one new run directory: one runs, the other
    /// is refused, and the directory holds one run's config and checkpoints.
    func testTwoWritersOfOneRunDirectory() throws {
        for round in 0..<3 {
            let run = dir + "/both\(round)"
            let cmd = { (seed: Int) in ([katDistBinary()] + shortRun + ["--run-dir", run, "--set", "steps=2", "--set", "seed=\(seed)"])
                .map { "'\($0)'" }.joined(separator: " ") }
            let r = try shell("(\(cmd(1)) > \(dir)/a.out 2>&1; echo $? > \(dir)/a.rc) & (\(cmd(2)) > \(dir)/b.out 2>&1; echo $? > \(dir)/b.rc) & wait",
                              timeout: 120)
            XCTAssertEqual(r.code, 0)
            let codes = try ["a", "b"].map { try String(contentsOfFile: "\(dir)/\($0).rc", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines) }
            XCTAssertEqual(codes.filter { $0 == "0" }.count, 1, "exactly one run succeeds: \(codes)")
            let loser = codes[0] == "0" ? "b" : "a"
            let message = try String(contentsOfFile: "\(dir)/\(loser).out", encoding: .utf8)
            XCTAssertTrue(message.contains("is in use by another kat-dist (pid") || message.contains("already holds"), message)
            let config = try JSON.parse(String(contentsOfFile: run + "/config.json", encoding: .utf8))
            let last = try state(run + "/checkpoints/step-000005")
            XCTAssertEqual(config["seed"], last["seed"], "config and checkpoints come from one run")
        }
    }

    /// Leftovers of a run killed while writing (a temporary checkpoint directory, a
    /// temporary file) are removed when the run resumes.
    func testLeftoversOfAKilledWriteAreRemoved() throws {
        let run = dir + "/run"
        XCTAssertEqual(try runKatDist(shortRun + ["--run-dir", run, "--set", "steps=2"]).code, 0)
        try FileManager.default.createDirectory(atPath: run + "/checkpoints/.tmp-step-000007-4242", withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: run + "/metrics.jsonl.tmp-4242", contents: Data("{".utf8))
        XCTAssertEqual(try runKatDist(shortRun + ["--run-dir", run, "--set", "steps=3", "--resume", "auto"]).code, 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: run + "/checkpoints/.tmp-step-000007-4242"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: run + "/metrics.jsonl.tmp-4242"))
    }

    /// Checkpoints are ordered by step number, not by name, whatever the number of digits.
    func testCheckpointsAreOrderedByStepNumber() throws {
        let run = dir + "/run"
        XCTAssertEqual(try runKatDist(shortRun + ["--run-dir", run, "--set", "steps=2"]).code, 0)
        // A checkpoint of step 1000000 sorts before step-000005 as text.
        try FileManager.default.copyItem(atPath: run + "/checkpoints/step-000005", toPath: run + "/checkpoints/step-1000000")
        let r = try runKatDist(shortRun + ["--run-dir", run, "--set", "steps=3", "--resume", "auto"])
        XCTAssertTrue(r.stdout.contains("resume: continuing from step-1000000"), r.stdout)
    }

    /// Changed settings are listed at a resume; config.json records the config as run now
    /// and the earlier one is kept beside it.
    func testChangedSettingsAreListedAndKept() throws {
        let run = dir + "/run"
        XCTAssertEqual(try runKatDist(shortRun + ["--run-dir", run, "--set", "steps=2"]).code, 0)
        let r = try runKatDist(shortRun + ["--run-dir", run, "--set", "steps=3", "--set", "optimizer.lr=0.001", "--set", "seed=7",
                                           "--resume", "auto"])
        XCTAssertEqual(r.code, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("setting changed since the checkpoint: optimizer.lr: 0.0005 -> 0.001"), r.stdout)
        XCTAssertTrue(r.stdout.contains("setting changed since the checkpoint: seed: 1 -> 7"), r.stdout)
        let now = try JSON.parse(String(contentsOfFile: run + "/config.json", encoding: .utf8))
        XCTAssertEqual(now["optimizer"]?["lr"]?.doubleValue, 0.001)
        let kept = try JSON.parse(String(contentsOfFile: run + "/config.before-step-000005.json", encoding: .utf8))
        XCTAssertEqual(kept["optimizer"]?["lr"]?.doubleValue, 0.0005)
    }

    /// `--resume OTHER/checkpoints/step-N --run-dir NEW` forks a run into a new directory
    /// (missing or empty), continuing from the checkpoint and recording its origin.
    func testForkIntoANewRunDirectory() throws {
        let run = dir + "/run"
        XCTAssertEqual(try runKatDist(shortRun + ["--run-dir", run, "--set", "steps=4", "--set", "checkpoint.every=2"]).code, 0)
        for k in 0..<2 {
            let fork = dir + "/fork\(k)"
            // The new directory may be missing or exist empty.
            if k == 1 { try FileManager.default.createDirectory(atPath: fork, withIntermediateDirectories: true) }
            let r = try runKatDist(shortRun + ["--run-dir", fork, "--set", "steps=4", "--resume", run + "/checkpoints/step-000005"])
            XCTAssertEqual(r.code, 0, r.stderr)
            XCTAssertTrue(FileManager.default.fileExists(atPath: fork + "/config.json"))
            let origin = try JSON.parse(String(contentsOfFile: fork + "/origin.json", encoding: .utf8))
            XCTAssertTrue(origin["forked_from"]?.stringValue?.hasSuffix("/run/checkpoints/step-000005") == true)
            XCTAssertEqual(try metrics(fork).compactMap { $0["step"]?.intValue }, Array(1...7))
        }
        XCTAssertEqual(Checkpoint.names(in: run + "/checkpoints"), ["step-000003", "step-000005", "step-000007"], "the source run is untouched")
    }

    /// Episode lengths that cannot fit the context are refused at start, naming the keys,
    /// before any warm-start step.
    func testEpisodeLongerThanTheContextIsRefusedAtStart() throws {
        let r = try runKatDist(shortRun + ["--run-dir", dir + "/x", "--set", "rollout.max_new_tokens=500"])
        XCTAssertEqual(r.code, 2)
        XCTAssertTrue(r.stderr.contains("rollout.max_new_tokens") && r.stderr.contains("model.n_positions"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/x"))
    }

    /// SIGUSR1 right after kat-dist prints its first line never kills it: the run stops
    /// after its step with a checkpoint.
    func testEarlySIGUSR1StopsCleanly() throws {
        let run = dir + "/early"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: katDistBinary())
        p.arguments = shortRun + ["--run-dir", run, "--set", "steps=50"]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        // Wait for the first line, then signal at once.
        var seen = Data()
        while !seen.contains(0x0A) { let d = out.fileHandleForReading.availableData; if d.isEmpty { break }; seen += d }
        kill(p.processIdentifier, SIGUSR1)
        let rest = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationReason, .exit)
        XCTAssertEqual(p.terminationStatus, 0)
        XCTAssertTrue(String(decoding: seen + rest, as: UTF8.self).contains("stopping after step 1 on request"))
        XCTAssertEqual(Checkpoint.names(in: run + "/checkpoints"), ["step-000001"])
    }
}

final class BufferedResumeTests: TemporaryDirectoryTestCase {
    /// An asynchronous run's checkpoint holds buffered rollouts. Resumed in any layout
    /// (the same, or one process with no rollout ranks, or two trainers), every buffered
    /// trajectory is trained once after the checkpoint or dropped and counted as stale,
    /// and no trajectory id is trained twice on the committed timeline.
    func testBufferedRolloutsAreTrainedOnceInAnyLayout() throws {
        let base = dir + "/async"
        let args = ["train", "--run-dir", base, "--set", "ranks.trainers=1", "--set", "log.trained_ids=true", "--set", "batch.prompts=2",
                    "--set", "max_staleness=200", "--set", "loss.ppo_epochs=12"] + Array(tinyRun.dropFirst(0))
                    + ["--set", "steps=12", "--set", "checkpoint.every=3", "--set", "checkpoint.keep=10"]
        XCTAssertNotEqual(try mpirun(3, [katDist()] + args, timeout: 180, env: ["KAT_FAULT_KILL_AT": "11:0"]).code, 0)
        let ckpt = base + "/checkpoints/step-000009"
        let buffered = Set(try state(ckpt)["buffered_ids"]?.arrayValue?.compactMap(\.stringValue) ?? [])
        XCTAssertFalse(buffered.isEmpty, "the checkpoint holds buffered rollouts")
        for (name, np, trainers) in [("one-process", 1, 1), ("two-trainers", 2, 2)] {
            let run = dir + "/" + name
            try FileManager.default.copyItem(atPath: base, toPath: run)
            let resumeArgs = args.map { $0 == base ? run : $0 }.map { $0 == "ranks.trainers=1" ? "ranks.trainers=\(trainers)" : $0 }
            let r = try mpirun(np, [katDist()] + resumeArgs + ["--resume", "auto"], timeout: 180)
            XCTAssertEqual(r.code, 0, r.output)
            XCTAssertTrue(r.output.contains("the checkpoint holds \(buffered.count) buffered trajectories"), r.output)
            let lines = try String(contentsOfFile: run + "/trained_ids.jsonl", encoding: .utf8).split(separator: "\n").map { try JSON.parse(String($0)) }
            var seen = Set<String>()
            for line in lines {
                for id in line["ids"]?.arrayValue ?? [] { XCTAssertTrue(seen.insert(id.stringValue ?? "").inserted, "\(name): \(id) trained twice") }
            }
            let after = Set(lines.filter { ($0["step"]?.intValue ?? 0) > 9 }.flatMap { $0["ids"]?.arrayValue?.compactMap(\.stringValue) ?? [] })
            let dropped = try metrics(run).filter { ($0["step"]?.intValue ?? 0) > 9 }.compactMap { $0["dropped_stale"]?.intValue }.reduce(0, +)
            XCTAssertEqual(buffered.subtracting(after).count, dropped, "\(name): every buffered id is trained or counted as dropped")
            XCTAssertEqual(dropped, 0, "max_staleness=200 keeps them all trainable")
        }
    }
}
