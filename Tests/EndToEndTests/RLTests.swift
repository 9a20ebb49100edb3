import Foundation
import XCTest
import KATSupport
import KATTestSupport
import KATModel

let reverseEnv = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Launch/envs/reverse_env.py").standardized.path

final class RLTests: TemporaryDirectoryTestCase {

    /// The built-in default run, exactly as `kat-dist train` runs it: held-out success rises
    /// by at least 0.3 and ends at 0.6 or more, and the RL phase alone adds at least 0.2
    /// over the warm-started model.
    func testTheDefaultRunLearns() throws {
        let run = dir + "/default"
        let r = try runKatDist(["train", "--run-dir", run], timeout: 900)
        XCTAssertEqual(r.code, 0, r.stderr)
        let m = try metrics(run)
        let evals = m.compactMap { l -> (String, Double)? in
            guard let e = l["eval_success"]?.doubleValue else { return nil }
            return (l["phase"]?.stringValue ?? "", e)
        }
        guard let afterWarm = evals.first(where: { $0.0 == "warmstart" })?.1, let end = evals.last?.1 else {
            return XCTFail("metrics lack the evaluations: \(evals)")
        }
        print("default run: held-out success 0 -> \(afterWarm) after the warm start -> \(end) after RL")
        XCTAssertTrue(r.stdout.contains("held-out success at the start: 0.000"), r.stdout)
        XCTAssertGreaterThanOrEqual(end, 0.6)
        XCTAssertGreaterThanOrEqual(end - afterWarm, 0.2, "the RL phase alone")
        let report = try String(contentsOfFile: run + "/report.html", encoding: .utf8)
        XCTAssertTrue(report.contains("<svg") && report.contains("eval_success"))
        XCTAssertFalse(report.contains("<script"), "the report is self-contained")
    }

    /// The external example environment trains end to end.
    func testExternalEnvironmentTrains() throws {
        let run = dir + "/ext"
        let r = try runKatDist(["train", "--run-dir", run, "--set", "data.env_command=python3 \(reverseEnv)", "--set", "steps=3",
                                "--set", "batch.prompts=4", "--set", "rollout.group_size=4", "--set", "rollout.turns=2",
                                "--set", "eval.every=0", "--set", "model.n_embd=32", "--set", "model.n_layer=1"], timeout: 300)
        XCTAssertEqual(r.code, 0, r.stderr)
        let m = try metrics(run)
        XCTAssertEqual(m.count, 3)
        XCTAssertEqual(m[0]["trajectories"], .int(16))
        XCTAssertNotNil(m[2]["reward_mean"]?.doubleValue)
        XCTAssertTrue(FileManager.default.fileExists(atPath: run + "/checkpoints/step-000003/MANIFEST"))
    }

    /// A hanging environment stops the run with the clear error, not a hang.
    func testHangingEnvironmentStopsTheRun() throws {
        let r = try runKatDist(["train", "--run-dir", dir + "/hang", "--set", "data.env_command=sleep 60", "--set", "env.timeout_s=0.5",
                                "--set", "eval.every=0", "--set", "model.n_embd=32", "--set", "model.n_layer=1"], timeout: 60)
        XCTAssertEqual(r.code, 1)
        XCTAssertTrue(r.stderr.contains("environment sleep 60: no reply within 0.5 s"), r.stderr)
    }

    /// eval and generate on a trained checkpoint.
    func testEvalAndGenerate() throws {
        let run = dir + "/small"
        let r = try runKatDist(["train", "--run-dir", run, "--set", "steps=2", "--set", "warmstart.steps=20", "--set", "eval.prompts=5",
                                "--set", "eval.every=1", "--set", "model.n_embd=32", "--set", "model.n_layer=1"], timeout: 300)
        XCTAssertEqual(r.code, 0, r.stderr)
        let ckpt = run + "/checkpoints/step-000022"
        let e = try runKatDist(["eval", "--model", ckpt, "--prompts", "7"])
        XCTAssertEqual(e.code, 0, e.stderr)
        XCTAssertTrue(e.stdout.contains("held-out success") && e.stdout.contains("of 7"), e.stdout)
        let g = try runKatDist(["generate", "--model", ckpt, "--prompt", "add 3 then times 2", "--n", "3", "--temperature", "0"])
        XCTAssertEqual(g.code, 0, g.stderr)
        XCTAssertEqual(g.stdout.split(separator: "\n", omittingEmptySubsequences: false).count, 4)
        let bad = try runKatDist(["eval", "--model", ckpt, "--task", "chess"])
        XCTAssertEqual(bad.code, 2)
        XCTAssertTrue(bad.stderr.contains("--task chess is not a built-in task"))
    }
}
