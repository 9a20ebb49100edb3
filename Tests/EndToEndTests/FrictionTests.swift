import Foundation
import XCTest
import KATSupport
import KATTestSupport

/// The small things a user meets first: help texts, key listings, model paths, errors
/// under mpirun.
final class FrictionTests: TemporaryDirectoryTestCase {

    /// Every subcommand's --help has an Options section that lists every option of its
    /// usage line, and every option it lists is one the command accepts.
    func testEveryCommandsHelpListsItsOptions() throws {
        for command in ["train", "eval", "generate", "logprobs"] {
            let h = try runKatDist([command, "--help"])
            XCTAssertEqual(h.code, 0, command)
            let parts = h.stdout.components(separatedBy: "Options:")
            XCTAssertEqual(parts.count, 2, "\(command) --help has one Options section")
            let usage = parts[0], options = parts.count > 1 ? parts[1] : ""
            let listed = Set(options.split(separator: "\n").compactMap { line -> String? in
                let t = line.trimmingCharacters(in: .whitespaces)
                return t.hasPrefix("--") ? String(t.prefix { !$0.isWhitespace }) : nil
            })
            let used = Set(usage.split(whereSeparator: { " []|\n".contains($0) }).filter { $0.hasPrefix("--") }.map(String.init))
            XCTAssertFalse(used.isEmpty, command)
            XCTAssertTrue(used.isSubset(of: listed), "\(command): \(used.subtracting(listed)) in the usage line but not under Options")
            for option in listed {
                let r = try runKatDist([command, option, "1", "--help"])
                XCTAssertFalse(r.stderr.contains("unknown option"), "\(command) \(option): \(r.stderr)")
            }
        }
    }

    /// `train --keys` gives every key its default, the values it takes (ranges, choices)
    /// and its meaning.
    func testKeysShowDefaultsAllowedValuesAndMeaning() throws {
        let r = try runKatDist(["train", "--keys"])
        XCTAssertEqual(r.code, 0)
        let rows = r.stdout.split(separator: "\n")
        func row(_ key: String) -> String { rows.first { $0.hasPrefix(key + " ") }.map(String.init) ?? "" }
        XCTAssertTrue(row("loss.mode").contains("token-mean | seq-mean-token-mean | seq-mean-token-sum"), row("loss.mode"))
        XCTAssertTrue(row("steps").contains("integer 1 to 100000000"), row("steps"))
        XCTAssertTrue(row("advantage.normalize_std").contains("true | false"), row("advantage.normalize_std"))
        XCTAssertTrue(row("optimizer.lr").contains("0.0005") && row("optimizer.lr").contains("number 0 to 10"), row("optimizer.lr"))
        XCTAssertEqual(rows.count, 1 + Set(rows.dropFirst().map { $0.prefix { $0 != " " } }).count, "one row per key")
    }

    /// RUN/checkpoints/latest and the run directory stand for the newest checkpoint
    /// wherever a model directory is expected: logprobs, generate, eval and model.init.
    func testLatestAndRunDirectoryStandForTheNewestCheckpoint() throws {
        try writeReversalData(dir + "/rev.jsonl", count: 32)
        let run = dir + "/run"
        let train = try runKatDist(["train", "--set", "data.trajectories=\(dir)/rev.jsonl", "--set", "advantage.estimator=given",
                                    "--set", "model.n_embd=32", "--set", "model.n_layer=1", "--set", "model.n_head=2",
                                    "--set", "steps=2", "--run-dir", run], timeout: 120)
        XCTAssertEqual(train.code, 0, train.stderr)
        let step = run + "/checkpoints/step-000002"
        try "{\"id\": \"a\", \"tokens\": [256, 97, 98, 258, 98, 97, 257]}\n".write(toFile: dir + "/in.jsonl", atomically: true, encoding: .utf8)
        var outputs: [String] = []
        for model in [step, run + "/checkpoints/latest", run] {
            let r = try runKatDist(["logprobs", "--model", model, "--input", dir + "/in.jsonl"])
            XCTAssertEqual(r.code, 0, "\(model): \(r.stderr)")
            outputs.append(r.stdout)
            let g = try runKatDist(["generate", "--model", model, "--prompt", "ab", "--temperature", "0", "--max-new-tokens", "4"])
            XCTAssertEqual(g.code, 0, "\(model): \(g.stderr)")
            let e = try runKatDist(["eval", "--model", model, "--prompts", "2", "--progress", "off"])
            XCTAssertEqual(e.code, 0, "\(model): \(e.stderr)")
        }
        XCTAssertEqual(Set(outputs).count, 1, "the same model every way")
        let check = try runKatDist(["train", "--check", "--set", "model.init=\(run)/checkpoints/latest", "--set", "model.n_embd=32"])
        XCTAssertEqual(check.code, 0, check.stderr)
        // A `latest` that names a missing checkpoint is an error naming both.
        try "step-000099\n".write(toFile: dir + "/latest", atomically: true, encoding: .utf8)
        let bad = try runKatDist(["logprobs", "--model", dir + "/latest", "--input", dir + "/in.jsonl"])
        XCTAssertEqual(bad.code, 1)
        XCTAssertTrue(bad.stderr.contains("names step-000099"), bad.stderr)
    }

    /// A config error under mpirun is printed once (by rank 0), with exit code 2, whether
    /// it is found before MPI starts (a bad value, a rank count that does not fit) or after
    /// (a file the ranks look for on their own machines).
    func testConfigErrorsUnderMpirunArePrintedOnce() throws {
        let cases: [([String], String)] = [
            (["--set", "steps=-1"], "key steps: must be in"),
            (["--set", "ranks.trainers=3"], "is more than the number of MPI ranks (2)"),
            (["--set", "ranks.trainers=2", "--set", "data.trajectories=\(dir)/none.jsonl"], "none.jsonl: no such file"),
        ]
        for (args, fragment) in cases {
            let r = try mpirun(2, [katDist(), "train", "--run-dir", dir + "/r"] + args, timeout: 60)
            XCTAssertEqual(r.code, 2, "\(args): \(r.output)")
            let lines = r.output.split(separator: "\n").filter { $0.hasPrefix("kat-dist") && $0.contains(fragment) }
            XCTAssertEqual(lines.count, 1, "\(args): \(r.output)")
        }
    }
}
