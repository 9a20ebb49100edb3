import Foundation
import XCTest
import KATSupport
import KATTestSupport
import KATModel

/// Tokenizer fixtures of KATEnvTests (made by Hugging Face `tokenizers`).
let tokenizerFixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent("../KATEnvTests/Fixtures/tokenizers").standardized.path

/// Writes a GPT-2 directory of GPT-2-initialised weights with the files and special ids of
/// the fixture tokenizer `tokenizer`.
func writeGPT2Directory(_ path: String, tokenizer: String, vocabSize: Int, nEmbd: Int = 64, nLayer: Int = 2, nHead: Int = 4,
                        seed: UInt64 = 1) throws {
    let source = tokenizerFixtures + "/" + tokenizer
    let ids = try JSON.parse(Array(try Data(contentsOf: URL(fileURLWithPath: source + "/config.json"))))
    let model = try GPT2(config: GPT2Config(vocabSize: vocabSize, nPositions: 64, nEmbd: nEmbd, nLayer: nLayer, nHead: nHead,
                                            bosTokenId: ids["bos_token_id"]?.intValue, eosTokenId: ids["eos_token_id"]?.intValue))
    model.initialize(seed: seed)
    try ModelDirectory.save(model, to: path)
    for name in try FileManager.default.contentsOfDirectory(atPath: source) where name != "config.json" {
        try FileManager.default.copyItem(atPath: source + "/" + name, toPath: path + "/" + name)
    }
}

final class TokenizerEndToEndTests: TemporaryDirectoryTestCase {

