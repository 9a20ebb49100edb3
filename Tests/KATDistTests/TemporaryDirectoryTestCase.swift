import Foundation
import XCTest

/// A test case with a fresh temporary directory `dir`, removed afterwards.
class TemporaryDirectoryTestCase: XCTestCase {
    var dir = ""
    override func setUp() {
        dir = NSTemporaryDirectory() + "\(type(of: self))-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }
}
