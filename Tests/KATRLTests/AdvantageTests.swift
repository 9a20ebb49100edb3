import XCTest
@testable import KATRL
import KATTrie

func traj(_ id: String, group: String?, reward: Double? = nil, advantage: Double? = nil, entropy: Double? = nil) -> Trajectory {
    Trajectory(id: id, group: group, tokens: [1, 2, 3], lossMask: [0, 1, 1], reward: reward, advantage: advantage,
               entropy: entropy, source: "f.jsonl:\(id)")
}

final class AdvantageTests: XCTestCase {
    func testGRPOWithAndWithoutStd() throws {
        let ts = [traj("a", group: "g", reward: 1, entropy: 1), traj("b", group: "g", reward: 0, entropy: 1),
                  traj("c", group: "g", reward: 0, entropy: 1), traj("d", group: "h", reward: 5, entropy: 1)]
        var cfg = AdvantageConfig(estimator: .grpo, normalizeStd: false, entropyScaling: false)
        for (x, y) in zip(try computeAdvantages(ts, config: cfg), [2.0 / 3, -1.0 / 3, -1.0 / 3, 0]) { XCTAssertEqual(x, y, accuracy: 1e-12) }
        cfg.normalizeStd = true
        let std = (2.0 / 9).squareRoot() // population std of {1, 0, 0}
        let a = try computeAdvantages(ts, config: cfg)
        XCTAssertEqual(a[0], (2.0 / 3) / (std + 1e-6), accuracy: 1e-12)
        XCTAssertEqual(a[3], 0, "a group of one gets advantage 0")
    }

    func testRLOOAndItsRefusalOfLoneTrajectories() throws {
        let ts = [traj("a", group: "g", reward: 3), traj("b", group: "g", reward: 1), traj("c", group: "g", reward: 2)]
        let cfg = AdvantageConfig(estimator: .rloo, entropyScaling: false)
        XCTAssertEqual(try computeAdvantages(ts, config: cfg), [1.5, -1.5, 0])
        XCTAssertThrowsError(try computeAdvantages([traj("z", group: nil, reward: 1)], config: cfg)) {
            XCTAssertTrue("\($0)".contains("f.jsonl:z") && "\($0)".contains("RLOO"), "\($0)")
        }
    }

    func testMissingFieldsNameTheLine() {
        XCTAssertThrowsError(try computeAdvantages([traj("a", group: "g")], config: AdvantageConfig(estimator: .given))) {
            XCTAssertTrue("\($0)".contains("f.jsonl:a: field advantage"), "\($0)")
        }
        XCTAssertThrowsError(try computeAdvantages([traj("a", group: "g", reward: 1)], config: AdvantageConfig(estimator: .grpo))) {
            XCTAssertTrue("\($0)".contains("f.jsonl:a: field entropy"), "\($0)")
        }
    }

    /// Scale = clip((H / mean H)^alpha, min, max); group or batch mean; zero mean -> 1.
    func testEntropyScalingFormula() {
        var cfg = AdvantageConfig(alpha: 1, scaleMin: 0.5, scaleMax: 2, scope: .group)
        let h = [1.0, 3.0, 10.0, 0.1, 0.0, 0.0]
        let g = ["a", "a", "b", "b", "c", "c"]
        let s = entropyScales(entropies: h, groups: g, config: cfg)
        XCTAssertEqual(s[0], 0.5)                   // 1/2
        XCTAssertEqual(s[1], 1.5)                   // 3/2
        XCTAssertEqual(s[2], 10 / 5.05, accuracy: 1e-12)
        XCTAssertEqual(s[3], 0.5)                   // 0.1/5.05 clipped up to the minimum
        XCTAssertEqual(s[4], 1)                     // zero mean
        XCTAssertEqual(s[5], 1)
        cfg.alpha = 2
        XCTAssertEqual(entropyScales(entropies: [1, 3], groups: ["a", "a"], config: cfg)[1], 2, "1.5^2 clipped to the maximum")
        cfg.alpha = 1
        cfg.scope = .batch
        let b = entropyScales(entropies: [1, 3, 2, 2], groups: ["a", "a", "b", "b"], config: cfg)
        XCTAssertEqual(b, [0.5, 1.5, 1, 1], "batch mean 2")
    }

    /// Scaling never flips a sign and stays within its bounds.
    func testScalingKeepsSignsAndBounds() throws {
        var rng = SplitMix64Lite(seed: 3)
        var ts: [Trajectory] = []
        for i in 0..<200 { ts.append(traj("t\(i)", group: "g\(i / 8)", reward: rng.uniform(), entropy: rng.uniform() * 4)) }
        let off = try computeAdvantages(ts, config: AdvantageConfig(entropyScaling: false))
        let on = try computeAdvantages(ts, config: AdvantageConfig(entropyScaling: true))
        for (a, b) in zip(off, on) {
            XCTAssertTrue(a == 0 ? b == 0 : (a > 0) == (b > 0))
            if a != 0 { XCTAssertTrue((0.5 - 1e-12...2 + 1e-12).contains(b / a)) }
        }
    }
}

struct SplitMix64Lite {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func uniform() -> Double {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return Double((z ^ (z >> 31)) >> 11) * 0x1p-53
    }
}
