import Foundation
import XCTest
import KATSupport
import KATTestSupport
import KATDist

/// Random kills, the way clusters fail: at a random moment a random rank of the job gets
/// SIGKILL. Whatever was hit, `--resume auto` continues the run to its end, no
/// trajectory id is trained twice on the committed timeline, and no process of the run
/// (kat-dist ranks, environment processes) is left.
final class FaultInjectionTests: TemporaryDirectoryTestCase {
    let example = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Launch/envs/reverse_env.py").standardized.path

    func testRandomKillsAlwaysResume() throws {
        var rng = SplitMix64(seed: 20261130)
        for round in 0..<10 {
            let asynchronous = round % 2 == 0
            let external = round % 4 < 2
            let run = dir + "/round\(round)"
            let np = asynchronous ? 3 : 2
            var args = [katDist(), "train", "--run-dir", run, "--set", "model.n_embd=32", "--set", "model.n_layer=1", "--set", "model.n_head=2",
                        "--set", "batch.prompts=2", "--set", "rollout.group_size=4", "--set", "eval.every=0", "--set", "steps=30",
                        "--set", "checkpoint.every=1", "--set", "checkpoint.keep=3", "--set", "log.trained_ids=true",
                        "--set", "ranks.trainers=\(asynchronous ? 1 : 2)", "--set", "max_staleness=100"]
            args += external ? ["--set", "data.env_command=python3 \(example)"] : ["--set", "warmstart.steps=3", "--set", "warmstart.batch=8"]
            let delay = 0.3 + Double(rng.next() % 2500) / 1000
            let victim = Int(rng.next() % UInt64(np))
            var killedAt: Date?
            let start = Date()
            let first = try mpirun(np, args, timeout: 120, whileRunning: { _ in
                guard killedAt == nil, Date().timeIntervalSince(start) > delay, let p = rankProcess(run, rank: victim) else { return }
                kill(p, SIGKILL)
                killedAt = Date()
            })
            let what = "round \(round) (\(asynchronous ? "asynchronous" : "synchronous"), \(external ? "external" : "built-in") environment, rank \(victim) killed after \(delay) s)"
            if killedAt != nil { XCTAssertNotEqual(first.code, 0, what) }
            // `--resume auto` continues from the newest checkpoint, or begins again when the
            // kill came before the first one.
            let second = try mpirun(np, args + ["--resume", "auto"], timeout: 180)
            XCTAssertEqual(second.code, 0, "\(what): \(second.output)")
            let lines = try String(contentsOfFile: run + "/trained_ids.jsonl", encoding: .utf8).split(separator: "\n").map { try JSON.parse(String($0)) }
            let steps = lines.compactMap { $0["step"]?.intValue }
            XCTAssertEqual(steps, Array(1...(external ? 30 : 33)), "\(what): one line per step on the committed timeline")
            var seen = Set<String>()
            for line in lines {
                for id in line["ids"]?.arrayValue?.compactMap(\.stringValue) ?? [] {
                    XCTAssertTrue(seen.insert(id).inserted, "\(what): \(id) trained twice")
                }
            }
            // Nothing of the run is left running: ranks, the guardian, the environment.
            usleep(300_000)
            XCTAssertEqual(processes(matching: run), [], "\(what): processes of the run left")
            XCTAssertEqual(processes(matching: "reverse_env.py").filter { p in
                (try? String(contentsOfFile: "/proc/\(p)/cmdline", encoding: .utf8))?.contains(example) == true
            }, [], "\(what): environment processes left")
        }
    }
}
