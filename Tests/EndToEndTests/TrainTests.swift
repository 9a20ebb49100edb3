import Foundation
import XCTest
import KATSupport
import KATTestSupport
import KATModel

/// Supervised-style data (advantage 1, no log-probs): reverse five letters after SEP.
func writeReversalData(_ path: String, count: Int = 512, seed: UInt64 = 1) throws {
    var rng = SplitMix64(seed: seed)
    var lines: [String] = []
    for i in 0..<count {
        let w = (0..<5).map { _ in 97 + Int(rng.next() % 6) }
        let toks = [256] + w + [258] + w.reversed() + [257]
        lines.append("{\"id\": \"r\(i)\", \"group\": \"g\(i / 4)\", \"tokens\": \(toks), \"prompt_len\": 7, \"advantage\": 1.0}")
    }
    try (lines.joined(separator: "\n") + "\n").write(toFile: path, atomically: true, encoding: .utf8)
}

func metrics(_ runDir: String) throws -> [JSON] {
    try String(contentsOfFile: runDir + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").map { try JSON.parse(String($0)) }
}

final class TrainTests: TemporaryDirectoryTestCase {

    func baseArgs(_ data: String, steps: Int = 40) -> [String] {
        ["train", "--set", "data.trajectories=\(data)", "--set", "advantage.estimator=given",
         "--set", "model.n_positions=64", "--set", "model.n_embd=64", "--set", "model.n_layer=2", "--set", "model.n_head=4",
         "--set", "optimizer.lr=3e-3", "--set", "optimizer.warmup_steps=5", "--set", "steps=\(steps)"]
    }

    /// On supervised data the answer tokens' mean log-prob rises, the run writes its config,
    /// one metrics line per step and a final checkpoint whose MANIFEST verifies and whose
    /// model directory loads back.
    func testOfflineTrainingLearnsAndWritesItsRun() throws {
        try writeReversalData(dir + "/rev.jsonl")
        let run = dir + "/run"
        let r = try runKatDist(baseArgs(dir + "/rev.jsonl") + ["--set", "check.flat_every=10", "--run-dir", run], timeout: 300)
        XCTAssertEqual(r.code, 0, r.stderr)
        let m = try metrics(run)
        XCTAssertEqual(m.count, 40)
        let first = m[0]["logprob_mean"]!.doubleValue!, last = m[39]["logprob_mean"]!.doubleValue!
        // A random byte model starts near -log(260) = -5.56; 40 steps of 64 trajectories
        // reach about -1.6 here. Require a clear rise of 2 nats.
        XCTAssertLessThan(first, -4.5)
        XCTAssertGreaterThan(last, first + 2, "mean answer log-prob \(first) -> \(last)")
        for line in m { for key in ["loss", "grad_norm", "lr", "tokens_flat", "tokens_trie", "trie_ratio", "t_forward_backward", "skipped"] { XCTAssertNotNil(line[key], key) } }
        XCTAssertGreaterThan(m[0]["trie_ratio"]!.doubleValue!, 1.1, "groups share their prompts")
        let drifts = m.compactMap { $0["trie_flat_drift"]?.doubleValue }
        XCTAssertEqual(drifts.count, 4)
        // Log-probs of O(1-10) in float32 from two packings: differences ~1e-6 relative.
        for d in drifts { XCTAssertLessThan(d, 1e-4) }
        XCTAssertTrue(FileManager.default.fileExists(atPath: run + "/config.json"))
        let latest = try String(contentsOfFile: run + "/checkpoints/latest", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertEqual(latest, "step-000040")
        let ckpt = run + "/checkpoints/" + latest
        let manifest = try String(contentsOfFile: ckpt + "/MANIFEST", encoding: .utf8)
        for line in manifest.split(separator: "\n") {
            let parts = line.split(separator: " ", omittingEmptySubsequences: true)
            let data = try Data(contentsOf: URL(fileURLWithPath: ckpt + "/" + parts[1]))
            XCTAssertEqual(data.withUnsafeBytes { SHA256.hex(of: $0) }, String(parts[0]), String(parts[1]))
        }
        let model = try ModelDirectory.load(ckpt)
        XCTAssertEqual(model.config.nEmbd, 64)
    }

    /// data.packing=trie and =flat train the same: same losses and log-probs, and the same
    /// weights after three steps (fp32 round-off only).
    func testTrieAndFlatPackingTrainTheSame() throws {
        try writeReversalData(dir + "/rev.jsonl", count: 64)
        for packing in ["trie", "flat"] {
            let r = try runKatDist(baseArgs(dir + "/rev.jsonl", steps: 3) + ["--set", "data.packing=\(packing)", "--set", "loss.ppo_epochs=2",
                                                                           "--set", "batch.minibatches=2", "--run-dir", dir + "/" + packing], timeout: 300)
            XCTAssertEqual(r.code, 0, r.stderr)
        }
        let t = try metrics(dir + "/trie"), f = try metrics(dir + "/flat")
        XCTAssertEqual(t[0]["policy_version"], .int(4), "2 epochs x 2 minibatches = 4 updates")
        for k in 0..<3 {
            XCTAssertEqual(t[k]["logprob_mean"]!.doubleValue!, f[k]["logprob_mean"]!.doubleValue!, accuracy: 1e-4)
            XCTAssertEqual(t[k]["loss"]!.doubleValue!, f[k]["loss"]!.doubleValue!, accuracy: 1e-5)
        }
        XCTAssertGreaterThan(t[0]["trie_ratio"]!.doubleValue!, 1.1)
        XCTAssertEqual(f[0]["trie_ratio"]!.doubleValue!, 1)
        let a = try ModelDirectory.load(dir + "/trie/checkpoints/step-000003"), b = try ModelDirectory.load(dir + "/flat/checkpoints/step-000003")
        for ts in a.layout.tensors {
            let range = ts.offset..<(ts.offset + ts.count)
            let scale = range.reduce(Float(0)) { max($0, abs(b.params[$1])) }
            let worst = range.reduce(Float(0)) { max($0, abs(a.params[$1] - b.params[$1])) }
            // Adam normalises the update, so round-off in a tiny gradient entry can move a
            // weight by up to lr; 12 updates at lr <= 3e-3 bound the difference well below 2e-2
            // of the weights' scale, while a wrong gradient moves weights by O(lr) everywhere.
            XCTAssertLessThan(worst, 2e-2 * max(scale, 1e-3), ts.name)
        }
    }

    /// Config faults: one line, exit code 2, the key named.
    func testConfigFaultsExitTwo() throws {
        try #"{"optimizer": {"lrr": 1}}"#.write(toFile: dir + "/bad.json", atomically: true, encoding: .utf8)
        let cases: [([String], String)] = [
            (["train", "--config", dir + "/bad.json"], "key optimizer.lrr: unknown key"),
            (["train", "--set", "steps=-3"], "key steps: must be in"),
            (["train", "--set", "steps"], "expected key=value"),
            (["train", "--config", dir + "/none.json"], "no such file"),
            (["train", "--set", "data.task=chess"], "data.task: \"chess\" is not a built-in task"),
            (["train", "--set", "data.trajectories=\(dir)/none.jsonl"], "no such file"),
        ]
        try assertUsageErrors(cases)
    }

    /// A run directory with checkpoints is never overwritten; a bad trajectory file stops
    /// before anything is written.
    func testExistingRunAndBadDataDamageNothing() throws {
        try writeReversalData(dir + "/rev.jsonl", count: 16)
        let run = dir + "/run"
        XCTAssertEqual(try runKatDist(baseArgs(dir + "/rev.jsonl", steps: 1) + ["--run-dir", run]).code, 0)
        let before = try Data(contentsOf: URL(fileURLWithPath: run + "/checkpoints/step-000001/model.safetensors"))
        let metricsBefore = try Data(contentsOf: URL(fileURLWithPath: run + "/metrics.jsonl"))
        let again = try runKatDist(baseArgs(dir + "/rev.jsonl", steps: 1) + ["--run-dir", run])
        XCTAssertEqual(again.code, 1)
        XCTAssertTrue(again.stderr.contains("already holds checkpoints"), again.stderr)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: run + "/checkpoints/step-000001/model.safetensors")), before)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: run + "/metrics.jsonl")), metricsBefore)

        try "{\"id\": \"a\", \"tokens\": [256, 1, 2], \"prompt_len\": 1, \"advantage\": 1}\n{\"id\": \"b\", \"tokens\": [256, 1], \"loss_mask\": [1, 1], \"advantage\": 1}\n"
            .write(toFile: dir + "/bad.jsonl", atomically: true, encoding: .utf8)
        let bad = try runKatDist(baseArgs(dir + "/bad.jsonl", steps: 1) + ["--run-dir", dir + "/run2"])
        XCTAssertEqual(bad.code, 1)
        XCTAssertTrue(bad.stderr.contains("bad.jsonl:2: field loss_mask: entry 0 must be 0"), bad.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/run2"), "nothing written for a bad file")
    }
}
