import Foundation
import XCTest
@testable import KATModel
import KATSupport

/// BF16, F16 and sharded model directories written by other programs
/// (`Fixtures/make_dtype_fixture.py`: numpy, ml_dtypes, safetensors), BF16 writing, and
/// the format faults of each form, named with the file and the fault.
final class DTypeTests: XCTestCase {
    let root = fixtures + "/dtypes"
    var dir = ""
    override func setUp() { dir = temporaryDirectory("dtypes") }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    /// The float32 values of every tensor of a loaded model, by name.
    func values(_ m: any LanguageModel) -> [String: [Float]] {
        var out: [String: [Float]] = [:]
        for t in m.layout.tensors { out[t.name] = Array(m.params.array[t.offset..<(t.offset + t.count)]) }
        return out
    }

    // MARK: - Reading

    /// A BF16 (F16) directory loads as the float32 widening of its bfloat16 (float16)
    /// values, exactly as numpy widens them.
    func testBF16AndF16DirectoriesLoadAsTheirFloat32Values() throws {
        let expected = try SafetensorsFile.read(path: root + "/expected.safetensors")
        for form in ["bf16", "f16"] {
            let got = values(try ModelDirectory.load(root + "/" + form))
            for (name, v) in got {
                XCTAssertEqual(v.map(\.bitPattern), try expected.floats(form + "." + name).map(\.bitPattern), "\(form) \(name)")
            }
            // Rounding moved the weights, by at most half a unit in the last place.
            let f32 = values(try ModelDirectory.load(root + "/f32"))
            let halfULP: Float = form == "bf16" ? 1.0 / 256 : 1.0 / 2048 // relative: 2^-(mantissa bits + 1)
            for (name, v) in got {
                for (a, b) in zip(v, f32[name] ?? []) {
                    XCTAssertLessThanOrEqual(abs(a - b), halfULP * abs(b) + 1e-7, "\(form) \(name)") // + subnormal float16 spacing
                }
            }
        }
    }

    /// A directory of three shards and an index loads the same weights as the single file.
    func testShardedDirectoryLoadsTheSameWeights() throws {
        let single = try ModelDirectory.load(root + "/f32")
        let sharded = try ModelDirectory.load(root + "/sharded")
        XCTAssertEqual(sharded.params.array.map(\.bitPattern), single.params.array.map(\.bitPattern))
        let weights = try ModelWeights.open(directory: root + "/sharded")
        XCTAssertEqual(Set(weights.tensors.map { URL(fileURLWithPath: $0.file.path).lastPathComponent }).count, 3)
    }

    // MARK: - Writing

    /// kat-dist rounds float32 to bfloat16 as ml_dtypes (and PyTorch) do: to nearest, ties to
    /// even, overflow to infinity, NaN to a quiet NaN; on ties, subnormals, extremes and
    /// random values, bit for bit.
    func testBF16RoundingEqualsMLDtypes() throws {
        let f = try SafetensorsFile.read(path: root + "/rounding.safetensors")
        let x = try f.floats("x")
        let e = try XCTUnwrap(f.entry("x_bf16"))
        let expectedBits: [UInt16] = try f.floats("x_bf16").map { UInt16($0.bitPattern >> 16) }
        XCTAssertEqual(e.dtype, .BF16)
        XCTAssertEqual(x.map(SafetensorsFile.bfloat16Bits), expectedBits)
        // And the bytes kat-dist writes are those bits.
        let data = x.withUnsafeBufferPointer { SafetensorsFile.serialize([("x", [x.count], $0)], dtype: .BF16) }
        try data.write(to: URL(fileURLWithPath: dir + "/w.safetensors"))
        let back = try SafetensorsFile.read(path: dir + "/w.safetensors")
        XCTAssertEqual(back.entry("x")?.dtype, .BF16)
        XCTAssertEqual(try back.floats("x").map { UInt16($0.bitPattern >> 16) }, expectedBits)
    }

