import Foundation
import XCTest
import KATSupport
import KATModel
import KATTestSupport

/// The built `kat-dist` executable.
func katDistBinary() -> String { builtExecutable("kat-dist") }

struct RunResult { var code: Int32; var stdout: String; var stderr: String }

/// Runs kat-dist with a time limit; a hang fails the test instead of blocking CI.
func runKatDist(_ args: [String], timeout: TimeInterval = 60) throws -> RunResult {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: katDistBinary())
    p.arguments = args
    let base = NSTemporaryDirectory() + "run-\(UUID().uuidString)"
    FileManager.default.createFile(atPath: base + ".out", contents: nil)
    FileManager.default.createFile(atPath: base + ".err", contents: nil)
    defer { try? FileManager.default.removeItem(atPath: base + ".out"); try? FileManager.default.removeItem(atPath: base + ".err") }
    p.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: base + ".out"))
    p.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: base + ".err"))
    try p.run()
    let deadline = Date().addingTimeInterval(timeout)
    while p.isRunning {
        if Date() > deadline {
            p.terminate()
            throw NSError(domain: "kat-dist timed out after \(timeout) s: \(args)", code: 1)
        }
        usleep(10_000)
    }
    p.waitUntilExit()
    let outData = FileManager.default.contents(atPath: base + ".out") ?? Data()
    let errData = FileManager.default.contents(atPath: base + ".err") ?? Data()
    return RunResult(code: p.terminationStatus, stdout: String(decoding: outData, as: UTF8.self), stderr: String(decoding: errData, as: UTF8.self))
}

/// Each command must fail with exit code 2 and one line on stderr containing its fragment.
func assertUsageErrors(_ cases: [([String], String)], file: StaticString = #filePath, line: UInt = #line) throws {
    for (args, fragment) in cases {
        let r = try runKatDist(args)
        XCTAssertEqual(r.code, 2, "\(args): \(r.stderr)", file: file, line: line)
        XCTAssertTrue(r.stderr.contains(fragment), "\(args): \(r.stderr)", file: file, line: line)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, "\(args): \(r.stderr)", file: file, line: line)
    }
}

let fixtureModel = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent("../KATModelTests/Fixtures/hf-gpt2").standardized.path

final class CLITests: TemporaryDirectoryTestCase {

    func testHelpAndVersion() throws {
        let h = try runKatDist(["--help"])
        XCTAssertEqual(h.code, 0)
        XCTAssertTrue(h.stdout.contains("kat-dist logprobs"))
        let v = try runKatDist(["--version"])
        XCTAssertEqual(v.code, 0)
        XCTAssertTrue(v.stdout.contains("OpenBLAS kernel"), v.stdout)
        XCTAssertTrue(v.stdout.contains("sgemm check passed"), v.stdout)
        let lh = try runKatDist(["logprobs", "--help"])
        XCTAssertEqual(lh.code, 0)
        XCTAssertTrue(lh.stdout.contains("--temperature"))
    }

    /// Usage errors: one line on stderr, exit code 2, no trace.
    func testUsageErrorsAreOneLineAndExitTwo() throws {
        let cases: [([String], String)] = [
            (["frobnicate"], "unknown command 'frobnicate'"),
            (["logprobs", "--bogus"], "unknown option --bogus"),
            (["logprobs", "--model"], "option --model needs a value"),
            (["logprobs", "--model", fixtureModel], "missing required option --input"),
            (["logprobs", "--model", fixtureModel, "--input", "/nonexistent.jsonl"], "no such file"),
            (["logprobs", "--model", "/nonexistent", "--input", "/etc/hostname"], "no such directory"),
            (["logprobs", "--model", fixtureModel, "--input", "/etc/hostname", "--temperature", "abc"], "--temperature must be a number"),
            (["logprobs", "--model", fixtureModel, "--input", "/etc/hostname", "--temperature", "0"], "--temperature must be a number"),
            (["logprobs", "stray"], "unexpected argument 'stray'"),
        ]
        try assertUsageErrors(cases)
    }

