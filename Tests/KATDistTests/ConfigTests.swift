import XCTest
@testable import KATDist
import KATModel
import KATRL
import KATSupport

final class ConfigTests: XCTestCase {
    func testNestedFileAndOverrides() throws {
        var c = try TrainConfig.parse(text: #"{"optimizer": {"lr": 0.01, "betas": [0.8, 0.9]}, "loss.mode": "seq-mean-token-sum", "steps": 7}"#, source: "c.json")
        try c.apply(override: "batch.max_tokens=4096")
        try c.apply(override: "data.trajectories=/tmp/x.jsonl")
        try c.apply(override: "advantage.entropy_scaling=false")
        XCTAssertEqual(c.double("optimizer.lr"), 0.01)
        let settings = RunSettings(c)
        XCTAssertEqual(settings.optimizer.beta1, 0.8)
        XCTAssertEqual(settings.loss.mode, .seqMeanTokenSum)
        XCTAssertEqual(settings.step.maxTokens, 4096)
        XCTAssertEqual(settings.data, .trajectories("/tmp/x.jsonl"))
        XCTAssertFalse(settings.advantage.entropyScaling)
        XCTAssertEqual(c.int("steps"), 7)
        XCTAssertEqual(c.int("batch.max_tokens"), 4096)
        XCTAssertEqual(c.string("data.trajectories"), "/tmp/x.jsonl")
        XCTAssertFalse(c.bool("advantage.entropy_scaling"))
        // The resolved config reads back to the same values.
        let back = try TrainConfig.parse(text: c.json.pretty, source: "resolved")
        for k in TrainConfig.keys { XCTAssertEqual(back.values[k.name], c.values[k.name], k.name) }
    }

    func testFaultsNameTheKey() {
        let files: [(String, String)] = [
            (#"{"optimizer": {"lrr": 1}}"#, "key optimizer.lrr: unknown key"),
            (#"{"stepz": 1}"#, "key stepz: unknown key"),
            (#"{"steps": 0}"#, "key steps: must be in 1"),
            (#"{"steps": 1.5}"#, "key steps: must be an integer"),
            (#"{"loss": {"mode": "mean"}}"#, "key loss.mode: must be one of"),
            (#"{"data": {"shuffle": "yes"}}"#, "key data.shuffle: must be true or false"),
            (#"{"optimizer": {"betas": [0.9]}}"#, "key optimizer.betas: must be two numbers"),
            (#"{"optimizer": 3}"#, "key optimizer: unknown key"),
            ("{", "not valid JSON"),
        ]
        for (text, fragment) in files {
            XCTAssertThrowsError(try TrainConfig.parse(text: text, source: "c.json")) {
                XCTAssertTrue("\($0)".hasPrefix("c.json: ") && "\($0)".contains(fragment), "\(text) -> \($0)")
            }
        }
        var c = TrainConfig()
        XCTAssertThrowsError(try c.apply(override: "nokey")) { XCTAssertTrue("\($0)".contains("expected key=value")) }
        XCTAssertThrowsError(try c.apply(override: "optimizer.lr=-1")) { XCTAssertTrue("\($0)".contains("key optimizer.lr: must be in")) }
        XCTAssertThrowsError(try c.apply(override: "lr=1")) { XCTAssertTrue("\($0)".contains("did you mean optimizer.lr")) }
        XCTAssertThrowsError(try TrainConfig.parse(text: #"{"model": {"n_embd": 10, "n_head": 4}}"#, source: "c").validate(source: "c")) {
            XCTAssertTrue("\($0)".contains("model.n_head"))
        }
    }
}

final class EntropyVariantSettingsTests: XCTestCase {
    /// A run's default settings turn every entropy variant off: the loss is the plain
    /// PPO-clip of `PolicyLossConfig()`, whose off values `VariantsOffTests` checks bit for
    /// bit against the loss as it was before the variants.
    func testTheDefaultSettingsTurnEveryVariantOff() {
        let loss = RunSettings(TrainConfig()).loss
        XCTAssertEqual(loss, PolicyLossConfig())
        XCTAssertEqual(loss.epsHigh, loss.epsLow, "no clip-higher")
        XCTAssertFalse(loss.usesEntropyBonus, "no entropy bonus")
        XCTAssertFalse(loss.selectsHighEntropyTokens, "every token contributes")
        XCTAssertFalse(loss.usesKLCov, "no KL-Cov")
        XCTAssertEqual(loss.offPolicy, .ppo)
    }

    /// Each variant's key sets its own term of the loss and no other: the ablation's arms
    /// differ from the plain arm in exactly the variant they name.
    func testEachVariantKeySetsItsOwnTerm() throws {
        let cases: [(String, (inout PolicyLossConfig) -> Void)] = [
            ("loss.eps_high=0.28", { $0.epsHigh = 0.28 }),
            ("loss.eps_low=0.15", { $0.epsLow = 0.15 }),
            ("advantage.entropy_bonus_beta=0.4", { $0.entropyBonusBeta = 0.4 }),
            ("advantage.entropy_bonus_kappa=3", { $0.entropyBonusKappa = 3 }),
            ("loss.entropy_token_frac=0.2", { $0.entropyTokenFrac = 0.2 }),
            ("loss.kl_cov_frac=0.002", { $0.klCovFrac = 0.002 }),
            ("loss.kl_cov_coef=0.5", { $0.klCovCoef = 0.5 }),
            ("loss.off_policy=decoupled", { $0.offPolicy = .decoupled }),
            ("loss.kl_coef=0.1", { $0.klCoef = 0.1 }),
        ]
        for (override, change) in cases {
            var c = TrainConfig()
            try c.apply(override: override)
            var expected = PolicyLossConfig()
            change(&expected)
            XCTAssertEqual(RunSettings(c).loss, expected, override)
        }
    }
}

final class ModelFamilyConfigTests: XCTestCase {
    /// model.family picks the family of a random initialisation, with its shape keys.
    func testFamilyKeysGiveTheFamilysShape() throws {
        var c = TrainConfig()
        for o in ["model.family=qwen2", "model.n_embd=64", "model.n_head=4", "model.n_kv_head=2", "model.intermediate_size=96",
                  "model.rope_theta=1000000", "model.rms_norm_eps=1e-5", "model.tie_word_embeddings=false"] {
            try c.apply(override: o)
        }
        try c.validate(source: "c")
        guard case let .random(any) = RunSettings(c).model, let cfg = any as? LlamaConfig else {
            return XCTFail("expected a random Llama-family model")
        }
        XCTAssertEqual(cfg.family, .qwen2)
        XCTAssertEqual(cfg.nKVHead, 2)
        XCTAssertEqual(cfg.headDim, 16)
        XCTAssertEqual(cfg.intermediateSize, 96)
        XCTAssertEqual(cfg.ropeTheta, 1e6)
        XCTAssertEqual(cfg.rmsNormEps, 1e-5)
        XCTAssertFalse(cfg.tieWordEmbeddings)
        XCTAssertTrue(cfg.qkvBias)
        let model = try RunSettings(c).initialModel()
        XCTAssertEqual(model.config.family, .qwen2)
        XCTAssertNotNil(model.layout.tensor(named: "lm_head.weight"))
        // By default the family is GPT-2.
        guard case let .random(g) = RunSettings(TrainConfig()).model else { return XCTFail("expected a random model") }
        XCTAssertEqual(g.family, .gpt2)
    }

    func testFamilyKeysAreChecked() throws {
        let cases: [([String], String)] = [
            (["model.n_kv_head=2"], "key model.n_kv_head: applies to model.family llama or qwen2 only"),
            (["model.rope_theta=500"], "key model.rope_theta: applies to model.family llama or qwen2"),
            (["model.family=llama", "model.n_kv_head=3"], "key model.n_kv_head: must divide model.n_head"),
            (["model.family=llama", "model.n_embd=12", "model.n_head=4"], "key model.n_head: rotary positions need an even head size"),
            (["model.family=mistral"], "key model.family: must be one of gpt2, llama, qwen2"),
        ]
        for (overrides, fragment) in cases {
            var c = TrainConfig()
            do {
                for o in overrides { try c.apply(override: o) }
                try c.validate(source: "c")
                XCTFail("\(overrides) was accepted")
            } catch {
                XCTAssertTrue("\(error)".contains(fragment), "\(overrides) -> \(error)")
            }
        }
    }
}

final class ConfigDocsTests: XCTestCase {
    /// Docs/config.md lists every key of the table with its default and allowed values,
    /// as `kat-dist train --keys` prints them.
    func testEveryKeyIsDocumentedWithItsDefaultAndAllowedValues() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Docs/config.md").standardized.path
        let doc = try String(contentsOfFile: path, encoding: .utf8)
        for k in TrainConfig.keys {
            let row = doc.split(separator: "\n").first { $0.hasPrefix("| `\(k.name)` |") }
            XCTAssertNotNil(row, "\(k.name) is not in Docs/config.md")
            XCTAssertTrue(row?.contains("`\(k.defaultValue.serialized)`") ?? false, "\(k.name): default \(k.defaultValue.serialized)")
            XCTAssertTrue(row?.contains(k.kind.allowed.replacingOccurrences(of: "|", with: "or")) ?? false, "\(k.name): \(k.kind.allowed)")
        }
    }
}