    /// An online RL run from a GPT-2 directory with a byte-level BPE tokenizer of 300 ids
    /// learns the code task: held-out success (greedy, 200 prompts never trained on) rises
    /// from 0 after the warm start, and the RL phase alone adds at least 0.1. `eval` on the
    /// final checkpoint, through the checkpoint's own tokenizer, gives the run's last
    /// evaluation exactly, and `generate` writes programs, not bytes of token ids.
    func testRLFromABPEDirectoryLearns() throws {
        let model = dir + "/gpt2-bpe"
        try writeGPT2Directory(model, tokenizer: "task", vocabSize: 300)
        let run = dir + "/run"
        let r = try runKatDist(["train", "--run-dir", run, "--set", "model.init=\(model)", "--set", "data.task=code",
                                "--set", "warmstart.steps=150", "--set", "steps=100", "--set", "eval.every=20", "--set", "eval.prompts=200",
                                "--set", "rollout.max_new_tokens=8"], timeout: 300)
        XCTAssertEqual(r.code, 0, r.stderr)
        let evals = try metrics(run).compactMap { l -> (String, Double)? in
            guard let e = l["eval_success"]?.doubleValue else { return nil }
            return (l["phase"]?.stringValue ?? "", e)
        }
        guard let afterWarm = evals.first(where: { $0.0 == "warmstart" })?.1, let end = evals.last?.1 else {
            return XCTFail("metrics lack the evaluations: \(evals)")
        }
        print("BPE run: held-out success 0 -> \(afterWarm) after the warm start -> \(end) after RL; \(evals)")
        XCTAssertTrue(r.stdout.contains("held-out success at the start: 0.000"), r.stdout)
        XCTAssertGreaterThan(afterWarm, 0.1)
        // 0.1 is 20 of 200 prompts; over run seeds 1-5 the RL phase added 0.135 to 0.235.
        XCTAssertGreaterThanOrEqual(end - afterWarm, 0.1, "the RL phase alone")

        let ckpt = run + "/checkpoints/step-000250"
        XCTAssertTrue(FileManager.default.fileExists(atPath: ckpt + "/tokenizer.json"))
        let e = try runKatDist(["eval", "--model", ckpt, "--prompts", "200", "--max-new-tokens", "8"])
        XCTAssertEqual(e.code, 0, e.stderr)
        XCTAssertTrue(e.stdout.contains(String(format: "held-out success %.3f", end)), "\(e.stdout) vs the run's \(end)")
        let g = try runKatDist(["generate", "--model", ckpt, "--prompt", "add 3 then times 2", "--n", "3", "--temperature", "0",
                                "--max-new-tokens", "8"])
        XCTAssertEqual(g.code, 0, g.stderr)
        let lines = g.stdout.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.count, 3)
        for l in lines { XCTAssertTrue(l.hasPrefix("x ") && !l.contains("\u{FFFD}") && !l.contains("<|"), "generated \(l.debugDescription)") }
    }

    /// `kat-dist tokenize` encodes the awkward corpus to Hugging Face's ids with a model
    /// directory's tokenizer, keeps the lines' other fields, and decodes the ids back to
    /// Hugging Face's text.
    func testTokenizeCommandEqualsHuggingFace() throws {
        let expected = try JSON.parse(Array(try Data(contentsOf: URL(fileURLWithPath: tokenizerFixtures + "/expected.json"))))
        let corpus = tokenizerFixtures + "/corpus.jsonl"
        for name in ["gpt2-json", "gpt2-files", "qwen2", "llama3"] {
            let out = dir + "/\(name).jsonl"
            let r = try runKatDist(["tokenize", "--model", tokenizerFixtures + "/" + name, "--input", corpus, "--output", out])
            XCTAssertEqual(r.code, 0, r.stderr)
            let lines = try String(contentsOfFile: out, encoding: .utf8).split(separator: "\n").map { try JSON.parse(String($0)) }
            let want = expected[name]?["encode"]?.arrayValue ?? []
            XCTAssertEqual(lines.count, want.count)
            for (line, ids) in zip(lines, want) { XCTAssertEqual(line["tokens"], ids, name) }
            let back = try runKatDist(["tokenize", "--model", tokenizerFixtures + "/" + name, "--input", out, "--decode"])
            XCTAssertEqual(back.code, 0, back.stderr)
            let texts = try back.stdout.split(separator: "\n").map { try JSON.parse(String($0))["text"] }
            XCTAssertEqual(texts, expected[name]?["decode"]?.arrayValue ?? [], name)
        }
        // Other fields are kept, in place.
        try Data(#"{"id": "a", "text": "23+45=68", "n": 1}"#.utf8).write(to: URL(fileURLWithPath: dir + "/one.jsonl"))
        let one = try runKatDist(["tokenize", "--model", tokenizerFixtures + "/task", "--input", dir + "/one.jsonl"])
        XCTAssertTrue(one.stdout.hasPrefix(#"{"id":"a","tokens":["#) && one.stdout.contains(#"],"n":1}"#), one.stdout)
    }

    /// Bad use of `tokenize` is one clear line and exit code 2; bad input is a message
    /// naming the file and line and exit code 1; a model whose vocabulary does not cover the
    /// tokenizer is refused naming both.
    func testTokenizeFaults() throws {
        let help = try runKatDist(["tokenize", "--help"])
        XCTAssertEqual(help.code, 0)
        for option in ["--model", "--input", "--output", "--decode", "--skip-special-tokens"] { XCTAssertTrue(help.stdout.contains(option), option) }
        XCTAssertTrue(try runKatDist(["--help"]).stdout.contains("kat-dist tokenize --model DIR --input FILE.jsonl"))
        let model = tokenizerFixtures + "/task"
        let missing = try runKatDist(["tokenize", "--model", model, "--input", dir + "/none.jsonl"])
        XCTAssertEqual(missing.code, 2)
        XCTAssertTrue(missing.stderr.contains("--input \(dir)/none.jsonl: no such file"), missing.stderr)
        try Data("{\"text\": \"ok\"}\n{\"text\": 3}\n".utf8).write(to: URL(fileURLWithPath: dir + "/bad.jsonl"))
        let bad = try runKatDist(["tokenize", "--model", model, "--input", dir + "/bad.jsonl"])
        XCTAssertEqual(bad.code, 1)
        XCTAssertTrue(bad.stderr.contains("\(dir)/bad.jsonl:2: field text: must be a string"), bad.stderr)
        try Data("{\"tokens\": [1, 300]}\n".utf8).write(to: URL(fileURLWithPath: dir + "/ids.jsonl"))
        let outside = try runKatDist(["tokenize", "--model", model, "--input", dir + "/ids.jsonl", "--decode"])
        XCTAssertEqual(outside.code, 1)
        XCTAssertTrue(outside.stderr.contains("ids.jsonl:1: field tokens: entry 1 = 300 is outside the vocabulary (0..<300)"), outside.stderr)
        let small = dir + "/small"
        try writeGPT2Directory(small, tokenizer: "task", vocabSize: 260, nEmbd: 8, nLayer: 1, nHead: 2)
        for command in [["tokenize", "--input", dir + "/ids.jsonl"], ["generate", "--prompt", "x"], ["eval"]] {
            let r = try runKatDist([command[0], "--model", small] + command.dropFirst())
            XCTAssertEqual(r.code, 1, command[0])
            XCTAssertTrue(r.stderr.contains("the model \(small) has vocab_size 260") && r.stderr.contains(small + "/tokenizer.json")
                          && r.stderr.contains("ids up to 299"), r.stderr)
        }
    }
}
