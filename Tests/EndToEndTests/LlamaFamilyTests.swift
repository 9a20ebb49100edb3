import Foundation
import XCTest
import KATSupport
import KATTestSupport
import KATModel

/// The Llama family through every path of the executable: a model directory as the start
/// of an online run, the loops on rollout ranks, checkpoints and resume, logprobs, eval.
final class LlamaFamilyTests: TemporaryDirectoryTestCase {
    /// A random Llama directory with grouped-query attention (4 query heads, 2 key-value
    /// heads), as a user would bring one: config.json and model.safetensors only.
    func writeLlamaDirectory(_ path: String, layers: Int) throws {
        let m = try Llama(config: LlamaConfig(family: .llama, vocabSize: 260, nPositions: 128, nEmbd: 128, nLayer: layers, nHead: 4,
                                              nKVHead: 2, intermediateSize: 352))
        m.initialize(seed: 7)
        try ModelDirectory.save(m, to: path)
    }

    /// An online RL run from a Llama directory on a built-in task learns: after a short
    /// supervised warm start, the RL phase alone raises held-out success (greedy) by at
    /// least 0.15 (0.46 -> 0.71 when written; the warm start alone reaches about 0.45, and
    /// a broken gradient or sampler leaves RL flat or collapses it). Byte tokenizer.
    func testOnlineRLFromALlamaDirectoryLearns() throws {
        let model = dir + "/llama", run = dir + "/run"
        try writeLlamaDirectory(model, layers: 4)
        let r = try runKatDist(["train", "--run-dir", run, "--set", "model.init=\(model)", "--set", "warmstart.steps=250",
                                "--set", "steps=60", "--set", "eval.every=20", "--set", "eval.prompts=100"], timeout: 600)
        XCTAssertEqual(r.code, 0, r.stderr)
        let evals = try metrics(run).compactMap { l -> (String, Double)? in
            guard let e = l["eval_success"]?.doubleValue else { return nil }
            return (l["phase"]?.stringValue ?? "", e)
        }
        guard let afterWarm = evals.last(where: { $0.0 == "warmstart" })?.1, let end = evals.last?.1 else {
            return XCTFail("metrics lack the evaluations: \(evals)")
        }
        print("llama run: held-out success \(afterWarm) after the warm start -> \(end) after RL")
        XCTAssertGreaterThanOrEqual(end - afterWarm, 0.15, "the RL phase alone: \(evals)")
        // The checkpoint is a Llama directory again, and the command line reads it.
        let ckpt = run + "/checkpoints/step-000310"
        let config = try JSON.parse(String(contentsOfFile: ckpt + "/config.json", encoding: .utf8))
        XCTAssertEqual(config["model_type"], "llama")
        XCTAssertEqual(config["architectures"], ["LlamaForCausalLM"])
        XCTAssertEqual(config["num_key_value_heads"], .int(2))
        let e = try runKatDist(["eval", "--model", ckpt, "--prompts", "20"])
        XCTAssertEqual(e.code, 0, e.stderr)
        XCTAssertTrue(e.stdout.contains("held-out success"), e.stdout)
    }

    /// Qwen2 from random initialisation trains with trainer and rollout ranks (weights
    /// sent to rollout ranks, asynchronous groups), then resumes from its checkpoint; the
    /// resumed run starts from the checkpoint's weights.
    func testQwen2TrainsOnRolloutRanksAndResumes() throws {
        let run = dir + "/qwen2"
        let shape = ["--set", "model.family=qwen2", "--set", "model.n_embd=32", "--set", "model.n_layer=1", "--set", "model.n_head=4",
                     "--set", "model.n_kv_head=2", "--set", "warmstart.steps=3", "--set", "eval.every=2", "--set", "eval.prompts=8",
                     "--set", "batch.prompts=4", "--set", "rollout.group_size=4", "--set", "checkpoint.every=2"]
        let first = try mpirun(3, [katDist(), "train", "--run-dir", run, "--set", "ranks.trainers=2", "--set", "steps=4"] + shape, timeout: 180)
        XCTAssertEqual(first.code, 0, first.output)
        XCTAssertEqual(try metricsLines(run).count, 7, "3 warm-start and 4 RL steps")
        let ckpt = run + "/checkpoints/step-000007"
        let saved = try ModelDirectory.load(ckpt)
        XCTAssertEqual(saved.config.family, .qwen2)
        XCTAssertNotNil(saved.layout.tensor(named: "model.layers.0.self_attn.q_proj.bias"))
        let resumed = try mpirun(1, [katDist(), "train", "--run-dir", run, "--resume", "auto", "--set", "steps=6"] + shape, timeout: 180)
        XCTAssertEqual(resumed.code, 0, resumed.output)
        XCTAssertTrue(resumed.output.contains("resume: continuing from step-000007"), resumed.output)
        XCTAssertEqual(try metricsLines(run).count, 9)
        // A checkpoint of another shape is refused, naming both.
        let other = try mpirun(1, [katDist(), "train", "--run-dir", dir + "/other", "--resume", ckpt, "--set", "steps=6"] + shape
                               + ["--set", "model.n_kv_head=4"], timeout: 60)
        XCTAssertNotEqual(other.code, 0)
        XCTAssertTrue(other.output.contains("does not match the configured one"), other.output)
    }

    /// logprobs on a Llama directory gives what the model gives.
    func testLogprobsOfALlamaDirectory() throws {
        let model = dir + "/llama"
        try writeLlamaDirectory(model, layers: 1)
        try "{\"id\": \"a\", \"tokens\": [256, 72, 105, 258, 33]}\n".write(toFile: dir + "/in.jsonl", atomically: true, encoding: .utf8)
        let r = try runKatDist(["logprobs", "--model", model, "--input", dir + "/in.jsonl", "--output", dir + "/out.jsonl"])
        XCTAssertEqual(r.code, 0, r.stderr)
        let line = try JSON.parse(String(contentsOfFile: dir + "/out.jsonl", encoding: .utf8).trimmingCharacters(in: .newlines))
        let m = try ModelDirectory.load(model)
        let expect = m.forward(try PackedBatch(sequences: [[256, 72, 105, 258, 33]], vocabSize: 260, maxPositions: 128)).logprobs
        let got = line["logprobs"]?.arrayValue ?? []
        XCTAssertEqual(got.count, 5)
        XCTAssertEqual(got.first, .null)
        for t in 1..<5 { XCTAssertEqual(Float(got[t].doubleValue ?? 0), expect[t], accuracy: 1e-6, "position \(t)") }
    }
}
