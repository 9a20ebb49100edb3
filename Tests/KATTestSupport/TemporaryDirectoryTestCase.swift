import Foundation
import XCTest

/// A test case with a fresh temporary directory `dir`, removed afterwards.
open class TemporaryDirectoryTestCase: XCTestCase {
    public var dir = ""
    override open func setUp() {
        dir = NSTemporaryDirectory() + "\(type(of: self))-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }
    override open func tearDown() { try? FileManager.default.removeItem(atPath: dir) }
}

/// A built executable of this package (`kat-dist`, `kat-bench`), found next to the test
/// bundle or in the build folders above it.
public func builtExecutable(_ name: String) -> String {
    var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    for _ in 0..<4 {
        let candidate = dir.appendingPathComponent(name).path
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        dir = dir.deletingLastPathComponent()
    }
    return name
}
