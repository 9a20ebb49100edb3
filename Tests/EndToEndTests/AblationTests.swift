import Foundation
import XCTest
import KATSupport
import KATTestSupport

/// Runs kat-bench with arguments; returns the exit code and standard output.
func runKatBench(_ args: [String], timeout: TimeInterval = 600) throws -> (code: Int32, out: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: builtExecutable("kat-bench"))
    p.arguments = args
    let outPath = NSTemporaryDirectory() + "bench-\(UUID().uuidString).out"
    FileManager.default.createFile(atPath: outPath, contents: nil)
    defer { try? FileManager.default.removeItem(atPath: outPath) }
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: outPath))
    p.standardOutput = handle
    p.standardError = handle
    try p.run()
    let deadline = Date().addingTimeInterval(timeout)
    while p.isRunning {
        if Date() > deadline { p.terminate(); throw NSError(domain: "kat-bench timed out: \(args)", code: 1) }
        usleep(20_000)
    }
    return (p.terminationStatus, String(decoding: FileManager.default.contents(atPath: outPath) ?? Data(), as: UTF8.self))
}

final class AblationTests: TemporaryDirectoryTestCase {
    /// Writes a finished run whose held-out success is `w` after the warm start (step 10),
    /// then `mid` at RL step 5 and `end` at RL step 10.
    func fakeRun(_ path: String, w: Double, mid: Double, end: Double, passK: Double, entropy: Double) throws {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        var lines = [#"{"step": 10, "phase": "warmstart", "eval_success": \#(w), "eval_pass_at_k": 0}"#]
        for s in 11...20 {
            var l = #"{"step": \#(s), "phase": "rl", "entropy_mean": \#(entropy)"#
            if s == 15 { l += #", "eval_success": \#(mid), "eval_pass_at_k": 0, "eval_pass_at_1": 0"# }
            if s == 20 { l += #", "eval_success": \#(end), "eval_pass_at_k": \#(passK), "eval_pass_at_1": 0.1"# }
            lines.append(l + "}")
        }
        try (lines.joined(separator: "\n") + "\n").write(toFile: path + "/metrics.jsonl", atomically: true, encoding: .utf8)
        FileManager.default.createFile(atPath: path + "/DONE", contents: Data())
    }

    /// The table gives, per arm, the mean and the t interval (n - 1 degrees of freedom) of
    /// each run's final success and success area, and the paired differences from the first
    /// arm with theirs; the curves file draws a band per arm.
    func testTheTableGivesTheTIntervalsOfTheRuns() throws {
        let plain: [(Double, Double, Double)] = [(0.1, 0.2, 0.2), (0.1, 0.25, 0.3), (0.0, 0.3, 0.4)]
        let higher: [(Double, Double, Double)] = [(0.1, 0.3, 0.5), (0.1, 0.3, 0.4), (0.0, 0.5, 0.7)]
        for (seed, (a, b)) in zip(plain, higher).enumerated() {
            try fakeRun(dir + "/code/plain/seed-\(seed + 1)", w: a.0, mid: a.1, end: a.2, passK: 0.5, entropy: 0.1)
            try fakeRun(dir + "/code/clip-higher/seed-\(seed + 1)", w: b.0, mid: b.1, end: b.2, passK: 0.6, entropy: 0.2)
        }
        let r = try runKatBench(["ablation", "--report-only", "--task", "code", "--arms", "plain,clip-higher", "--seeds", "3",
                                 "--out", dir, "--kat-dist", builtExecutable("kat-dist")])
        XCTAssertEqual(r.code, 0, r.out)
        let summary = try String(contentsOfFile: dir + "/code/summary.md", encoding: .utf8)
        // t_{0.975, 2} = 4.302653 (any table of the t distribution).
        func interval(_ xs: [Double]) -> String {
            let m = xs.reduce(0, +) / Double(xs.count)
            let sd = (xs.reduce(0) { $0 + ($1 - m) * ($1 - m) } / Double(xs.count - 1)).squareRoot()
            return String(format: "%.3f ± %.3f", m, 4.302653 * sd / Double(xs.count).squareRoot())
        }
        // Success area: trapezoids over RL steps 0, 5, 10, divided by 10.
        func area(_ r: (Double, Double, Double)) -> Double { (5 * (r.0 + r.1) / 2 + 5 * (r.1 + r.2) / 2) / 10 }
        let plainRow = "| plain | 3 | \(interval(plain.map(\.2))) | 0.100 ± 0.000 | 0.500 ± 0.000 | \(interval(plain.map(area))) | 0.1000 ± 0.0000 |"
        XCTAssertTrue(summary.contains(plainRow), "\(plainRow)\n\(summary)")
        let diffs = zip(higher, plain).map { $0.2 - $1.2 }, areaDiffs = zip(higher, plain).map { area($0) - area($1) }
        XCTAssertTrue(summary.contains("| clip-higher | \(interval(diffs)) | "), "\(interval(diffs))\n\(summary)")
        XCTAssertTrue(summary.contains(interval(areaDiffs)), summary)
        let svg = try String(contentsOfFile: dir + "/code/success.svg", encoding: .utf8)
        XCTAssertEqual(svg.components(separatedBy: "<polygon").count - 1, 2, "one band per arm")
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/code/pass-at-k.svg"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/code/entropy.svg"))
    }

    /// Arms x seeds run in parallel; the arms of a seed fork from one warm start (their
    /// warm-start metrics are the same lines), and a second invocation runs nothing again.
    func testArmsShareAWarmStartAndFinishedRunsAreSkipped() throws {
        let args = ["ablation", "--task", "explore", "--arms", "plain,clip-higher", "--seeds", "2", "--jobs", "2", "--out", dir,
                    "--kat-dist", builtExecutable("kat-dist"), "--rl-set", "batch.minibatches=2"]
            + ["model.n_embd=32", "model.n_layer=1", "model.n_head=2", "warmstart.steps=4", "warmstart.batch=8", "steps=2",
               "batch.prompts=2", "rollout.group_size=2", "eval.every=1", "eval.prompts=4"].flatMap { ["--set", $0] }
        let first = try runKatBench(args)
        XCTAssertEqual(first.code, 0, first.out)
        XCTAssertTrue(first.out.contains("6 runs, 0 finished before, 6 to run"), first.out)
        for seed in 1...2 {
            let lines = try ["plain", "clip-higher"].map { arm -> [String] in
                let text = try String(contentsOfFile: dir + "/explore/\(arm)/seed-\(seed)/metrics.jsonl", encoding: .utf8)
                return text.split(separator: "\n").map(String.init)
            }
            XCTAssertEqual(lines[0].count, 6, "4 warm-start steps and 2 RL steps")
            XCTAssertEqual(lines[0].prefix(4), lines[1].prefix(4), "seed \(seed): one warm start")
            XCTAssertNotEqual(lines[0].last, lines[1].last)
            let config = try String(contentsOfFile: dir + "/explore/clip-higher/seed-\(seed)/config.json", encoding: .utf8)
            XCTAssertTrue(config.contains("\"eps_high\": 0.28") || config.contains("\"eps_high\":0.28"), config)
        }
        let second = try runKatBench(args)
        XCTAssertEqual(second.code, 0, second.out)
        XCTAssertTrue(second.out.contains("6 runs, 6 finished before, 0 to run"), second.out)
        let summary = try String(contentsOfFile: dir + "/summary.md", encoding: .utf8)
        XCTAssertTrue(summary.contains("| plain | 2 |") && summary.contains("| clip-higher | 2 |"), summary)
        XCTAssertTrue(summary.contains("by kind of prompt") && FileManager.default.fileExists(atPath: dir + "/explore/plain/seed-1/kinds.json"),
                      "the explore task's runs are broken down by kind")
    }

    /// Bad options are refused with a message and exit code 2 (not a crash).
    func testBadOptionsAreRefused() throws {
        for (args, fragment) in [(["--arms", "nope"], "unknown arm nope"), (["--seeds", "1"], "--seeds must be at least 2"),
                                 (["--frobnicate"], "unknown option --frobnicate"),
                                 (["--arm", "../../elsewhere:loss.eps_high=0.3"], "arm name '../../elsewhere' must be"),
                                 (["--arm", "warm-start:loss.eps_high=0.3"], "not warm-start"),
                                 (["--arms", "plain,plain"], "arm plain is given twice"), (["--task", "bogus"], "unknown task 'bogus'"),
                                 (["--seeds", "abc"], "--seeds needs a whole number, got 'abc'")] {
            let r = try runKatBench(["ablation", "--out", dir] + args)
            XCTAssertEqual(r.code, 2, r.out)
            XCTAssertTrue(r.out.contains(fragment), r.out)
        }
    }

    /// A finished run made with other settings (its DONE file holds its arguments) is not
    /// taken for this command's: the command refuses before running anything.
    func testFinishedRunsWithOtherSettingsAreRefused() throws {
        let warm = dir + "/explore/warm-start/seed-1"
        try FileManager.default.createDirectory(atPath: warm, withIntermediateDirectories: true)
        try "train\n--set\nsteps=30\n".write(toFile: warm + "/DONE", atomically: true, encoding: .utf8)
        let r = try runKatBench(["ablation", "--out", dir, "--seeds", "2", "--arms", "plain"], timeout: 60)
        XCTAssertEqual(r.code, 2, r.out)
        XCTAssertTrue(r.out.contains("was run with other settings"), r.out)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/explore/plain"), "nothing ran")
    }

    /// Every benchmark refuses an option it does not take (a misspelt option must not run
    /// with the default silently), and a missing or extra argument, before doing any work.
    func testEveryBenchmarkRefusesUnknownOptions() throws {
        for (args, fragment) in [(["model", "--seq", "3"], "'model' has no option --seq"),
                                 (["trie", "--memory", "--bogus"], "'trie' has no option --bogus"),
                                 (["sampler", "--prompts", "3"], "'sampler' has no option --prompts"),
                                 (["curve", dir + "/run"], "'curve' takes 2 to 3 argument(s)"),
                                 (["init-model"], "'init-model' takes 1 argument(s)"),
                                 (["report", "--repeat", "2", "a", "b"], "'report' has no option --repeat (it takes none)")] {
            let r = try runKatBench(args, timeout: 60)
            XCTAssertEqual(r.code, 2, "\(args): \(r.out)")
            XCTAssertTrue(r.out.contains(fragment), "\(args): \(r.out)")
        }
    }
}
