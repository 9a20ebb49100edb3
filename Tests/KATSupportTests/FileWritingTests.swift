import Foundation
import XCTest
import KATSupport

final class FileWritingTests: XCTestCase {
    var dir = ""
    override func setUp() {
        dir = NSTemporaryDirectory() + "FileWritingTests-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    /// An atomic write replaces the file whole and leaves no temporary file behind.
    func testAtomicWriteReplacesTheFileWhole() throws {
        let path = dir + "/a.txt"
        try FileWriting.writeAtomically(Data("old".utf8), to: path)
        try FileWriting.writeAtomically(Data("new contents".utf8), to: path)
        XCTAssertEqual(try String(contentsOfFile: path, encoding: .utf8), "new contents")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), ["a.txt"])
    }

    /// A write that cannot happen names the file and the cause.
    func testFailedWriteNamesTheFileAndTheCause() {
        let path = dir + "/missing-dir/a.txt"
        XCTAssertThrowsError(try FileWriting.writeAtomically(Data("x".utf8), to: path)) { error in
            guard let fault = error as? FileFault else { return XCTFail("\(error)") }
            XCTAssertEqual(fault.path, path)
            XCTAssertTrue("\(fault)".contains("No such file or directory"), "\(fault)")
        }
    }

    /// Lines append whole, after what the file held.
    func testLinesAppendAfterExistingContent() throws {
        let path = dir + "/m.jsonl"
        try "first\n".write(toFile: path, atomically: true, encoding: .utf8)
        let f = try LineFile(appendingTo: path)
        try f.append("second")
        try f.append("third")
        XCTAssertEqual(try String(contentsOfFile: path, encoding: .utf8), "first\nsecond\nthird\n")
    }
}
