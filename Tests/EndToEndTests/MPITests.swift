import Foundation
import XCTest
import KATSupport
import KATTestSupport

/// The built `kat-bench` executable.
func benchBinary() -> String { builtExecutable("kat-bench") }

/// Runs `mpirun` with the given ranks, oversubscribed, as root if need be, with a time
/// limit: a hang fails the test instead of blocking CI.
func mpirun(_ np: Int, _ args: [String], timeout: TimeInterval = 120, env extra: [String: String] = [:],
            whileRunning: ((Process) -> Void)? = nil) throws -> (code: Int32, output: String, seconds: Double) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = ["mpirun", "-np", "\(np)", "--oversubscribe", "--mca", "mpi_yield_when_idle", "1",
                   "-x", "OPENBLAS_NUM_THREADS=1"] + extra.keys.sorted().flatMap { ["-x", "\($0)=\(extra[$0]!)"] } + args
    var env = ProcessInfo.processInfo.environment
    env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
    env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    p.environment = env
    let log = NSTemporaryDirectory() + "mpirun-\(UUID().uuidString).log"
    FileManager.default.createFile(atPath: log, contents: nil)
    defer { try? FileManager.default.removeItem(atPath: log) }
    let h = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
    p.standardOutput = h
    p.standardError = h
    let t0 = Date()
    try p.run()
    while p.isRunning {
        whileRunning?(p)
        if Date().timeIntervalSince(t0) > timeout {
            p.terminate()
            usleep(2_000_000)
            if p.isRunning { kill(p.processIdentifier, SIGKILL) }
            XCTFail("mpirun timed out after \(timeout) s: \(args)")
            break
        }
        usleep(20_000)
    }
    p.waitUntilExit()
    let out = String(decoding: FileManager.default.contents(atPath: log) ?? Data(), as: UTF8.self)
    return (p.terminationStatus, out, Date().timeIntervalSince(t0))
}

final class MPITests: XCTestCase {
    /// The Open MPI binding works: an in-place allreduce over 3 ranks sums exactly,
    /// across more than one chunk boundary of the buffer.
    func testAllreduceSumsExactlyAcrossRanks() throws {
        let r = try mpirun(3, [benchBinary(), "allreduce", "--mib", "2", "--chunk", "100003"])
        XCTAssertEqual(r.code, 0, r.output)
        XCTAssertTrue(r.output.contains("sums verified"), r.output)
    }

    /// A rank that fails brings the whole job down with a message naming it, never a hang.
    func testAFailingRankEndsTheJobWithItsName() throws {
        let r = try mpirun(3, [benchBinary(), "allreduce", "--mib", "1", "--fail-rank", "1"], timeout: 60)
        XCTAssertNotEqual(r.code, 0)
        XCTAssertTrue(r.output.contains("rank 1: failing on purpose"), r.output)
        XCTAssertLessThan(r.seconds, 30)
    }
}
