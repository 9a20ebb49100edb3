import XCTest
@testable import KATDist
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