    /// A model saved in BF16 reads back as its weights rounded to bfloat16 (within half a
    /// unit in the last place), config.json says bfloat16, and saving the read-back model
    /// again writes the same bytes.
    func testBF16SaveRoundTrip() throws {
        let m = try GPT2(config: GPT2Config(vocabSize: 260, nPositions: 16, nEmbd: 16, nLayer: 2, nHead: 2))
        m.initialize(seed: 9)
        try ModelDirectory.save(m, to: dir + "/a", dtype: .BF16)
        let back = try ModelDirectory.load(dir + "/a")
        XCTAssertEqual(try SafetensorsFile.read(path: dir + "/a/model.safetensors").entries.map(\.dtype), m.layout.tensors.map { _ in .BF16 })
        for (a, b) in zip(back.params.array, m.params.array) {
            XCTAssertLessThanOrEqual(abs(a - b), abs(b) / 256, "bfloat16 keeps 8 significant bits: error <= 2^-9 relative")
            XCTAssertEqual(a.bitPattern & 0xFFFF, 0)
        }
        XCTAssertTrue(try String(contentsOfFile: dir + "/a/config.json", encoding: .utf8).contains("\"torch_dtype\": \"bfloat16\""))
        try ModelDirectory.save(back, to: dir + "/b", dtype: .BF16)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: dir + "/a/model.safetensors")),
                       try Data(contentsOf: URL(fileURLWithPath: dir + "/b/model.safetensors")))
        // F32 stays the default and exact.
        try ModelDirectory.save(m, to: dir + "/c")
        XCTAssertEqual(try ModelDirectory.load(dir + "/c").params.array, m.params.array)
    }

    // MARK: - Faults

    /// A safetensors file as header members and data bytes, to damage and write back.
    struct Parts {
        var members: [(String, JSON)]
        var data: [UInt8]
        init(_ path: String) throws {
            let d = try Data(contentsOf: URL(fileURLWithPath: path))
            let n = d.count < 8 ? -1 : Int(d.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self).littleEndian })
            guard n >= 0, 8 + n <= d.count else { members = []; data = Array(d); return } // not safetensors (an index)
            members = try JSON.parse(Array(d[8..<(8 + n)])).objectMembers ?? []
            data = Array(d[(8 + n)...])
        }
        func bytes(header override: String? = nil, length: UInt64? = nil) -> Data {
            let h = Array((override ?? JSON.object(members).serialized).utf8)
            var out = Data()
            var len = (length ?? UInt64(h.count)).littleEndian
            withUnsafeBytes(of: &len) { out.append(contentsOf: $0) }
            return out + h + data
        }
        /// The tensor names in data order.
        var tensorNames: [String] {
            members.filter { $0.0 != "__metadata__" }.sorted { ($0.1["data_offsets"]?.arrayValue?.first?.intValue ?? 0) < ($1.1["data_offsets"]?.arrayValue?.first?.intValue ?? 0) }.map(\.0)
        }
        mutating func edit(_ name: String, _ key: String, _ value: JSON) {
            guard let i = members.firstIndex(where: { $0.0 == name }), case var .object(m) = members[i].1,
                  let j = m.firstIndex(where: { $0.0 == key }) else { return }
            m[j].1 = value
            members[i].1 = .object(m)
        }
        func offsets(_ name: String) -> (Int, Int) {
            let a = members.first { $0.0 == name }?.1["data_offsets"]?.arrayValue ?? []
            return (a.first?.intValue ?? 0, a.last?.intValue ?? 0)
        }
        /// Removes a tensor and its bytes, shifting the later offsets.
        mutating func remove(_ name: String) {
            let (b, e) = offsets(name)
            data.removeSubrange(b..<e)
            members.removeAll { $0.0 == name }
            for n in tensorNames {
                let (x, y) = offsets(n)
                if x >= e { edit(n, "data_offsets", JSON([x - (e - b), y - (e - b)])) }
            }
        }
    }

    /// Copies a fixture directory, damages one of its weight files, and expects loading to
    /// fail with a message naming that file (or `named`) and containing `fault`.
    func expectFault(_ form: String, file: String? = nil, named: String? = nil, _ fault: String, line: UInt = #line,
                     damage: (inout Parts) -> Data?) throws {
        let copy = dir + "/" + form + "-\(line)-\(UUID().uuidString.prefix(6))"
        try FileManager.default.copyItem(atPath: root + "/" + form, toPath: copy)
        let target = copy + "/" + (file ?? (form == "sharded" ? "model-00002-of-00003.safetensors" : "model.safetensors"))
        var parts = try Parts(target)
        if let bytes = damage(&parts) { try bytes.write(to: URL(fileURLWithPath: target)) }
        XCTAssertThrowsError(try ModelDirectory.load(copy), "\(form): \(fault)", line: line) { e in
            let m = "\(e)"
            let who = named.map { copy + "/" + $0 } ?? target
            XCTAssertTrue(m.contains(who), "\(form): \(m) does not name \(who)", line: line)
            XCTAssertTrue(m.contains(fault), "\(form): \(m) lacks \(fault)", line: line)
        }
    }

    /// Every format fault, in a BF16 file, an F16 file and a shard of a sharded directory.
    func testFormatFaultsOfEachFormNameTheFileAndTheFault() throws {
        for form in ["bf16", "f16", "sharded"] {
            try expectFault(form, "shorter than the 8-byte header length") { p in p.bytes().prefix(5) }
            try expectFault(form, "exceeds the 100 MB limit") { p in p.bytes(length: 200_000_000) }
            try expectFault(form, "header is not valid JSON") { p in p.bytes(header: "{\"a\": [1, }") }
            try expectFault(form, "unknown dtype Q4") { p in
                p.edit(p.tensorNames[0], "dtype", "Q4")
                return p.bytes()
            }
            try expectFault(form, "overlap the previous tensor") { p in
                let n = p.tensorNames[1], (b, e) = p.offsets(n)
                p.edit(n, "data_offsets", JSON([b - 2, e - 2]))
                return p.bytes()
            }
            try expectFault(form, "gap in the data") { p in
                let n = p.tensorNames[0], (b, e) = p.offsets(n)
                p.edit(n, "data_offsets", JSON([b + 2, e + 2]))
                p.data.insert(contentsOf: [0, 0], at: 0)
                return p.bytes()
            }
            try expectFault(form, "but shape [3] of") { p in
                p.edit(p.tensorNames[0], "shape", JSON([3]))
                return p.bytes()
            }
            try expectFault(form, "file is truncated") { p in
                p.data.removeLast(2)
                return p.bytes()
            }
            // A tensor missing: from a shard the index still lists it in, or from everywhere.
            let victim = form == "sharded" ? try Parts(root + "/sharded/model-00002-of-00003.safetensors").tensorNames[0] : "transformer.h.1.mlp.c_fc.bias"
            try expectFault(form, form == "sharded" ? "lacks tensor \(victim)" : "missing tensor \(victim)") { p in
                p.remove(victim)
                return p.bytes()
            }
            // A shape that does not match the config, with the right number of elements.
            let square = form == "sharded" ? try Parts(root + "/sharded/model-00002-of-00003.safetensors").tensorNames.first {
                $0.hasSuffix("c_fc.weight") || $0.hasSuffix("c_attn.weight") || $0.hasSuffix("mlp.c_proj.weight")
            } ?? "?" : "transformer.h.0.attn.c_attn.weight"
            try expectFault(form, "tensor \(square) has shape") { p in
                let shape = p.members.first { $0.0 == square }?.1["shape"]?.arrayValue?.compactMap(\.intValue) ?? []
                p.edit(square, "shape", JSON(shape.reversed()))
                return p.bytes()
            }
        }
    }

    /// Faults of the index of a sharded directory name the index or the shard.
    func testShardIndexFaultsNameTheFile() throws {
        let index = "model.safetensors.index.json"
        func withIndex(_ text: String, named: String, _ fault: String, line: UInt = #line) throws {
            try expectFault("sharded", file: index, named: named, fault, line: line) { _ in Data(text.utf8) }
        }
        let good = try String(contentsOfFile: root + "/sharded/" + index, encoding: .utf8)
        try withIndex("{\"weight_map\": ", named: index, "not valid JSON")
        try withIndex("{\"metadata\": {}}", named: index, "key weight_map: missing")
        try withIndex(good.replacingOccurrences(of: "model-00003-of-00003", with: "model-00009-of-00009"),
                      named: "model-00009-of-00009.safetensors", "no such file (named by \(index))")
        try withIndex(good.replacingOccurrences(of: "\"model-00001-of-00003.safetensors\"", with: "\"../f32/model.safetensors\""),
                      named: index, "must be the name of a file in the directory")
        let wrongShard = good.replacingOccurrences(of: "\"transformer.wte.weight\": \"model-00001-of-00003.safetensors\"",
                                                   with: "\"transformer.wte.weight\": \"model-00003-of-00003.safetensors\"")
        XCTAssertNotEqual(wrongShard, good)
        try withIndex(wrongShard, named: "model-00003-of-00003.safetensors", "lacks tensor transformer.wte.weight")
    }

    /// A directory holding only PyTorch weights gets the command that converts them.
    func testPyTorchWeightsGetTheConversionCommand() throws {
        let d = dir + "/torch"
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: root + "/f32/config.json", toPath: d + "/config.json")
        try Data([0x50, 0x4B]).write(to: URL(fileURLWithPath: d + "/pytorch_model.bin"))
        XCTAssertThrowsError(try ModelDirectory.load(d)) { e in
            let m = "\(e)"
            XCTAssertTrue(m.contains(d + "/model.safetensors: no such file") && m.contains("pytorch_model.bin"), m)
            XCTAssertTrue(m.contains("save_pretrained('\(d)', safe_serialization=True)"), m)
        }
        try FileManager.default.removeItem(atPath: d + "/pytorch_model.bin")
        XCTAssertThrowsError(try ModelDirectory.load(d)) { e in
            XCTAssertTrue("\(e)".contains("no such file (nor model.safetensors.index.json)"), "\(e)")
        }
    }
}
