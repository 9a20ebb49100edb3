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
            (#"{"id": "x", "tokens": [1, 2], "prompt_len": 1, "versions": [null]}"#, "field versions: has 1 entries but tokens has 2"),
            (#"{"id": "x", "tokens": [1, 2], "prompt_len": 1, "versions": [null, null]}"#, "field versions: entry 1 is null but the token is trained on"),
            (#"{"id": "x", "tokens": [1, 2], "prompt_len": 1, "versions": [null, -1]}"#, "field versions: entry 1 must be a non-negative integer"),
            (#"{"id": "x", "tokens": [1, 2], "prompt_len": 1, "versions": [null, 1.5]}"#, "field versions: entry 1 must be a non-negative integer"),
            (#"{"id": "x", "tokens": [1, 2], "prompt_len": 1, "versions": 3}"#, "field versions: must be an array"),
            (#"{"id": "x", "tokens": [1, 2, 3], "prompt_len": 1, "versions": [null, 4, 5], "policy_version": 5}"#,
             "field policy_version: is 5 but the oldest version in versions is 4"),
            (#"{"id": "x", "tokens": [1, 2], "prompt_len": 1, "entropies": [null, -0.5]}"#, "field entropies: entry 1 = -0.5 must be non-negative"),
            (#"{"id": "x", "tokens": [1, 2], "prompt_len": 1, "entropies": [null, 1e999]}"#, "field entropies: entry 1 must be finite"),
            (#"{"id": "x", "tokens": [1, 2], "prompt_len": 1, "entropies": [null, "high"]}"#, "field entropies: entry 1 must be a number"),
            (#"{"id": "x", "tokens": [1, 2], "prompt_len": 1, "entropies": [null, null]}"#, "field entropies: entry 1 is null but the token is trained on"),
            (#"{"id": "x", "tokens": [1, 2], "prompt_len": 1, "entropies": [0.1, 0.2, 0.3]}"#, "field entropies: has 3 entries"),
        ]
        for (line, fragment) in cases {
            XCTAssertThrowsError(try read(good + "\n" + line + "\n")) { e in
                let msg = "\(e)"
                XCTAssertTrue(msg.contains(".jsonl:2: ") && msg.contains(fragment), "\(line) -> \(msg)")
            }
        }
    }

    /// Per-token versions and entropies are read where the mask is 1 (ignored elsewhere);
    /// policy_version, when absent, is the oldest version, and entropy, when absent, the
    /// mean entropy of the loss tokens.
    func testReadsPerTokenVersionsAndEntropies() throws {
        let t = try read("""
        {"id": "a", "tokens": [256, 1, 2, 3], "prompt_len": 2, "versions": [7, null, 41, 42], "entropies": [9, null, 2.0, 0.5]}
        {"id": "b", "tokens": [256, 1, 2], "prompt_len": 1, "versions": [null, 5, 5], "policy_version": 5, "entropy": 3}

        """)
        XCTAssertEqual(t[0].versions, [-1, -1, 41, 42])
        XCTAssertEqual(t[0].policyVersion, 41)
        XCTAssertTrue(t[0].hasMixedVersions)
        XCTAssertEqual(t[0].entropies?[2], 2.0)
        XCTAssertEqual(t[0].entropies?[3], 0.5)
        XCTAssertTrue(t[0].entropies?[0].isNaN ?? false, "mask-0 entries are not kept")
        XCTAssertEqual(t[0].entropy ?? 0, 1.25, accuracy: 1e-12)
        XCTAssertEqual(t[1].policyVersion, 5)
        XCTAssertFalse(t[1].hasMixedVersions)
        XCTAssertEqual(t[1].entropy, 3, "a given entropy is kept")
        XCTAssertNil(t[1].entropies)
    }
}

final class TrajectoryCodecTests: XCTestCase {
    /// Two trajectories with every field, one with none of the optional ones.
    func sample() -> [Trajectory] {
        [Trajectory(id: "a", group: "g", tokens: [1, 2, 3, 4], lossMask: [0, 1, 1, 1], logprobs: [.nan, -1, -2, -0.5], reward: 1,
                    advantage: -0.25, entropy: 2, policyVersion: 4, versions: [-1, 4, 5, 5], entropies: [.nan, 0.5, 1.5, 0], source: "x:3"),
         Trajectory(id: "b", tokens: [7, 8], lossMask: [0, 1])]
    }

    /// Bitwise equality of every field (NaN entries included, which == would not call equal).
    func assertSame(_ a: [Trajectory], _ b: [Trajectory], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, file: file, line: line)
        for (x, y) in zip(a, b) {
            XCTAssertEqual(x.id, y.id, file: file, line: line); XCTAssertEqual(x.group, y.group, file: file, line: line)
            XCTAssertEqual(x.tokens, y.tokens, file: file, line: line); XCTAssertEqual(x.lossMask, y.lossMask, file: file, line: line)
            XCTAssertEqual(x.logprobs?.map(\.bitPattern), y.logprobs?.map(\.bitPattern), file: file, line: line)
            XCTAssertEqual(x.reward, y.reward, file: file, line: line); XCTAssertEqual(x.advantage, y.advantage, file: file, line: line)
            XCTAssertEqual(x.entropy, y.entropy, file: file, line: line)
            XCTAssertEqual(x.policyVersion, y.policyVersion, file: file, line: line)
            XCTAssertEqual(x.versions, y.versions, file: file, line: line)
            XCTAssertEqual(x.entropies?.map(\.bitPattern), y.entropies?.map(\.bitPattern), file: file, line: line)
            XCTAssertEqual(x.source, y.source, file: file, line: line)
        }
    }

    func testEveryFieldRoundTrips() throws {
        assertSame(try TrajectoryCodec.decode(TrajectoryCodec.encode(sample())), sample())
        assertSame(try TrajectoryCodec.decode(TrajectoryCodec.encode([])), [])
    }

    /// A message of the first form (no versions or entropies: checkpoints written before
    /// them) still decodes to the same trajectories.
    func testTheFirstFormStillDecodes() throws {
        var old = sample()
        for i in old.indices { old[i].versions = nil; old[i].entropies = nil }
        // Form 1 is form 2 without the marker and without each trajectory's flags word.
        var form1: [UInt8] = []
        let form2 = TrajectoryCodec.encode(old)
        XCTAssertEqual(Array(form2.prefix(4)), [0x02, 0xFF, 0xFF, 0xFF])
        form1 += form2[4..<8]
        var rest = Array(form2[8...])
        for t in old {
            // id, group, source strings; tokens; mask; logprobs flag (+ array); 3 doubles; version.
            var size = 0
            for str in [t.id, t.group, t.source] { size += 4 + (str?.utf8.count ?? 0) }
            size += 4 + 4 * t.tokens.count + t.tokens.count + 4 + (t.logprobs == nil ? 0 : 4 * t.tokens.count) + 24 + 8
            form1 += rest.prefix(size)
            XCTAssertEqual(Array(rest[size..<(size + 4)]), [0, 0, 0, 0], "no optional arrays")
            rest.removeFirst(size + 4)
        }
        XCTAssertTrue(rest.isEmpty)
        assertSame(try TrajectoryCodec.decode(form1), old)
    }
}
