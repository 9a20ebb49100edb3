import Foundation
import KATDist
import KATRL
import KATSupport
#if canImport(Glibc)
import Glibc
#endif

/// Messages and progress of a long command (`--progress auto|bar|lines|off`,
/// `--progress-every S`), on standard output (train) or standard error (eval and
/// logprobs, whose standard output is their result).
///
/// A live display rewrites one status line in place (carriage return, erase to the end of
/// the line); plain lines never contain a carriage return or an escape code, so a log file
/// reads line by line.
final class ProgressDisplay: Console {
    /// The file descriptor written to: 1 (standard output) or 2 (standard error).
    let fd: Int32
    let style: ProgressStyle
    var throttle: ProgressThrottle
    var statusShown = false

    /// The options every long command takes, and their help text.
    static let options = [OptionSpec(name: "progress", takesValue: true), OptionSpec(name: "progress-every", takesValue: true)]
    /// The help lines of the options, their text starting at `column` like the command's
    /// other options.
    static func help(column: Int) -> String {
        let pad = { (name: String) in "  " + name + String(repeating: " ", count: max(1, column - 2 - name.count)) }
        let cont = String(repeating: " ", count: column)
        return [pad("--progress MODE") + "auto (default): a live status line when one process writes to a",
                cont + "terminal, else plain lines; bar: always the live line; lines: plain",
                cont + "lines; off: no progress updates",
                pad("--progress-every S") + "seconds between plain progress lines (default 10; 0: every",
                cont + "update); the end of every phase always gets a line"].joined(separator: "\n")
    }

    init(mode: ProgressMode, every: Double, fd: Int32 = 1) {
        self.fd = fd
        style = mode.style(isTerminal: isatty(fd) != 0, launchedByMPI: LaunchEnvironment.launchedByMPI, every: every)
        if case let .lines(every) = style { throttle = ProgressThrottle(every: every) } else { throttle = ProgressThrottle(every: 0) }
    }

    /// The display the command line asks for.
    convenience init(_ a: ParsedArguments, command: String, fd: Int32 = 1) throws(UsageError) {
        let text = a.value("progress") ?? "auto"
        guard let mode = ProgressMode(rawValue: text) else {
            throw UsageError(description: "kat-dist \(command): --progress must be one of \(ProgressMode.allCases.map(\.rawValue).joined(separator: ", ")), got '\(text)'")
        }
        let every = try a.double("progress-every", command: command, range: 0...86_400) ?? 10
        self.init(mode: mode, every: every, fd: fd)
    }

    /// Writes after flushing what `print` buffered, so the order of messages holds.
    func write(_ s: String) {
        fflush(nil)
        let h = fd == 2 ? FileHandle.standardError : FileHandle.standardOutput
        h.write(Data(s.utf8))
    }

    func line(_ s: String) {
        if statusShown { write("\r\u{1B}[K"); statusShown = false }
        write(s + "\n")
    }

    func status(_ s: String, final: Bool) {
        switch style {
        case .off: return
        case .live:
            // A line wider than the terminal would wrap, and the next redraw would start on
            // its last row: cut it to the width.
            let shown = final ? s : String(s.prefix(max(20, terminalColumns() - 1)))
            write("\r\u{1B}[K" + shown + (final ? "\n" : ""))
            statusShown = !final
        case .lines:
            if throttle.admits(now: monotonicSeconds(), final: final) { write(s + "\n") }
        }
    }

    /// The terminal's width in columns (80 when it cannot be asked).
    func terminalColumns() -> Int {
        var size = winsize()
        guard ioctl(fd, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 0 else { return 80 }
        return Int(size.ws_col)
    }

    func finish() {
        if statusShown { write("\n"); statusShown = false }
    }
}

/// Greedy episodes on held-out prompts 0..<prompts, in parts, with progress on `display`.
func evaluateWithProgress(_ worker: RolloutWorker, prompts: Int, display: ProgressDisplay) throws -> (solved: Int, rewardSum: Double) {
    let clock = PhaseClock(start: monotonicSeconds(), startStep: 0)
    let part = max(1, prompts / 20)
    var solved = 0, rewardSum = 0.0, done = 0
    while done < prompts {
        let end = min(prompts, done + part)
        let r = try worker.evaluate(seeds: done..<end)
        solved += r.solved
        rewardSum += r.rewardSum
        done = end
        display.status(String(format: "evaluating %d held-out prompts  %.0f%%  %@", prompts, 100 * Double(done) / Double(prompts),
                              clock.leftText(done: done, total: prompts, now: monotonicSeconds()) as NSString), final: done == prompts)
    }
    display.finish()
    return (solved, rewardSum)
}
