import Foundation
import XCTest
@testable import KATModel

let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures").path

func temporaryDirectory(_ tag: String = "kat") -> String {
    let d = NSTemporaryDirectory() + "\(tag)-\(UUID().uuidString)"
    try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    return d
}

/// kat-dist against a fixture made by PyTorch + transformers (make_hf_fixture.py).
final class HuggingFaceTests: XCTestCase {
    func testMatchesTransformersLogitsLogprobsAndGradient() throws {
        let model = try ModelDirectory.load(fixtures + "/hf-gpt2")
        let expected = try SafetensorsFile.read(path: fixtures + "/hf-expected.safetensors")
        let tau = Float(expected.metadata["temperature"] ?? "") ?? 0
        XCTAssertEqual(tau, 0.8)
        var seqs: [[Int]] = []
        for k in 0..<3 { seqs.append(try expected.floats("tokens_\(k)").map { Int($0) }) }
        let batch = try PackedBatch(sequences: seqs, vocabSize: 260, maxPositions: 64)
        let out = model.forward(batch, temperature: tau)
        let logits = model.logits(rows: Array(0..<batch.count))
        var row = 0
        var weights = [Float](repeating: 0, count: batch.count)
        let n = seqs.reduce(0) { $0 + $1.count - 1 }
        for (k, s) in seqs.enumerated() {
            let el = try expected.floats("logits_\(k)"), lp = try expected.floats("logprobs_\(k)"), en = try expected.floats("entropies_\(k)")
            for t in 0..<s.count {
                // Two fp32 implementations with different summation orders: logits of
                // magnitude ~10 agree to ~1e-5; 2e-4 leaves margin and catches any real error.
                for j in 0..<260 { XCTAssertEqual(logits[row + t][j], el[t * 260 + j], accuracy: 2e-4, "logit seq \(k) pos \(t) tok \(j)") }
                if t > 0 {
                    XCTAssertEqual(out.logprobs[row + t], lp[t], accuracy: 2e-4, "logprob seq \(k) pos \(t)")
                    XCTAssertEqual(out.entropies[row + t], en[t], accuracy: 2e-4, "entropy seq \(k) pos \(t)")
                    // The stated loss: -(1/N) sum w_t logprob_t with w_t = 1 + (t mod 3)/2.
                    weights[row + t] = -(1 + Float(t % 3) / 2) / Float(n)
                }
            }
            row += s.count
        }
        model.zeroGrad()
        model.backward(dlogprobs: weights)
        var worst = 0.0
        for t in model.layout.tensors {
            let g = try expected.floats("grad." + t.name)
            let scale = g.map { abs($0) }.max() ?? 0
            for i in 0..<t.count {
                // Relative to the tensor's largest entry: fp32 gradients of two
                // implementations agree to ~1e-6 of that scale; 1e-4 is a wide margin.
                let err = Double(abs(model.grads[t.offset + i] - g[i])) / Double(max(scale, 1e-8))
                worst = max(worst, err)
                XCTAssertLessThan(err, 1e-4, "\(t.name)[\(i)]: \(model.grads[t.offset + i]) vs \(g[i])")
                if err >= 1e-4 { break }
            }
        }
        print("HF agreement: worst relative gradient error \(worst)")
    }

    /// The published GPT-2 name forms load: no `transformer.` prefix, `lm_head.weight`
    /// equal to wte, and attention mask buffers.
    func testLoadsPublishedNameForms() throws {
        let model = try ModelDirectory.load(fixtures + "/hf-gpt2")
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.copyItem(atPath: fixtures + "/hf-gpt2/config.json", toPath: dir + "/config.json")
        let p = UnsafeBufferPointer(model.params.buffer)
        var tensors: [(name: String, shape: [Int], values: UnsafeBufferPointer<Float>)] = []
        let mask = [Float](repeating: 1, count: 64 * 64)
        try mask.withUnsafeBufferPointer { maskBuf in
            for t in model.layout.tensors.reversed() {
                tensors.append((String(t.name.dropFirst("transformer.".count)), t.shape, UnsafeBufferPointer(rebasing: p[t.offset..<(t.offset + t.count)])))
            }
            let wte = model.layout.tensor(named: "transformer.wte.weight")!
            tensors.append(("lm_head.weight", wte.shape, UnsafeBufferPointer(rebasing: p[wte.offset..<(wte.offset + wte.count)])))
            tensors.append(("h.0.attn.bias", [1, 1, 64, 64], maskBuf))
            tensors.append(("h.1.attn.masked_bias", [1, 1, 64, 64], maskBuf))
            try SafetensorsFile.serialize(tensors).write(to: URL(fileURLWithPath: dir + "/model.safetensors"))
        }
        let loaded = try ModelDirectory.load(dir)
        XCTAssertEqual(loaded.params.array, model.params.array)
    }
}
