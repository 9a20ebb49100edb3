import Foundation
import XCTest
@testable import KATDist
import KATSupport
import KATTestSupport

/// Metrics lines shaped like a run's: a warm-start step, RL steps, and an evaluation that
/// adds two keys at step 3.
func sampleMetricsLines(steps: ClosedRange<Int>) -> [JSON] {
    steps.map { s in
        var m = StepMetrics()
        m.step = s
        m.time = 1.5 * Double(s)
        m.phase = s == 1 ? .warmstart : .rl
        m.policyVersion = s
        m.rewardMean = s == 1 ? nil : 0.1 * Double(s)
        m.stats.loss = -0.01 * Double(s)
        m.stats.gradNorm = 0.3 + Double(s)
        m.stats.lr = 1e-3 / Double(s)
        m.stats.tokensFlat = 100 * s
        m.stats.tokensTrie = 40 * s
        m.stalenessHist = [s, 1, 0]
        m.stats.skipped = s == 2
        if s >= 3 { m.evalSuccess = 0.25; m.evalReward = 0.5 }
        return m.json
    }
}

final class MetricsExportTests: TemporaryDirectoryTestCase {
    func scalarsOf(_ line: JSON) -> [String: Float] {
        var out: [String: Float] = [:]
        for (k, v) in line.objectMembers ?? [] {
            switch v {
            case let .int(i): out[k] = Float(i)
            case let .double(d): out[k] = Float(d)
            case let .bool(b): out[k] = b ? 1 : 0
            default: break
            }
        }
        return out
    }

    /// Every record of the event file passes both CRC checks, the first event names the
    /// format version, and each step's event holds exactly the numeric and boolean values
    /// of its metrics.jsonl line under the same names (as float32, TensorBoard's
    /// simple_value type).
    func testEventFileRecordsVerifyAndCarryEveryScalarOfMetricsJSONL() throws {
        let log = try MetricsLog(directory: dir, upToStep: nil)
        for l in sampleMetricsLines(steps: 1...5) { try log.append(l, wallTime: 1_700_000_000 + Double(l["step"]!.intValue!)) }
        let files = eventFiles(in: dir)
        XCTAssertEqual(files.count, 1)
        let events = try EventFile(path: files[0]).events
        XCTAssertEqual(events.first?.fileVersion, "brain.Event:2")
        let steps = events.dropFirst()
        let lines = MetricsLog.readLines(dir + "/metrics.jsonl")
        XCTAssertEqual(steps.map(\.step), lines.map { $0["step"]!.intValue! })
        for (e, l) in zip(steps, lines) {
            XCTAssertEqual(e.wallTime, 1_700_000_000 + Double(e.step))
            let got = Dictionary(uniqueKeysWithValues: e.scalars.map { ($0.tag, $0.value) })
            XCTAssertEqual(got, scalarsOf(l), "step \(e.step)")
            XCTAssertNil(got["phase"]); XCTAssertNil(got["staleness_hist"])
        }
        XCTAssertEqual(Dictionary(uniqueKeysWithValues: steps[2].scalars.map { ($0.tag, $0.value) })["skipped"], 1)
    }

    /// metrics.csv has one row per step under a header of every key seen; when the first
    /// evaluation adds keys, the header widens and earlier rows get empty cells.
    func testCSVHeaderWidensWhenANewKeyAppears() throws {
        let log = try MetricsLog(directory: dir, upToStep: nil)
        let lines = sampleMetricsLines(steps: 1...4)
        for l in lines.prefix(2) { try log.append(l) }
        let before = try String(contentsOfFile: dir + "/metrics.csv", encoding: .utf8)
        XCTAssertFalse(before.contains("eval_success"))
        for l in lines.dropFirst(2) { try log.append(l) }
        let rows = try String(contentsOfFile: dir + "/metrics.csv", encoding: .utf8).split(separator: "\n").map(parseCSVRow)
        XCTAssertEqual(rows.count, 5)
        let header = rows[0]
        XCTAssertEqual(Set(header).count, header.count)
        XCTAssertEqual(Set(header), Set(lines.flatMap { $0.objectMembers!.map(\.0) }))
        let col = { (k: String) in header.firstIndex(of: k) ?? 0 }
        for k in ["step", "lr", "phase", "staleness_hist", "eval_success", "reward_mean"] { XCTAssertTrue(header.contains(k), k) }
        for (row, line) in zip(rows.dropFirst(), lines) {
            XCTAssertEqual(row.count, header.count)
            XCTAssertEqual(Int(row[col("step")]), line["step"]!.intValue)
            XCTAssertEqual(Double(row[col("lr")]), line["lr"]!.doubleValue)
            XCTAssertEqual(row[col("phase")], line["phase"]!.stringValue)
            XCTAssertEqual(row[col("staleness_hist")], line["staleness_hist"]!.serialized)
            XCTAssertEqual(row[col("eval_success")], line["eval_success"].map { $0.serialized } ?? "")
            XCTAssertEqual(row[col("reward_mean")], line["reward_mean"]!.isNull ? "" : line["reward_mean"]!.serialized)
        }
    }