    /// Warm-start keys given to a run that has no warm start (an external environment, or
    /// offline data) are named at start as unused, with the reason; the default is silent.
    func testUnusedWarmStartKeysAreNamed() throws {
        let small = ["--set", "model.n_embd=32", "--set", "model.n_layer=1", "--set", "model.n_head=2", "--set", "eval.every=0",
                     "--set", "steps=1", "--progress", "off"]
        let example = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Launch/envs/reverse_env.py").standardized.path
        let env = ["--set", "data.env_command=python3 " + example]
        let named = try runKatDist(["train", "--run-dir", dir + "/a"] + env + ["--set", "warmstart.steps=5", "--set", "warmstart.lr=0.01"] + small,
                                   timeout: 120)
        XCTAssertEqual(named.code, 0, named.stderr)
        XCTAssertTrue(named.stdout.contains("warmstart.lr, warmstart.steps are not used: an external environment"), named.stdout)
        let quiet = try runKatDist(["train", "--run-dir", dir + "/b"] + env + small, timeout: 120)
        XCTAssertEqual(quiet.code, 0, quiet.stderr)
        XCTAssertFalse(quiet.stdout.contains("no warm start"), quiet.stdout)
    }

    /// logprobs writes, per line, exactly what the model computes, and leaves an existing
    /// output file untouched when the input is bad.
    func testLogprobsMatchesTheModelAndNeverDamagesOutput() throws {
        let input = dir + "/in.jsonl", output = dir + "/out.jsonl"
        let lines = [[256, 72, 105, 33, 257], [256, 1], [7]]
        try (lines.enumerated().map { "{\"id\": \"t\($0.offset)\", \"tokens\": \($0.element), \"reward\": 1.0}" }.joined(separator: "\n") + "\n")
            .write(toFile: input, atomically: true, encoding: .utf8)
        let r = try runKatDist(["logprobs", "--model", fixtureModel, "--input", input, "--output", output, "--temperature", "0.9"])
        XCTAssertEqual(r.code, 0, r.stderr)
        let model = try ModelDirectory.load(fixtureModel)
        let got = try String(contentsOfFile: output, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(got.count, 3)
        // The command packs all three lines into one forward pass; so does this check.
        let expect = model.forward(try PackedBatch(sequences: lines, vocabSize: 260, maxPositions: 64), temperature: 0.9)
        var row = 0
        for (k, seq) in lines.enumerated() {
            defer { row += seq.count }
            let obj = try JSON.parse(String(got[k]))
            XCTAssertEqual(obj["id"], .string("t\(k)"))
            let lp = obj["logprobs"]!.arrayValue!, en = obj["entropies"]!.arrayValue!
            XCTAssertEqual(lp.count, seq.count)
            XCTAssertTrue(lp[0].isNull && en[0].isNull)
            for t in 1..<seq.count {
                // Printed as the shortest decimal that reads back to the same Float.
                XCTAssertEqual(Float(lp[t].doubleValue!), expect.logprobs[row + t])
                XCTAssertEqual(Float(en[t].doubleValue!), expect.entropies[row + t])
            }
        }
        // A bad line: the error names file, line and field; the old output is unchanged.
        let before = try Data(contentsOf: URL(fileURLWithPath: output))
        try "{\"id\": \"a\", \"tokens\": [1, 2]}\n{\"id\": \"b\", \"tokens\": [1, \"x\"]}\n".write(toFile: input, atomically: true, encoding: .utf8)
        let bad = try runKatDist(["logprobs", "--model", fixtureModel, "--input", input, "--output", output])
        XCTAssertEqual(bad.code, 1)
        XCTAssertTrue(bad.stderr.contains("in.jsonl:2: field tokens"), bad.stderr)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: output)), before)
        // An output path that cannot be written is refused before any scoring, for
        // logprobs and tokenize alike.
        for command in ["logprobs", "tokenize"] {
            for (path, says) in [(dir + "/missing/out.jsonl", "no such directory"), (dir, "is a directory")] {
                let r = try runKatDist([command, "--model", fixtureModel, "--input", input, "--output", path])
                XCTAssertEqual(r.code, 2, r.stderr)
                XCTAssertTrue(r.stderr.contains("--output \(path): \(says)"), r.stderr)
                XCTAssertFalse(r.stderr.contains("scoring"), "refused only after scoring: \(r.stderr)")
            }
        }
    }
}
