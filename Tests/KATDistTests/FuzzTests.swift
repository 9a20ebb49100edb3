import Foundation
import XCTest
import KATModel
import KATTrie
@testable import KATDist
import KATEnv
import KATRL
import KATSupport

/// A bounded fuzz run: random mutations of valid inputs go through every parser kat-dist
/// has; each must return or throw its error, never crash (a crash ends this process and
/// fails the suite). The counts are printed for Docs/robustness.md.
final class FuzzTests: XCTestCase {
    var rng = SplitMix64(seed: 2024)

    func mutate(_ input: [UInt8]) -> [UInt8] {
        var b = input
        for _ in 0..<(1 + Int(rng.next() % 4)) {
            let i = b.isEmpty ? 0 : Int(rng.next() % UInt64(b.count))
            switch rng.next() % 7 {
            case 0 where !b.isEmpty: b[i] ^= UInt8(1 << (rng.next() % 8))
            case 1 where !b.isEmpty: b[i] = UInt8(rng.next() % 256)
            case 2: b.insert(UInt8(rng.next() % 256), at: i)
            case 3 where !b.isEmpty: b.remove(at: i)
            case 4: b = Array(b.prefix(i))
            case 5 where !b.isEmpty: b.insert(contentsOf: b[i..<min(b.count, i + 1 + Int(rng.next() % 16))], at: i)
            default:
                let specials: [String] = ["null", "-", "1e999", "[", "{", "\"", "\\u", "0.0", "-1", "99999999999999999999", "\u{0}"]
                b.insert(contentsOf: Array(specials[Int(rng.next() % UInt64(specials.count))].utf8), at: i)
            }
        }
        return b
    }

    func fuzz(_ name: String, _ seed: [UInt8], rounds: Int = 3000, _ body: ([UInt8]) -> Bool) -> (accepted: Int, rejected: Int) {
        var ok = 0, bad = 0
        for _ in 0..<rounds { if body(mutate(seed)) { ok += 1 } else { bad += 1 } }
        print("fuzz \(name): \(rounds) mutations, \(ok) accepted, \(bad) rejected with an error, 0 crashes")
        return (ok, bad)
    }

    func testMutatedInputsNeverCrash() throws {
        let line = Array(#"{"id": "t1", "group": "g", "tokens": [256, 72, 105, 258, 1, 2], "loss_mask": [0, 0, 0, 0, 1, 1], "logprobs": [null, null, null, null, -0.5, -1.25], "reward": 1.0, "entropy": 2.5, "policy_version": 3}"#.utf8)
        let r1 = fuzz("trajectory line", line) { b in
            (try? TrajectoryReader.parse(line: b, path: "f", lineNo: 1, vocabSize: 260, maxPositions: 64)) != nil
        }
        XCTAssertGreaterThan(r1.rejected, 0)

        let config = Array(#"{"model": {"n_embd": 64, "n_head": 4}, "optimizer": {"lr": 0.001, "betas": [0.9, 0.99]}, "loss": {"mode": "token-mean"}, "rollout": {"branch_points": [4, 8]}, "steps": 10}"#.utf8)
        _ = fuzz("config", config) { b in
            guard let c = try? TrainConfig.parse(text: String(decoding: b, as: UTF8.self), source: "c") else { return false }
            return (try? c.validate(source: "c")) != nil
        }

        let hf = Array(GPT2Config(vocabSize: 260, nPositions: 32, nEmbd: 16, nLayer: 1, nHead: 2).huggingFaceJSON().serialized.utf8)
        _ = fuzz("model config.json", hf) { b in (try? GPT2Config.fromHuggingFaceJSON(String(decoding: b, as: UTF8.self), source: "c")) != nil }

        let m = try GPT2(config: GPT2Config(vocabSize: 260, nPositions: 8, nEmbd: 4, nLayer: 1, nHead: 2))
        let p = UnsafeBufferPointer(m.params.buffer)
        let st = Array(SafetensorsFile.serialize(m.layout.tensors.map { ($0.name, $0.shape, UnsafeBufferPointer(rebasing: p[$0.offset..<($0.offset + $0.count)])) }))
        _ = fuzz("safetensors", st) { b in
            guard let f = try? SafetensorsFile.parse(data: Data(b), path: "m") else { return false }
            for e in f.entries { _ = try? f.floats(e.name) }
            return true
        }

        let msg = TrajectoryCodec.encode([Trajectory(id: "a", group: "g", tokens: [1, 2, 3], lossMask: [0, 1, 1], logprobs: [.nan, -1, -2],
                                                     reward: 1, entropy: 2, policyVersion: 4, source: "x")])
        _ = fuzz("trajectory message", msg) { b in (try? TrajectoryCodec.decode(b)) != nil }

        let reply = Array(#"{"observation": "fail: x=2 want 7", "reward": 0.5, "done": false, "info": {"k": [1, 2, {"z": null}]}}"#.utf8)
        _ = fuzz("JSON", reply) { b in (try? JSON.parse(b)) != nil }

        let program = Array(": f dup [ 1 - dup f ] ; x 3 * 5 + f".utf8)
        _ = fuzz("stack program", program) { b in
            if case .success = StackLanguage.run(String(decoding: b, as: UTF8.self), input: 4) { return true }
            return false
        }
    }
}
