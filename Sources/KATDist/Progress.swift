import Foundation

/// How a long command shows its progress (`--progress`).
public enum ProgressMode: String, CaseIterable, Sendable {
    /// A live line on an interactive terminal of a single process; plain lines otherwise.
    case auto
    /// A status line redrawn in place (carriage return and an erase-line escape code).
    case bar
    /// One plain line every few seconds, and one at the end of every phase.
    case lines
    /// No progress updates (messages such as checkpoints and results still print).
    case off

    /// What the mode comes to where the output goes.
    ///
    /// `auto` draws a live line only when one process writes to an interactive terminal.
    /// Under an MPI launcher each rank's output is relayed by the launcher, which may give
    /// a rank a terminal of its own even when the job's output goes to a file (Open MPI
    /// does), so a rank cannot tell; there, and whenever the output is not a terminal,
    /// progress is plain lines.
    /// - Parameters:
    ///   - isTerminal: whether the output stream is an interactive terminal (`isatty`).
    ///   - launchedByMPI: whether an MPI launcher started the process (`LaunchEnvironment`).
    ///   - every: seconds between plain lines.
    public func style(isTerminal: Bool, launchedByMPI: Bool, every: Double) -> ProgressStyle {
        switch self {
        case .bar: return .live
        case .lines: return .lines(every: every)
        case .off: return .off
        case .auto: return isTerminal && !launchedByMPI ? .live : .lines(every: every)
        }
    }
}

/// How progress updates are shown.
public enum ProgressStyle: Equatable, Sendable {
    /// One status line, rewritten in place.
    case live
    /// Plain lines: the first update, then at most one every `every` seconds, and the
    /// last update of every phase.
    case lines(every: Double)
    /// None.
    case off
}

/// Which updates a line-by-line log prints: the first, then one once `every` seconds have
/// passed since the last one printed, and every final one (the end of a phase).
public struct ProgressThrottle: Sendable {
    public let every: Double
    var lastPrinted: Double?

    public init(every: Double) { self.every = every }

    /// Whether the update at `now` (seconds, monotonic) is printed; records it when so.
    public mutating func admits(now: Double, final: Bool) -> Bool {
        if final || lastPrinted == nil || now - (lastPrinted ?? now) >= every {
            lastPrinted = final ? nil : now
            return true
        }
        return false
    }
}

/// The time left in a phase, estimated from the steps this process has run of it.
///
/// The clock starts when the process starts (or resumes) the phase, at the step it starts
/// from, so after a resume the estimate counts only the steps run since then: the steps
/// done before the resume took no time in this process.
public struct PhaseClock: Sendable {
    /// When this process began the phase (monotonic seconds) and the step it began at.
    public let start: Double
    public let startStep: Int

    public init(start: Double, startStep: Int) {
        self.start = start
        self.startStep = startStep
    }

    /// Seconds left after `done` of `total` steps at time `now`; nil before the first step
    /// of this process has finished.
    public func secondsLeft(done: Int, total: Int, now: Double) -> Double? {
        let ran = done - startStep
        guard ran > 0 else { return nil }
        return (now - start) / Double(ran) * Double(max(0, total - done))
    }

    /// "left 4m05s", or "left ?" before an estimate exists.
    public func leftText(done: Int, total: Int, now: Double) -> String {
        guard let s = secondsLeft(done: done, total: total, now: now) else { return "left ?" }
        return "left " + PhaseClock.duration(s)
    }

    /// A duration as "42s", "4m05s" or "3h12m".
    public static func duration(_ seconds: Double) -> String {
        let s = Int(seconds.rounded())
        if s < 60 { return "\(s)s" }
        if s < 3600 { return String(format: "%dm%02ds", s / 60, s % 60) }
        return String(format: "%dh%02dm", s / 3600, (s % 3600) / 60)
    }
}
