import Foundation
import XCTest
@testable import KATTrie

final class TrajectoryReaderTests: XCTestCase {
    func read(_ text: String) throws -> [Trajectory] {
        let path = NSTemporaryDirectory() + "traj-\(UUID().uuidString).jsonl"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        return try TrajectoryReader.read(path: path, vocabSize: 260, maxPositions: 16)
    }

    func testReadsMaskPromptLenLogprobsAndOptionalFields() throws {
        let t = try read("""
        {"id": "a", "group": "p1", "tokens": [256, 1, 2, 3], "loss_mask": [0, 0, 1, 1], "logprobs": [null, null, -0.5, -1], "reward": 1, "entropy": 2.5, "policy_version": 3}
        {"id": 7, "tokens": [256, 4, 5], "prompt_len": 2, "advantage": -0.25}

        """)
        XCTAssertEqual(t.count, 2)
        XCTAssertEqual(t[0].lossMask, [0, 0, 1, 1])
        XCTAssertEqual(t[0].logprobs?[2], -0.5)
        XCTAssertEqual(t[0].policyVersion, 3)
        XCTAssertEqual(t[1].id, "7")
        XCTAssertNil(t[1].group)
        XCTAssertEqual(t[1].lossMask, [0, 0, 1])
        XCTAssertNil(t[1].logprobs)
        XCTAssertEqual(t[1].advantage, -0.25)
    }

    /// Every bad line of a trajectories file names the line and the field.
    func testBadLinesNameLineAndField() {
        let good = #"{"id": "ok", "tokens": [1, 2], "prompt_len": 1, "reward": 0}"#
        let cases: [(String, String)] = [
            ("not json", "not valid JSON"),
            ("[1, 2]", "must be a JSON object"),
            (#"{"tokens": [1, 2], "prompt_len": 1}"#, "field id: missing"),
            (#"{"id": "x", "tokens": "12", "prompt_len": 1}"#, "field tokens: must be an array"),
            (#"{"id": "x", "tokens": [1, 2.5], "prompt_len": 1}"#, "field tokens: entry 1 must be an integer"),
            (#"{"id": "x", "tokens": [1, 260], "prompt_len": 1}"#, "field tokens: entry 1 = 260 is outside the vocabulary"),
            (#"{"id": "x", "tokens": [1, 2], "loss_mask": [0]}"#, "field loss_mask: has 1 entries but tokens has 2"),
            (#"{"id": "x", "tokens": [1, 2], "loss_mask": [1, 1]}"#, "field loss_mask: entry 0 must be 0"),
            (#"{"id": "x", "tokens": [1, 2], "loss_mask": [0, 2]}"#, "field loss_mask: entry 1 must be 0 or 1"),
            (#"{"id": "x", "tokens": [1, 2]}"#, "field loss_mask: missing"),
            (#"{"id": "x", "tokens": [1, 2], "prompt_len": 0}"#, "field prompt_len: must be between 1"),
            (#"{"id": "x", "tokens": [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17], "prompt_len": 1}"#, "more than n_positions"),
            (#"{"id": "x", "tokens": [1, 2], "prompt_len": 1, "logprobs": [null, 0.5]}"#, "field logprobs: entry 1 = 0.5 is above 0"),
            (#"{"id": "x", "tokens": [1, 2], "prompt_len": 1, "logprobs": [null, null]}"#, "field logprobs: entry 1 is null but the token is trained on"),
            (#"{"id": "x", "tokens": [1, 2], "prompt_len": 1, "logprobs": [null]}"#, "field logprobs: has 1 entries"),
            (#"{"id": "x", "tokens": [1, 2], "prompt_len": 1, "reward": 1e999}"#, "field reward: must be finite"),
            (#"{"id": "x", "tokens": [1, 2], "prompt_len": 1, "reward": "high"}"#, "field reward: must be a number"),
            (#"{"id": "x", "tokens": [1, 2], "prompt_len": 1, "entropy": -1}"#, "field entropy: must be non-negative"),
            (#"{"id": "ok", "tokens": [1, 2], "prompt_len": 1}"#, "field id: \"ok\" appears on an earlier line"),
            (#"{"id": "x", "tokens": [], "prompt_len": 1}"#, "field tokens: is empty"),
        ]
        for (line, fragment) in cases {
            XCTAssertThrowsError(try read(good + "\n" + line + "\n")) { e in
                let msg = "\(e)"
                XCTAssertTrue(msg.contains(".jsonl:2: ") && msg.contains(fragment), "\(line) -> \(msg)")
            }
        }
    }
}
