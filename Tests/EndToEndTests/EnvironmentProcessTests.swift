import Foundation
import XCTest
import KATSupport
import KATTestSupport
import KATDist

/// Pids of processes whose command line contains `text`.
func processes(matching text: String) -> [pid_t] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap { name -> pid_t? in
        guard let p = pid_t(name), let data = FileManager.default.contents(atPath: "/proc/\(name)/cmdline") else { return nil }
        let cmd = String(decoding: data.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
        return cmd.contains(text) ? p : nil
    }
}

final class EnvironmentProcessTests: TemporaryDirectoryTestCase {
    let example = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Launch/envs/reverse_env.py").standardized.path
    let envRun = ["train", "--set", "model.n_embd=32", "--set", "model.n_layer=1", "--set", "model.n_head=2",
                  "--set", "batch.prompts=2", "--set", "rollout.group_size=4", "--set", "eval.every=0", "--set", "steps=2"]

    /// A unique text to find an environment's processes by, and a wait for them to end.
    func tag() -> String { "7\(Int.random(in: 100_000...999_999)).25" }

    func assertNoneLeft(_ tag: String, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        let deadline = Date().addingTimeInterval(3)
        while !processes(matching: tag).isEmpty, Date() < deadline { usleep(50_000) }
        let left = processes(matching: tag)
        XCTAssertEqual(left, [], "\(what): environment processes outlived kat-dist", file: file, line: line)
        for p in left { kill(p, SIGKILL) }
    }

    /// An environment that hangs (and started other processes, one of which left its
    /// process group) times out, ends the run with the message, and leaves no process
    /// behind: in one process and under mpirun with a rollout rank.
    func testAHangingEnvironmentLeavesNoProcessBehind() throws {
        for np in [1, 2] {
            let t = tag()
            let env = "setsid sleep \(t) & sleep \(t) & read l; sleep \(t)"
            let args = envRun + ["--run-dir", dir + "/hang\(np)", "--set", "data.env_command=\(env)", "--set", "env.timeout_s=0.3"]
            let out: String
            if np == 1 {
                let r = try runKatDist(args, timeout: 60)
                XCTAssertNotEqual(r.code, 0)
                out = r.stdout + r.stderr
            } else {
                let r = try mpirun(2, [katDist()] + args + ["--set", "ranks.trainers=1"], timeout: 60)
                XCTAssertNotEqual(r.code, 0)
                out = r.output
            }
            XCTAssertTrue(out.contains("no reply within 0.3 s"), out)
            assertNoneLeft(t, "np=\(np)")
        }
    }

    /// kat-dist killed with SIGKILL: its environment processes, and what they started,
    /// end too.
    func testKilledTrainerLeavesNoEnvironmentProcess() throws {
        let t = tag()
        let env = "setsid sleep \(t) & exec python3 \(example)"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: katDistBinary())
        p.arguments = envRun.map { $0 == "steps=2" ? "steps=100000" : $0 } + ["--run-dir", dir + "/killed", "--set", "data.env_command=\(env)"]
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        let deadline = Date().addingTimeInterval(30)
        while processes(matching: t).isEmpty, Date() < deadline { usleep(50_000) }
        XCTAssertFalse(processes(matching: t).isEmpty, "the environment started")
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        assertNoneLeft(t, "after SIGKILL")
    }

    /// One environment process per worker lives for the whole run (episodes run in turn),
    /// not one per trajectory.
    func testOneProcessPerWorkerForTheRun() throws {
        for workers in [1, 2] {
            let starts = dir + "/starts\(workers)"
            let env = "echo started >> \(starts); exec python3 \(example)"
            let r = try runKatDist(envRun + ["--run-dir", dir + "/w\(workers)", "--set", "data.env_command=\(env)",
                                             "--set", "env.workers=\(workers)", "--set", "eval.every=1", "--set", "eval.prompts=4"], timeout: 120)
            XCTAssertEqual(r.code, 0, r.stderr)
            let count = try String(contentsOfFile: starts, encoding: .utf8).split(separator: "\n").count
            XCTAssertEqual(count, workers, "2 steps of 2 groups x 4 samples and 3 evaluations")
        }
    }
}

