import Foundation
import XCTest
@testable import KATModel
import KATSupport

/// kat-dist's Llama family against fixtures made by PyTorch + transformers
/// (make_hf_llama_fixtures.py): a Llama with an untied head and q/k/v/o biases, and a
/// Qwen2 with a tied head, q/k/v biases and a head size that makes the queries wider than
/// C. Both have 4 query heads and 2 key-value heads.
final class HuggingFaceLlamaTests: XCTestCase {
    /// Loads `name`, runs the fixture's three sequences packed flat at the fixture's
    /// temperature, and compares logits, log-probs, entropies and the gradient of the
    /// stated loss with transformers'. Returns the model for further checks.
    @discardableResult
    func assertMatchesTransformers(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws -> any LanguageModel {
        let model = try ModelDirectory.load(fixtures + "/" + name)
        let expected = try SafetensorsFile.read(path: fixtures + "/\(name)-expected.safetensors")
        let tau = Float(expected.metadata["temperature"] ?? "") ?? 0
        XCTAssertEqual(tau, 0.8, file: file, line: line)
        var seqs: [[Int]] = []
        for k in 0..<3 { seqs.append(try expected.floats("tokens_\(k)").map { Int($0) }) }
        let batch = try PackedBatch(sequences: seqs, vocabSize: 260, maxPositions: 64)
        let out = model.forward(batch, temperature: tau)
        let logits = model.logits(rows: Array(0..<batch.count))
        var row = 0
        var weights = [Float](repeating: 0, count: batch.count)
        let n = seqs.reduce(0) { $0 + $1.count - 1 }
        var worstLogit: Float = 0
        for (k, s) in seqs.enumerated() {
            let el = try expected.floats("logits_\(k)"), lp = try expected.floats("logprobs_\(k)"), en = try expected.floats("entropies_\(k)")
            for t in 0..<s.count {
                // Two fp32 implementations with different summation orders: logits of
                // magnitude ~10 agree to ~1e-5; 2e-4 leaves margin and catches any real
                // error (a wrong rotation, head or norm moves them by O(1)).
                for j in 0..<260 {
                    worstLogit = max(worstLogit, abs(logits[row + t][j] - el[t * 260 + j]))
                    XCTAssertEqual(logits[row + t][j], el[t * 260 + j], accuracy: 2e-4, "\(name) logit seq \(k) pos \(t) tok \(j)", file: file, line: line)
                }
                if t > 0 {
                    XCTAssertEqual(out.logprobs[row + t], lp[t], accuracy: 2e-4, "\(name) logprob seq \(k) pos \(t)", file: file, line: line)
                    XCTAssertEqual(out.entropies[row + t], en[t], accuracy: 2e-4, "\(name) entropy seq \(k) pos \(t)", file: file, line: line)
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
            XCTAssertEqual(g.count, t.count, "\(name) \(t.name)", file: file, line: line)
            let scale = g.map { abs($0) }.max() ?? 0
            for i in 0..<t.count {
                // Relative to the tensor's largest entry: fp32 gradients of two
                // implementations agree to ~1e-6 of that scale; 1e-4 is a wide margin.
                let err = Double(abs(model.grads[t.offset + i] - g[i])) / Double(max(scale, 1e-8))
                worst = max(worst, err)
                XCTAssertLessThan(err, 1e-4, "\(name) \(t.name)[\(i)]: \(model.grads[t.offset + i]) vs \(g[i])", file: file, line: line)
                if err >= 1e-4 { break }
            }
        }
        print("HF agreement \(name): worst logit difference \(worstLogit), worst relative gradient error \(worst)")
        return model
    }

    func testLlamaWithUntiedHeadAndBiasesMatchesTransformers() throws {
        let model = try assertMatchesTransformers("hf-llama")
        XCTAssertEqual(model.config.family, .llama)
        XCTAssertNotNil(model.layout.tensor(named: "lm_head.weight"), "the fixture's head is untied")
        XCTAssertNotNil(model.layout.tensor(named: "model.layers.1.self_attn.o_proj.bias"))
    }

    func testQwen2WithTiedHeadAndWideQueriesMatchesTransformers() throws {
        let model = try assertMatchesTransformers("hf-qwen2")
        XCTAssertEqual(model.config.family, .qwen2)
        XCTAssertNil(model.layout.tensor(named: "lm_head.weight"), "the fixture's head is tied")
        XCTAssertEqual(model.layout.tensor(named: "model.layers.0.self_attn.q_proj.weight")?.shape, [48, 32])
        XCTAssertEqual(model.layout.tensor(named: "model.layers.0.self_attn.k_proj.weight")?.shape, [24, 32])
    }

    /// A directory kat-dist writes reads back to the same weights and config, for both
    /// families (what transformers reads is checked by check_transformers_load.py).
    func testSavedDirectoryRoundTrips() throws {
        for name in ["hf-llama", "hf-qwen2"] {
            let model = try ModelDirectory.load(fixtures + "/" + name)
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            try ModelDirectory.save(model, to: dir)
            let back = try ModelDirectory.load(dir)
            XCTAssertEqual(back.config.shapeSummary, model.config.shapeSummary, name)
            XCTAssertEqual(back.params.array, model.params.array, name)
            let json = try JSON.parse(String(contentsOfFile: dir + "/config.json", encoding: .utf8))
            XCTAssertEqual(json["model_type"]?.stringValue, name == "hf-llama" ? "llama" : "qwen2")
            XCTAssertEqual(json["architectures"], [name == "hf-llama" ? "LlamaForCausalLM" : "Qwen2ForCausalLM"])
            XCTAssertEqual(json["torch_dtype"], "float32")
        }
    }
}

/// Reading Llama-family configs: what kat-dist computes exactly is taken, the rest is
/// refused with the key named.
final class LlamaConfigTests: XCTestCase {
    let base = #""vocab_size":260,"max_position_embeddings":64,"hidden_size":32,"intermediate_size":48,"num_hidden_layers":2,"num_attention_heads":4"#

    func testFaultsNameTheKey() {
        let cases: [(String, String)] = [
            (#"{"model_type":"mistral","#, "model_type"),
            (#"{"model_type":"llama","rope_scaling":{"rope_type":"llama3","factor":8.0},"#, "rope_scaling"),
            (#"{"model_type":"llama","rope_parameters":{"rope_type":"yarn","rope_theta":10000.0},"#, "rope_parameters"),
            (#"{"model_type":"qwen2","use_sliding_window":true,"#, "use_sliding_window"),
            (#"{"model_type":"qwen2","layer_types":["full_attention","sliding_attention"],"#, "layer_types"),
            (#"{"model_type":"llama","partial_rotary_factor":0.5,"#, "partial_rotary_factor"),
            (#"{"model_type":"llama","hidden_act":"gelu","#, "hidden_act"),
            (#"{"model_type":"llama","mlp_bias":true,"#, "mlp_bias"),
            (#"{"model_type":"llama","attention_dropout":0.1,"#, "attention_dropout"),
            (#"{"model_type":"llama","num_key_value_heads":3,"#, "num_key_value_heads"),
            (#"{"model_type":"llama","head_dim":7,"#, "head_dim"),
            (#"{"model_type":"llama","eos_token_id":300,"#, "eos_token_id"),
        ]
        for (head, key) in cases {
            let text = head + base + "}"
            XCTAssertThrowsError(try modelConfiguration(fromHuggingFaceJSON: text, source: "c.json"), key) { e in
                XCTAssertTrue("\(e)".contains("key \(key)") && "\(e)".contains("c.json"), "\(e)")
            }
        }
    }

    /// The rotary base comes from rope_parameters (newer configs) or rope_theta; default
    /// rotary scaling, a false sliding window and full-attention layers are accepted.
    func testAcceptedForms() throws {
        let newer = try modelConfiguration(fromHuggingFaceJSON: #"{"model_type":"qwen2","rope_parameters":{"rope_theta":1000000.0,"rope_type":"default"},"use_sliding_window":false,"sliding_window":4096,"layer_types":["full_attention","full_attention"],"#
                                           + base + "}", source: "c.json")
        let q = try XCTUnwrap(newer as? LlamaConfig)
        XCTAssertEqual(q.ropeTheta, 1e6)
        XCTAssertEqual(q.nKVHead, 4, "num_key_value_heads defaults to the query heads")
        XCTAssertEqual(q.headDim, 8, "head_dim defaults to C / NH")
        XCTAssertTrue(q.qkvBias)
        XCTAssertFalse(q.outputBias)
        XCTAssertFalse(q.tieWordEmbeddings, "transformers' default")
        let older = try modelConfiguration(fromHuggingFaceJSON: #"{"model_type":"llama","rope_theta":500000.0,"rope_scaling":null,"num_key_value_heads":2,"eos_token_id":[7,8],"tie_word_embeddings":true,"#
                                           + base + "}", source: "c.json")
        let l = try XCTUnwrap(older as? LlamaConfig)
        XCTAssertEqual(l.ropeTheta, 5e5)
        XCTAssertEqual(l.nKVHead, 2)
        XCTAssertEqual(l.eosTokenId, 7, "a list of end ids gives its first")
        XCTAssertNil(l.bosTokenId, "no byte-tokenizer ids are assumed")
        XCTAssertFalse(l.qkvBias)
    }

    /// FLOPs per computed token are 6 x the layers' parameters: with biases and norms
    /// left out, exactly the layers' matrices of the layout.
    func testLayerFLOPsAreSixTimesTheLayerMatrices() throws {
        let cfg = LlamaConfig(nPositions: 64, nEmbd: 32, nLayer: 3, nHead: 4, nKVHead: 2, headDim: 12, intermediateSize: 40, tieWordEmbeddings: false)
        let layout = LlamaLayout(config: cfg)
        let matrices = layout.tensors.filter { $0.name.hasPrefix("model.layers.") && $0.shape.count == 2 }.reduce(0) { $0 + $1.count }
        XCTAssertEqual(cfg.layerFLOPsPerToken, 6 * Double(matrices))
        XCTAssertEqual(cfg.headFLOPsPerRow, 6 * Double(layout.tensor(named: "lm_head.weight")?.count ?? 0))
        let g = GPT2Config(nPositions: 64, nEmbd: 32, nLayer: 3, nHead: 4)
        let gMatrices = ParameterLayout(config: g).tensors.filter { $0.name.hasPrefix("transformer.h.") && $0.shape.count == 2 }.reduce(0) { $0 + $1.count }
        XCTAssertEqual(g.layerFLOPsPerToken, 6 * Double(gMatrices))
    }
}
