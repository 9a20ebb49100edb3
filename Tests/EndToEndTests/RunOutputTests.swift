import Foundation
import XCTest
import KATSupport
import KATTestSupport

/// What a run leaves for people and their tools: its log, and its metrics in three forms.
final class RunOutputTests: TemporaryDirectoryTestCase {

    /// Under `mpirun ... > file` (a batch system's log) Open MPI gives each rank a terminal
    /// of its own, yet the file holds plain lines: no carriage return, no escape code, a
    /// progress line at the end of every phase. Asked for the live bar, the same job does
    /// write carriage returns, so the check can see them.
    func testALogFileFromMpirunHoldsPlainLines() throws {
        let run = dir + "/run"
        let out = try mpirun(2, [katDist(), "train", "--run-dir", run] + tinyRun, timeout: 180)
        XCTAssertEqual(out.code, 0, out.output)
        XCTAssertFalse(out.output.contains("\r"), out.output.debugDescription)
        XCTAssertFalse(out.output.contains("\u{1B}"), out.output.debugDescription)
        let lines = out.output.split(separator: "\n")
        XCTAssertTrue(lines.contains { $0.hasPrefix("warm start 3/3") }, out.output)
        XCTAssertTrue(lines.contains { $0.hasPrefix("rl step 4/4") }, out.output)
        XCTAssertTrue(lines.contains { $0.hasPrefix("checkpoint \(run)/checkpoints/step-000007") }, out.output)

        let bar = try mpirun(2, [katDist(), "train", "--run-dir", dir + "/bar", "--progress", "bar"] + tinyRun, timeout: 180)
        XCTAssertEqual(bar.code, 0, bar.output)
        XCTAssertTrue(bar.output.contains("\r\u{1B}[K"), bar.output.debugDescription)
    }

    /// A run killed at step 8 and resumed from its checkpoint at step 7: metrics.jsonl,
    /// metrics.csv and the event file hold steps 1-9 once each with the same values (the
    /// event file's records all pass their CRC checks), and `time` keeps rising across the
    /// resume from the time the checkpoint recorded.
    func testAResumedRunKeepsItsThreeMetricsFilesTheSame() throws {
        let run = dir + "/run"
        let args = [katDist(), "train", "--run-dir", run, "--set", "eval.every=0"] + resumable
        XCTAssertNotEqual(try mpirun(1, args, timeout: 180, env: ["KAT_FAULT_KILL_AT": "8"]).code, 0)
        let before = try metricsLines(run).map { $0["step"]!.intValue! }
        XCTAssertEqual(before.last, 7, "the kill came in step 8, after step 7's line")
        let checkpointTime = try JSON.parse(String(contentsOfFile: run + "/checkpoints/step-000007/state.json", encoding: .utf8))["time"]!.doubleValue!
        let resumed = try mpirun(1, args + ["--resume", "auto"], timeout: 180)
        XCTAssertEqual(resumed.code, 0, resumed.output)

        let lines = try metricsLines(run)
        XCTAssertEqual(lines.map { $0["step"]!.intValue! }, Array(1...9))
        let times = lines.map { $0["time"]!.doubleValue! }
        XCTAssertEqual(times, times.sorted(), "time never goes back")
        XCTAssertGreaterThan(times[7], checkpointTime, "step 8 after the resume counts from the checkpoint's time")

        let csv = try String(contentsOfFile: run + "/metrics.csv", encoding: .utf8).split(separator: "\n").map { $0.split(separator: ",", omittingEmptySubsequences: false) }
        let stepCol = try XCTUnwrap(csv.first?.firstIndex(of: "step")), timeCol = try XCTUnwrap(csv.first?.firstIndex(of: "time"))
        XCTAssertEqual(csv.dropFirst().map { Int($0[stepCol])! }, Array(1...9))
        XCTAssertEqual(csv.dropFirst().map { Double($0[timeCol])! }, times)

        let files = eventFiles(in: run)
        XCTAssertEqual(files.count, 1)
        let events = try EventFile(path: files[0]).events
        XCTAssertEqual(events.first?.fileVersion, "brain.Event:2")
        XCTAssertEqual(events.dropFirst().map(\.step), Array(1...9))
        for (e, line) in zip(events.dropFirst(), lines) {
            let got = Dictionary(uniqueKeysWithValues: e.scalars.map { ($0.tag, $0.value) })
            for (key, v) in line.objectMembers! {
                switch v {
                case let .int(i): XCTAssertEqual(got[key], Float(i), "step \(e.step) \(key)")
                case let .double(d): XCTAssertEqual(got[key], Float(d), "step \(e.step) \(key)")
                case let .bool(b): XCTAssertEqual(got[key], b ? 1 : 0, "step \(e.step) \(key)")
                default: XCTAssertNil(got[key], "step \(e.step) \(key) is not a scalar")
                }
            }
        }
    }
}
