import Foundation
import XCTest
import KATSupport
import KATTestSupport

/// The repository's root, where Launch/ is.
let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../..").standardized.path

final class LaunchScriptTests: TemporaryDirectoryTestCase {
    /// Launch/slurm.sh under a stand-in Slurm (its environment, and `scontrol`/`sbatch`
    /// that record their arguments): SIGUSR1 to the batch shell ends the job with a
    /// checkpoint and exit 0 and requeues the job by its id; the requeued job resumes and
    /// finishes the run without requeueing again.
    func testSlurmScriptCheckpointsOnTheSignalAndRequeuesByJobID() throws {
        let bin = dir + "/bin", calls = dir + "/calls"
        try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
        for tool in ["scontrol", "sbatch"] {
            try "#!/bin/sh\necho \"\(tool) $*\" >> \(calls)\n".write(toFile: bin + "/" + tool, atomically: true, encoding: .utf8)
            chmod(bin + "/" + tool, 0o755)
        }
        let run = dir + "/run"
        var env = ProcessInfo.processInfo.environment
        env["PATH"] = bin + ":" + (env["PATH"] ?? "/usr/bin:/bin")
        env["SLURM_SUBMIT_DIR"] = repositoryRoot
        env["SLURM_JOB_ID"] = "4242"
        env["SLURM_CPUS_PER_TASK"] = "1"
        env["SLURM_NTASKS"] = "2"
        env["RUN"] = run
        env["KAT_DIST"] = katDist()
        env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
        let args = tinyRun + ["--set", "steps=400", "--set", "eval.every=0", "--set", "checkpoint.every=50"]

        func job(signalAfterStep: Int?) throws -> (code: Int32, log: String) {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/bin/bash")
            p.arguments = [repositoryRoot + "/Launch/slurm.sh"] + args
            p.environment = env
            let log = dir + "/job-\(UUID().uuidString).log"
            FileManager.default.createFile(atPath: log, contents: nil)
            let h = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
            p.standardOutput = h
            p.standardError = h
            try p.run()
            var signalled = false
            let deadline = Date().addingTimeInterval(240)
            while p.isRunning, Date() < deadline {
                if let k = signalAfterStep, !signalled, ((try? metricsLines(run).count) ?? 0) >= k {
                    kill(p.processIdentifier, SIGUSR1)
                    signalled = true
                }
                usleep(50_000)
            }
            if p.isRunning { p.terminate(); XCTFail("the job did not end in 240 s") }
            p.waitUntilExit()
            return (p.terminationStatus, try String(contentsOfFile: log, encoding: .utf8))
        }

        let first = try job(signalAfterStep: 10)
        XCTAssertEqual(first.code, 0, first.log)
        XCTAssertTrue(first.log.contains("stopping after step"), first.log)
        let stopped = try metricsLines(run).count
        XCTAssertLessThan(stopped, 403, "the job stopped before the end of the run")
        XCTAssertEqual(try String(contentsOfFile: calls, encoding: .utf8), "scontrol requeue 4242\n")

        let second = try job(signalAfterStep: nil)
        XCTAssertEqual(second.code, 0, second.log)
        XCTAssertTrue(second.log.contains("resume: continuing from step-"), second.log)
        XCTAssertEqual(try metricsLines(run).last?["step"], .int(403), "3 warm-start and 400 RL steps")
        XCTAssertEqual(try String(contentsOfFile: calls, encoding: .utf8), "scontrol requeue 4242\n", "no requeue once the run is done")
    }
}
