import XCTest
@testable import KATDist

final class ProgressTests: XCTestCase {
    /// auto draws a live line only for a single process on a terminal; under an MPI
    /// launcher (whose ranks may sit on a terminal of the launcher's) and on files it
    /// prints plain lines; the explicit modes are taken as given.
    func testAutoIsLiveOnlyForASingleProcessOnATerminal() {
        XCTAssertEqual(ProgressMode.auto.style(isTerminal: true, launchedByMPI: false, every: 10), .live)
        XCTAssertEqual(ProgressMode.auto.style(isTerminal: true, launchedByMPI: true, every: 10), .lines(every: 10))
        XCTAssertEqual(ProgressMode.auto.style(isTerminal: false, launchedByMPI: false, every: 3), .lines(every: 3))
        XCTAssertEqual(ProgressMode.bar.style(isTerminal: false, launchedByMPI: true, every: 10), .live)
        XCTAssertEqual(ProgressMode.lines.style(isTerminal: true, launchedByMPI: false, every: 10), .lines(every: 10))
        XCTAssertEqual(ProgressMode.off.style(isTerminal: true, launchedByMPI: false, every: 10), .off)
    }

    /// Plain lines: the first update, then one per `every` seconds, and every phase end
    /// whenever it comes.
    func testLinesComeEveryNSecondsAndAtEveryPhaseEnd() {
        var t = ProgressThrottle(every: 10)
        let updates: [(Double, Bool)] = [(0, false), (3, false), (9.9, false), (10, false), (12, false), (13, true),
                                         (14, false), (20, false), (24.5, false)]
        let printed = updates.filter { t.admits(now: $0.0, final: $0.1) }.map(\.0)
        XCTAssertEqual(printed, [0, 10, 13, 14, 24.5])
    }

    /// After a resume at step 50 of 100, ten steps in 20 s leave 40 steps: 80 s. The
    /// steps done before the resume took no time in this process and do not count.
    func testTimeLeftAfterAResumeCountsOnlyTheStepsRunSinceIt() {
        let clock = PhaseClock(start: 1000, startStep: 50)
        XCTAssertNil(clock.secondsLeft(done: 50, total: 100, now: 1000))
        XCTAssertEqual(clock.secondsLeft(done: 60, total: 100, now: 1020) ?? -1, 80, accuracy: 1e-9)
        XCTAssertEqual(clock.secondsLeft(done: 100, total: 100, now: 1100) ?? -1, 0)
        XCTAssertEqual(PhaseClock(start: 0, startStep: 0).leftText(done: 1, total: 50, now: 5), "left 4m05s")
        XCTAssertEqual(PhaseClock.duration(7322), "2h02m")
    }
}

final class RankFaultTests: XCTestCase {
    /// A fault every rank sees is one line; a fault some ranks see names them and their
    /// hosts (a file missing from one node's storage).
    func testFaultsAreReportedOnceNamingTheRanksThatSeeThem() {
        XCTAssertEqual(Training.faultLines([("a", "x: no such file"), ("b", "x: no such file")]), ["x: no such file"])
        XCTAssertEqual(Training.faultLines([("a", ""), ("b", "x: no such file"), ("b", "x: no such file"), ("c", "")]),
                       ["x: no such file (on ranks 1, 2 of 4, host b)"])
        XCTAssertEqual(Training.faultLines([("a", ""), ("b", "")]), [])
    }
}