/// The pid of the kat-dist process of `run` that has world rank `rank` under mpirun.
func rankProcess(_ run: String, rank: Int) -> pid_t? {
    for p in processes(matching: run) {
        guard let env = FileManager.default.contents(atPath: "/proc/\(p)/environ") else { continue }
        let vars = env.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        if vars.contains("OMPI_COMM_WORLD_RANK=\(rank)"), let cmd = FileManager.default.contents(atPath: "/proc/\(p)/cmdline"),
           String(decoding: cmd, as: UTF8.self).contains("kat-dist") { return p }
    }
    return nil
}

final class WatchdogTests: TemporaryDirectoryTestCase {
    let base = ["train", "--set", "model.n_embd=32", "--set", "model.n_layer=1", "--set", "model.n_head=2", "--set", "warmstart.steps=2",
                "--set", "warmstart.batch=8", "--set", "batch.prompts=2", "--set", "rollout.group_size=4", "--set", "eval.every=0",
                "--set", "ranks.trainers=1", "--set", "watchdog_s=4", "--set", "buffer.max_groups=2"]

    /// A rollout rank stopped with SIGSTOP: the job ends, naming it, soon after the
    /// watchdog, instead of waiting silently.
    func testAStoppedRolloutRankIsNamedAndEndsTheJob() throws {
        let run = dir + "/stopped"
        var stopped: pid_t?
        let r = try mpirun(3, [katDist()] + base + ["--run-dir", run, "--set", "steps=100000"], timeout: 90, whileRunning: { _ in
            guard stopped == nil, FileManager.default.fileExists(atPath: run + "/checkpoints/step-000002"),
                  let p = rankProcess(run, rank: 2) else { return }
            kill(p, SIGSTOP)
            stopped = p
        })
        if let stopped { kill(stopped, SIGKILL) }
        XCTAssertNotNil(stopped)
        XCTAssertNotEqual(r.code, 0)
        XCTAssertTrue(r.output.contains("rank 2 sent nothing for 4 s (watchdog_s)"), r.output)
        XCTAssertLessThan(r.seconds, 60)
    }

    /// A pre-emption while a rollout rank is stopped: the trainer writes its checkpoint
    /// and the job ends within the watchdog, naming the silent rank; the checkpoint resumes.
    func testPreemptionWithASilentRankCheckpointsAndEnds() throws {
        let run = dir + "/preempt"
        var stopped: pid_t?, signalled: Date?
        let r = try mpirun(3, [katDist()] + base + ["--run-dir", run, "--set", "steps=100000", "--set", "watchdog_s=30"], timeout: 120,
                           whileRunning: { p in
            if stopped == nil, FileManager.default.fileExists(atPath: run + "/checkpoints/step-000002"),
               let q = rankProcess(run, rank: 1) {
                // Both rollout ranks stop: the trainer waits for data with nothing coming.
                kill(q, SIGSTOP)
                if let q2 = rankProcess(run, rank: 2) { kill(q2, SIGSTOP) }
                stopped = q
            } else if stopped != nil, signalled == nil {
                usleep(500_000)
                kill(p.processIdentifier, SIGUSR1)
                signalled = Date()
            }
        })
        for rank in [1, 2] { if let q = rankProcess(run, rank: rank) { kill(q, SIGKILL) } }
        XCTAssertNotNil(signalled)
        XCTAssertTrue(r.output.contains("stopping at step") || r.output.contains("stopping after step"), r.output)
        XCTAssertTrue(r.output.contains("sent nothing for 30 s"), r.output)
        if let t = signalled { XCTAssertLessThan(Date().timeIntervalSince(t), 45, "ends within the watchdog") }
        let latest = try String(contentsOfFile: run + "/checkpoints/latest", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertNil(Checkpoint.verify(run + "/checkpoints/" + latest))
    }
}
