import Foundation
import XCTest
@testable import KATModel
import KATSupport

/// safetensors and model directories: round trips, and every fault of the format
/// rejected with a message that names the file and the fault.
final class FormatTests: XCTestCase {
    var dir = ""
    override func setUp() { dir = temporaryDirectory("fmt") }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func header(_ json: String, data: [UInt8] = [], declaredLength: UInt64? = nil) -> Data {
        var d = Data()
        var n = (declaredLength ?? UInt64(json.utf8.count)).littleEndian
        withUnsafeBytes(of: &n) { d.append(contentsOf: $0) }
        d.append(contentsOf: Array(json.utf8))
        d.append(contentsOf: data)
        return d
    }

    func expectFault(_ data: Data, _ fragment: String, file: StaticString = #filePath, line: UInt = #line) {
        let path = dir + "/bad.safetensors"
        try? data.write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try SafetensorsFile.read(path: path), file: file, line: line) { e in
            let msg = "\(e)"
            XCTAssertTrue(msg.contains(path), "message does not name the file: \(msg)", file: file, line: line)
            XCTAssertTrue(msg.contains(fragment), "expected '\(fragment)' in: \(msg)", file: file, line: line)
        }
    }

    func testRoundTrip() throws {
        let a: [Float] = [1, -2.5, 3e-8, .greatestFiniteMagnitude, 0, -0]
        let b: [Float] = (0..<12).map { Float($0) * 0.25 }
        let data = a.withUnsafeBufferPointer { pa in
            b.withUnsafeBufferPointer { pb in
                SafetensorsFile.serialize([("a", [2, 3], pa), ("b.c", [12], pb)], metadata: ["step": "7"])
            }
        }
        let path = dir + "/x.safetensors"
        try data.write(to: URL(fileURLWithPath: path))
        let f = try SafetensorsFile.read(path: path)
        XCTAssertEqual(try f.floats("a").map(\.bitPattern), a.map(\.bitPattern))
        XCTAssertEqual(try f.floats("b.c"), b)
        XCTAssertEqual(f.entry("a")?.shape, [2, 3])
        XCTAssertEqual(f.metadata, ["format": "pt", "step": "7"])
        XCTAssertEqual((8 + Int(data.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })) % 8, 0, "data section aligned")
    }

    func testReadsOtherFloatDTypes() throws {
        // 1.5 in F16 is 0x3E00, in BF16 0x3FC0; 2.25 in F64.
        var data = [UInt8]()
        data += [0x00, 0x3E, 0xC0, 0x3F]
        withUnsafeBytes(of: (2.25 as Double).bitPattern.littleEndian) { data += $0 }
        let h = #"{"h":{"dtype":"F16","shape":[1],"data_offsets":[0,2]},"b":{"dtype":"BF16","shape":[1],"data_offsets":[2,4]},"d":{"dtype":"F64","shape":[1],"data_offsets":[4,12]}}"#
        let path = dir + "/t.safetensors"
        try header(h, data: data).write(to: URL(fileURLWithPath: path))
        let f = try SafetensorsFile.read(path: path)
        XCTAssertEqual(try f.floats("h"), [1.5])
        XCTAssertEqual(try f.floats("b"), [1.5])
        XCTAssertEqual(try f.floats("d"), [2.25])
    }

    func testShortFile() { expectFault(Data([1, 2, 3]), "shorter than the 8-byte header length") }
    func testHeaderOver100MB() { expectFault(header("{}", declaredLength: 200_000_000), "exceeds the 100 MB limit") }
    func testHeaderLongerThanFile() { expectFault(header("{}", declaredLength: 50), "but the header needs") }
    func testBadJSON() { expectFault(header("{\"a\": [1, }"), "header is not valid JSON") }
    func testHeaderNotObject() { expectFault(header("[1,2]"), "header is not a JSON object") }
    func testUnknownDType() {
        expectFault(header(#"{"a":{"dtype":"F8_E9","shape":[1],"data_offsets":[0,1]}}"#, data: [0]), "unknown dtype F8_E9")
    }
    func testOverlappingOffsets() {
        expectFault(header(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                           data: [UInt8](repeating: 0, count: 8)), "overlap")
    }
    func testGappedOffsets() {
        expectFault(header(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#,
                           data: [UInt8](repeating: 0, count: 12)), "gap in the data")
    }
    func testOffsetsNotFromZero() {
        expectFault(header(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, data: [UInt8](repeating: 0, count: 8)), "gap in the data")
    }
    func testSizeDoesNotMatchShape() {
        expectFault(header(#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, data: [UInt8](repeating: 0, count: 8)), "needs 12")
    }
    func testTruncatedData() {
        expectFault(header(#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, data: [UInt8](repeating: 0, count: 10)), "truncated")
    }
    func testTrailingBytes() {
        expectFault(header(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, data: [UInt8](repeating: 0, count: 9)), "after the last tensor")
    }
    func testNonStringMetadata() {
        expectFault(header(#"{"__metadata__":{"format":1}}"#), "is not a string")
    }
    func testMissingFile() {
        XCTAssertThrowsError(try SafetensorsFile.read(path: dir + "/none.safetensors")) { XCTAssertTrue("\($0)".contains("no such file")) }
    }

    // MARK: - Model directories

    func smallModel() throws -> GPT2 {
        let m = try GPT2(config: GPT2Config(vocabSize: 260, nPositions: 32, nEmbd: 16, nLayer: 2, nHead: 2))
        m.initialize(seed: 42)
        return m
    }

    func testModelDirectoryRoundTrip() throws {
        let m = try smallModel()
        try ModelDirectory.save(m, to: dir + "/model")
        let back = try ModelDirectory.load(dir + "/model")
        XCTAssertEqual(back.config as? GPT2Config, m.config)
        XCTAssertEqual(back.params.array, m.params.array)
        let cfgText = try String(contentsOfFile: dir + "/model/config.json", encoding: .utf8)
        for key in ["\"model_type\": \"gpt2\"", "\"GPT2LMHeadModel\"", "\"activation_function\": \"gelu_new\"", "\"tie_word_embeddings\": true", "\"sep_token_id\": 258"] {
            XCTAssertTrue(cfgText.contains(key), "config.json lacks \(key)")
        }
    }

    func testMissingTensorIsNamed() throws {
        let m = try smallModel()
        try ModelDirectory.save(m, to: dir + "/model")
        let f = try SafetensorsFile.read(path: dir + "/model/model.safetensors")
        let p = UnsafeBufferPointer(m.params.buffer)
        let keep = m.layout.tensors.filter { $0.name != "transformer.h.1.mlp.c_fc.bias" }
        try SafetensorsFile.serialize(keep.map { ($0.name, $0.shape, UnsafeBufferPointer(rebasing: p[$0.offset..<($0.offset + $0.count)])) })
            .write(to: URL(fileURLWithPath: dir + "/model/model.safetensors"))
        _ = f
        XCTAssertThrowsError(try ModelDirectory.load(dir + "/model")) { XCTAssertTrue("\($0)".contains("missing tensor transformer.h.1.mlp.c_fc.bias"), "\($0)") }
    }

    func testShapeThatDoesNotMatchConfigIsNamed() throws {
        let m = try smallModel()
        try ModelDirectory.save(m, to: dir + "/model")
        var cfg = m.config.huggingFaceJSON()
        if case var .object(members) = cfg {
            members = members.map { $0.0 == "n_positions" ? ("n_positions", JSON(64)) : $0 }
            cfg = .object(members)
        }
        try cfg.pretty.write(toFile: dir + "/model/config.json", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try ModelDirectory.load(dir + "/model")) {
            XCTAssertTrue("\($0)".contains("transformer.wpe.weight has shape [32, 16], the config needs [64, 16]"), "\($0)")
        }
    }

    func testConfigFaultsNameTheKey() throws {
        let cases: [(String, String)] = [
            (#"{"model_type":"gpt2","vocab_size":260,"n_positions":8,"n_embd":6,"n_layer":1,"n_head":4}"#, "n_head"),
            (#"{"model_type":"llama","vocab_size":260,"n_positions":8,"n_embd":8,"n_layer":1,"n_head":2}"#, "model_type"),
            (#"{"model_type":"gpt2","vocab_size":260,"n_positions":8,"n_embd":8,"n_layer":1,"n_head":2,"activation_function":"relu"}"#, "activation_function"),
            (#"{"model_type":"gpt2","vocab_size":260,"n_positions":8,"n_embd":8,"n_layer":1,"n_head":2,"tie_word_embeddings":false}"#, "tie_word_embeddings"),
            (#"{"model_type":"gpt2","n_positions":8,"n_embd":8,"n_layer":1,"n_head":2}"#, "vocab_size"),
            (#"{"model_type":"gpt2","vocab_size":"x","n_positions":8,"n_embd":8,"n_layer":1,"n_head":2}"#, "vocab_size"),
            (#"{"model_type":"gpt2","vocab_size":260,"n_positions":8,"n_embd":8,"n_layer":1,"n_head":2,"eos_token_id":300}"#, "eos_token_id"),
            ("{not json", "not valid JSON"),
        ]
        for (text, key) in cases {
            XCTAssertThrowsError(try GPT2Config.fromHuggingFaceJSON(text, source: "c.json")) { e in
                XCTAssertTrue("\(e)".contains(key) && "\(e)".contains("c.json"), "\(e)")
            }
        }
    }

    func testPublishedConfigWithoutKatTokensLoads() throws {
        let text = #"{"model_type":"gpt2","vocab_size":50257,"n_positions":1024,"n_ctx":1024,"n_embd":768,"n_layer":12,"n_head":12,"activation_function":"gelu_new","layer_norm_epsilon":1e-05,"bos_token_id":50256,"eos_token_id":50256,"n_inner":null}"#
        let c = try GPT2Config.fromHuggingFaceJSON(text, source: "c.json")
        XCTAssertEqual(c.vocabSize, 50257)
        XCTAssertNil(c.sepTokenId)
        XCTAssertEqual(c.parameterCount, 124_439_808)
    }
}

final class SHA256Tests: XCTestCase {
    /// Known answers from FIPS 180-4, including multi-block and 64-byte-boundary inputs.
    func testKnownAnswers() {
        XCTAssertEqual(SHA256.hex([]), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(SHA256.hex(Array("abc".utf8)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(SHA256.hex(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        XCTAssertEqual(SHA256.hex([UInt8](repeating: 0x61, count: 1_000_000)),
                       "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
        var split = SHA256()
        let msg = Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)
        split.update(Array(msg[0..<5])); split.update(Array(msg[5...]))
        XCTAssertEqual(split.finalize().map { String(format: "%02x", $0) }.joined(),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
    }
}
