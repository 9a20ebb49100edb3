import XCTest
@testable import KATTrie
import KATSupport

final class OfflineDataTests: XCTestCase {
    func trajs(_ groups: [(String?, Int)]) -> [Trajectory] {
        var out: [Trajectory] = []
        for (g, n) in groups { for _ in 0..<n { out.append(Trajectory(id: "t\(out.count)", group: g, tokens: [1, 2], lossMask: [0, 1])) } }
        return out
    }

    /// Whole groups in file order until the batch is reached; a group larger than the batch
    /// is a step of its own; a missing group is a group of one; epochs wrap.
    func testWholeGroupsInFileOrder() {
        let ts = trajs([("a", 3), ("b", 3), ("c", 10), (nil, 1), (nil, 1), ("d", 2)])
        var d = OfflineData(trajectories: ts, batchSize: 6, shuffle: false, seed: 1)
        XCTAssertEqual(d.nextBatch(), [[0, 1, 2], [3, 4, 5]])
        XCTAssertEqual(d.nextBatch(), [Array(6..<16)])
        XCTAssertEqual(d.nextBatch(), [[16], [17], [18, 19]], "stops before a group that would overflow")
        XCTAssertEqual(d.epoch, 0)
        _ = d.nextBatch()
        XCTAssertEqual(d.epoch, 1)
    }

    /// Later epochs are shuffled by the seed, the same way every time.
    func testShuffledEpochsAreSeeded() {
        let ts = trajs((0..<20).map { ("g\($0)", 1) })
        var a = OfflineData(trajectories: ts, batchSize: 20, shuffle: true, seed: 7)
        var b = OfflineData(trajectories: ts, batchSize: 20, shuffle: true, seed: 7)
        var c = OfflineData(trajectories: ts, batchSize: 20, shuffle: true, seed: 8)
        XCTAssertEqual(a.nextBatch().flatMap { $0 }, Array(0..<20), "the first epoch keeps file order")
        _ = b.nextBatch(); _ = c.nextBatch()
        let second = a.nextBatch().flatMap { $0 }
        XCTAssertEqual(second, b.nextBatch().flatMap { $0 })
        XCTAssertNotEqual(second, c.nextBatch().flatMap { $0 })
        XCTAssertNotEqual(second, Array(0..<20))
        XCTAssertEqual(second.sorted(), Array(0..<20))
    }

    func testMinibatchesKeepGroupsWhole() {
        let groups = [[0, 1], [2, 3], [4, 5], [6, 7, 8, 9]]
        XCTAssertEqual(minibatches(groups, 2), [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9]])
        XCTAssertEqual(minibatches(groups, 1), [Array(0..<10)])
        XCTAssertEqual(minibatches(groups, 9).count, 4, "never more minibatches than groups")
    }
}