    /// A resume after step 3 cuts metrics.jsonl, metrics.csv and the event file to steps
    /// 1-3, even when the event file ends in a record torn by a kill; new steps then
    /// append to all three and every record verifies.
    func testResumeCutsAllThreeFilesToTheCheckpointStep() throws {
        do {
            let log = try MetricsLog(directory: dir, upToStep: nil)
            for l in sampleMetricsLines(steps: 1...5) { try log.append(l) }
        }
        let eventPath = eventFiles(in: dir)[0]
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: eventPath))
        h.seekToEndOfFile()
        h.write(Data(TensorBoardEvents.record(TensorBoardEvents.event(wallTime: 1, step: 6, scalars: [("loss", 1)])).prefix(20)))
        h.closeFile()

        let resumed = try MetricsLog(directory: dir, upToStep: 3)
        for l in sampleMetricsLines(steps: 4...6) { try resumed.append(l) }
        let jsonlSteps = MetricsLog.readLines(dir + "/metrics.jsonl").map { $0["step"]!.intValue! }
        XCTAssertEqual(jsonlSteps, [1, 2, 3, 4, 5, 6])
        let csvRows = try String(contentsOfFile: dir + "/metrics.csv", encoding: .utf8).split(separator: "\n").map(parseCSVRow)
        let stepCol = csvRows[0].firstIndex(of: "step")!
        XCTAssertEqual(csvRows.dropFirst().map { Int($0[stepCol])! }, [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(eventFiles(in: dir), [eventPath])
        let events = try EventFile(path: eventPath).events
        XCTAssertEqual(events.dropFirst().map(\.step), [1, 2, 3, 4, 5, 6])
    }

    /// A run begun before event files existed gets one on resume, holding the kept steps.
    func testResumeWithoutAnEventFileWritesTheKeptSteps() throws {
        let text = sampleMetricsLines(steps: 1...4).map { $0.serialized + "\n" }.joined()
        try text.write(toFile: dir + "/metrics.jsonl", atomically: true, encoding: .utf8)
        _ = try MetricsLog(directory: dir, upToStep: 2)
        let events = try EventFile(path: eventFiles(in: dir)[0]).events
        XCTAssertEqual(events.first?.fileVersion, "brain.Event:2")
        XCTAssertEqual(events.dropFirst().map(\.step), [1, 2])
    }
}

/// One CSV row split into cells, quotes undone (RFC 4180; rows here hold no newlines).
func parseCSVRow<S: StringProtocol>(_ row: S) -> [String] {
    var cells: [String] = [], cell = "", quoted = false
    var chars = Array(row)[...]
    while let c = chars.popFirst() {
        if quoted {
            if c == "\"" {
                if chars.first == "\"" { cell.append("\""); chars.removeFirst() } else { quoted = false }
            } else { cell.append(c) }
        } else if c == "\"" { quoted = true } else if c == "," { cells.append(cell); cell = "" } else { cell.append(c) }
    }
    cells.append(cell)
    return cells
}

final class MetricsDocsTests: XCTestCase {
    /// Docs/metrics.md has a row for every key a metrics line can hold.
    func testEveryMetricsKeyIsDocumented() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Docs/metrics.md").standardized.path
        let doc = try String(contentsOfFile: path, encoding: .utf8)
        var m = StepMetrics()
        m.generatedTokens = 1; m.epoch = 0; m.trieFlatDrift = 0; m.evalSuccess = 0; m.evalReward = 0
        guard case let .object(fields) = m.json else { return XCTFail("a metrics line is not an object") }
        XCTAssertGreaterThan(fields.count, 30)
        for (key, _) in fields {
            let row = doc.split(separator: "\n").first { $0.hasPrefix("| ") && $0.contains("`\(key)`") }
            XCTAssertNotNil(row, "\(key) has no row in Docs/metrics.md")
        }
    }
}
