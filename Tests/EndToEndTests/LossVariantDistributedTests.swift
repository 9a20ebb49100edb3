import Foundation
import XCTest
import KATSupport
import KATTestSupport
import KATModel

final class LossVariantDistributedTests: TemporaryDirectoryTestCase {
    /// With every loss variant on (decoupled with a cap, the entropy bonus, high-entropy
    /// tokens only, KL-Cov, clip-higher), 2 minibatches x 2 PPO epochs of off-policy data,
    /// one SGD step on T = 2 or 3 trainers gives the T = 1 weights: the selections are the
    /// whole minibatch's on every trainer, not a shard's (the trainers also check after
    /// every step that they hold the same weights).
    func testTrainerCountDoesNotChangeTheUpdateWithEveryVariant() throws {
        var rng = SplitMix64(seed: 5)
        func toks(_ n: Int) -> [Int] { (0..<n).map { _ in Int(rng.next() % 256) } }
        func num(_ lo: Double, _ hi: Double) -> String { String(format: "%.4f", lo + (hi - lo) * rng.nextDouble()) }
        // Behaviour log-probs around the random model's (about -5.6 over 260 tokens), so that
        // importance weights fall on both sides of 1 and some pass the cap.
        var lines: [String] = []
        var k = 0
        for g in 0..<3 {
            let prompt = [256] + toks(12)
            for a in [toks(5), toks(5)] {
                for b in [toks(4), toks(4)] {
                    let seq = prompt + a + b + [257]
                    let masked = seq.indices.map { $0 >= prompt.count }
                    let lp = masked.map { $0 ? num(-8, -4) : "null" }, ent = masked.map { $0 ? num(0, 3) : "null" }
                    // Versions alternate along the answer: every trajectory holds two.
                    let ver = masked.enumerated().map { $1 ? String(3 + $0 % 2) : "null" }
                    lines.append("{\"id\": \"t\(k)\", \"group\": \"p\(g)\", \"tokens\": \(seq), \"prompt_len\": \(prompt.count), "
                                 + "\"advantage\": \(num(-1.5, 1.5)), \"logprobs\": [\(lp.joined(separator: ", "))], "
                                 + "\"entropies\": [\(ent.joined(separator: ", "))], \"versions\": [\(ver.joined(separator: ", "))]}")
                    k += 1
                }
            }
        }
        try (lines.joined(separator: "\n") + "\n").write(toFile: dir + "/tree.jsonl", atomically: true, encoding: .utf8)
        let variants = ["loss.off_policy=decoupled", "loss.is_cap=3", "advantage.entropy_bonus_beta=0.3", "loss.entropy_token_frac=0.5",
                        "loss.kl_cov_frac=0.2", "loss.kl_cov_coef=0.5", "loss.eps_high=0.28", "batch.minibatches=2", "loss.ppo_epochs=2"]
        var weights: [[Float]] = []
        for t in 1...3 {
            let run = dir + "/run\(t)"
            let out = try mpirun(t, [katDist(), "train", "--run-dir", run, "--set", "ranks.trainers=\(t)", "--set", "data.trajectories=\(dir)/tree.jsonl",
                                     "--set", "advantage.estimator=given", "--set", "optimizer.name=sgd", "--set", "optimizer.lr=0.5",
                                     "--set", "optimizer.grad_clip=0", "--set", "steps=1", "--set", "model.n_embd=32", "--set", "model.n_layer=2",
                                     "--set", "model.n_head=2", "--set", "batch.max_tokens=40", "--set", "batch.trajectories=12"] + variants.flatMap { ["--set", $0] }, timeout: 120)
            XCTAssertEqual(out.code, 0, out.output)
            let m = try metricsLines(run)
            XCTAssertEqual(m[0]["mixed_version_trajectories"]?.intValue, lines.count, "every trajectory has several versions")
            XCTAssertGreaterThan(m[0]["is_weight_max"]?.doubleValue ?? 0, 1)
            XCTAssertLessThanOrEqual(m[0]["is_weight_max"]?.doubleValue ?? 99, 3, "truncated at loss.is_cap")
            XCTAssertGreaterThan(m[0]["is_truncated_frac"]?.doubleValue ?? 0, 0)
            weights.append(try ModelDirectory.load(run + "/checkpoints/step-000001").params.array)
        }
        let initial = try GPT2(config: GPT2Config(vocabSize: 260, nPositions: 128, nEmbd: 32, nLayer: 2, nHead: 2))
        initial.initialize(seed: 1)
        let moved = zip(weights[0], initial.params.array).map { abs($0 - $1) }.max() ?? 0
        XCTAssertGreaterThan(moved, 1e-4, "the step moved the weights")
        for t in 1..<3 {
            // The same gradients summed in another order across shards: fp32 round-off of
            // ~1e-7 relative on gradients of O(1), times lr 0.5, over four updates.
            let worst = zip(weights[t], weights[0]).map { abs($0 - $1) }.max() ?? 1
            XCTAssertLessThan(worst, 2e-5, "T=\(t + 1) differs from T=1 by \(worst) (the step moved weights by up to \(moved))")
        }
    }
}
