import Foundation
import XCTest
import KATSupport

/// The malformed-input corpus (Malformed/cases.tsv, made by Malformed/make_corpus.py): config
/// files, --set values, trajectory files, model directories, checkpoints, external
/// environment replies and run directories. Each case must end with a non-zero exit and one
/// clear message with the expected words, never a crash trace, and change no input file.
final class MalformedInputTests: XCTestCase {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Malformed")

    func snapshot(_ dir: String) -> [String: Data] {
        var out: [String: Data] = [:]
        let e = FileManager.default.enumerator(atPath: dir)
        while let f = e?.nextObject() as? String {
            if let d = FileManager.default.contents(atPath: dir + "/" + f) { out[f] = d }
        }
        return out
    }

    func testEveryMalformedInputGetsItsClearMessage() throws {
        let corpus = root.appendingPathComponent("corpus").path
        let text = try String(contentsOf: root.appendingPathComponent("cases.tsv"), encoding: .utf8)
        let before = snapshot(corpus)
        var count = 0
        for line in text.split(separator: "\n") {
            let cols = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            guard cols.count == 3 else { XCTFail("bad case line \(line)"); continue }
            let tmp = NSTemporaryDirectory() + "malformed-\(UUID().uuidString)"
            try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: tmp) }
            let args = cols[1].split(separator: " ").map {
                $0.replacingOccurrences(of: "{c}", with: corpus).replacingOccurrences(of: "{t}", with: tmp).replacingOccurrences(of: "\u{2423}", with: " ")
            }
            let r = try runKatDist(args, timeout: 60)
            count += 1
            XCTAssertNotEqual(r.code, 0, "\(cols[0]): exit 0")
            XCTAssertTrue(r.stderr.contains(cols[2]), "\(cols[0]): expected \"\(cols[2])\" in: \(r.stderr)")
            for trace in ["Fatal error", "Stack dump", "Backtrace", "Current stack trace", "SIGSEGV", "SIGILL"] {
                XCTAssertFalse(r.stderr.contains(trace), "\(cols[0]): crash trace: \(r.stderr)")
            }
            XCTAssertLessThanOrEqual(r.stderr.split(separator: "\n").filter { $0.hasPrefix("kat-dist") }.count, 2, "\(cols[0]): \(r.stderr)")
        }
        XCTAssertGreaterThanOrEqual(count, 50)
        XCTAssertEqual(snapshot(corpus), before, "no input file was changed")
        print("malformed-input corpus: \(count) cases")
    }
}
