import Foundation
import XCTest
import KATTestSupport
@testable import KATDist
import KATEnv
import KATModel
import KATSupport

/// The tokenizer fixtures of KATEnvTests (made by Hugging Face `tokenizers`).
let tokenizerFixtureDir = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent("../KATEnvTests/Fixtures/tokenizers").standardized.path

/// A GPT-2 directory of random weights whose vocabulary is `vocabSize`, with the tokenizer
/// files and special ids of the fixture tokenizer `tokenizer`.
func gpt2Directory(_ path: String, tokenizer: String, vocabSize: Int, seed: UInt64 = 1) throws {
    let source = tokenizerFixtureDir + "/" + tokenizer
    let ids = try JSON.parse(Array(try Data(contentsOf: URL(fileURLWithPath: source + "/config.json"))))
    let model = try GPT2(config: GPT2Config(vocabSize: vocabSize, nPositions: 64, nEmbd: 32, nLayer: 2, nHead: 2,
                                            bosTokenId: ids["bos_token_id"]?.intValue, eosTokenId: ids["eos_token_id"]?.intValue))
    model.initialize(seed: seed)
    try ModelDirectory.save(model, to: path)
    for name in try FileManager.default.contentsOfDirectory(atPath: source) where name != "config.json" {
        try FileManager.default.copyItem(atPath: source + "/" + name, toPath: path + "/" + name)
    }
}

final class TokenizerRunTests: TemporaryDirectoryTestCase {
    func corpus() throws -> [String] {
        let data = try Data(contentsOf: URL(fileURLWithPath: tokenizerFixtureDir + "/corpus.jsonl"))
        return try data.split(separator: 0x0A).map { try XCTUnwrap(try JSON.parse(Array($0))["text"]?.stringValue) }
    }

    func manifestFiles(_ checkpoint: String) throws -> [String] {
        try String(contentsOfFile: checkpoint + "/MANIFEST", encoding: .utf8).split(separator: "\n").map { String($0.split(separator: " ").last ?? "") }
    }

    /// A run of a model made from scratch writes the byte tokenizer's files into every
    /// checkpoint (listed in the MANIFEST); they read back as the byte tokenizer.
    func testByteTokenizerRunCheckpointsCarryTheByteTokenizer() throws {
        let s = try tinySettings(["warmstart.steps=2", "steps=1", "checkpoint.every=1"])
        _ = try runInProcess(s, dir + "/run")
        let names = Checkpoint.names(in: dir + "/run/checkpoints")
        XCTAssertEqual(names.count, 3)
        for name in names {
            let ckpt = dir + "/run/checkpoints/" + name
            XCTAssertNil(Checkpoint.verify(ckpt))
            for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"] {
                XCTAssertTrue(try manifestFiles(ckpt).contains(f), "\(name) MANIFEST lacks \(f)")
            }
            let t = try TokenizerLoader.load(directory: ckpt)
            XCTAssertEqual(t.specials, ByteTokenizer().specials)
            for text in try corpus() { XCTAssertEqual(t.encode(text), ByteTokenizer().encode(text)) }
        }
    }

    /// A run from a GPT-2 directory with a BPE tokenizer trains on that tokenizer's ids and
    /// copies its files into every checkpoint unchanged; the checkpoint is itself a model
    /// directory that a new run starts from.
    func testBPERunCheckpointsCarryTheSourceTokenizer() throws {
        let model = dir + "/gpt2-task"
        try gpt2Directory(model, tokenizer: "task", vocabSize: 300)
        let s = try tinySettings(["model.init=\(model)", "warmstart.steps=2", "steps=1", "rollout.max_new_tokens=6"])
        _ = try runInProcess(s, dir + "/run")
        let ckpt = dir + "/run/checkpoints/" + (Checkpoint.names(in: dir + "/run/checkpoints").last ?? "")
        XCTAssertNil(Checkpoint.verify(ckpt))
        for f in ["tokenizer.json", "tokenizer_config.json"] {
            XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: ckpt + "/" + f)), try Data(contentsOf: URL(fileURLWithPath: model + "/" + f)))
            XCTAssertTrue(try manifestFiles(ckpt).contains(f))
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: ckpt + "/special_tokens_map.json"), "no byte tokenizer files beside a BPE")
        let source = try TokenizerLoader.load(directory: model), copied = try TokenizerLoader.load(directory: ckpt)
        XCTAssertEqual(copied.specials, source.specials)
        for text in try corpus() { XCTAssertEqual(copied.encode(text), source.encode(text)) }
        // The rollouts were framed with the BPE's ids: BOS (<|endoftext|>, id 0) and "\n" encoded.
        let eot = source.encode("<|endoftext|>")
        XCTAssertEqual(source.specials.bos.map { [$0] }, eot)
        let s2 = try tinySettings(["model.init=\(ckpt)", "warmstart.steps=0", "steps=1", "rollout.max_new_tokens=6"])
        _ = try runInProcess(s2, dir + "/run2")
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: dir + "/run2/checkpoints/step-000001/tokenizer.json")),
                       try Data(contentsOf: URL(fileURLWithPath: model + "/tokenizer.json")))
    }

    /// The warm start frames prompts and answers with the model's tokenizer.
    func testWarmStartUsesTheModelTokenizer() throws {
        let t = try TokenizerLoader.load(directory: tokenizerFixtureDir + "/task")
        let task = try XCTUnwrap(builtinTask("code"))
        var config = WarmStartConfig()
        config.batch = 4
        config.flawed = 0
        let source = WarmStartSource(task: task, config: config, seed: 1, tokenizer: t)
        let batch = try source.collect(step: 0, version: 0)
        var rng = SplitMix64(seed: 1 &+ 3)
        for traj in batch.trajectories {
            let seed = rng.next() % UInt64(task.promptCount(split: "train"))
            _ = rng.nextDouble()
            let ref = task.reference(seed: seed, split: "train")
            XCTAssertEqual(traj.tokens, t.promptTokens(ref.prompt) + t.answerTokens(ref.answer))
            XCTAssertEqual(traj.lossMask.firstIndex(of: 1), t.promptTokens(ref.prompt).count)
        }
    }

    /// A model whose vocabulary does not cover its tokenizer is refused before anything
    /// runs, with a message naming the model, its vocab_size and the tokenizer.
    func testModelVocabularySmallerThanTheTokenizerIsRefused() throws {
        let model = dir + "/small-vocab"
        try gpt2Directory(model, tokenizer: "task", vocabSize: 280)
        let s = try tinySettings(["model.init=\(model)", "warmstart.steps=1", "steps=1"])
        XCTAssertThrowsError(try runInProcess(s, dir + "/run")) { e in
            let m = "\(e)"
            XCTAssertTrue(m.contains("model.init") && m.contains("vocab_size 280") && m.contains(model + "/tokenizer.json") && m.contains("299"), m)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/run/checkpoints"), "nothing was started")
        // A model made from scratch with fewer than the byte tokenizer's 260 ids, likewise.
        let small = try tinySettings(["model.vocab_size=200", "warmstart.steps=1", "steps=1"])
        XCTAssertThrowsError(try runInProcess(small, dir + "/run-small")) { e in
            XCTAssertTrue("\(e)".contains("model.vocab_size") && "\(e)".contains("vocab_size 200") && "\(e)".contains("byte tokenizer"), "\(e)")
        }
    }

    /// checkpoint.dtype = bf16 writes BF16 weights (optimizer state stays F32), and a run
    /// resumes from them.
    func testBF16CheckpointsResume() throws {
        let s = try tinySettings(["warmstart.steps=2", "steps=2", "checkpoint.every=1", "checkpoint.dtype=bf16"])
        _ = try runInProcess(s, dir + "/run")
        let ckpt = dir + "/run/checkpoints/step-000003"
        XCTAssertTrue(try SafetensorsFile.read(path: ckpt + "/model.safetensors").entries.allSatisfy { $0.dtype == .BF16 })
        XCTAssertTrue(try SafetensorsFile.read(path: ckpt + "/optimizer.safetensors").entries.allSatisfy { $0.dtype == .F32 })
        let longer = try tinySettings(["warmstart.steps=2", "steps=3", "checkpoint.every=1", "checkpoint.dtype=bf16"])
        _ = try runInProcess(longer, dir + "/run", resume: ckpt)
        XCTAssertNil(Checkpoint.verify(dir + "/run/checkpoints/step-000005"))
    }
}
