import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Pre-emption by SIGUSR1 (what Slurm's `--signal` and `mpirun` forward): the run
/// finishes its step, writes a checkpoint and exits 0.
public enum Preemption {
    nonisolated(unsafe) static var flag: sig_atomic_t = 0

    /// Installs the SIGUSR1 handler. Call it first thing in `main`, so that from the first
    /// line kat-dist prints, SIGUSR1 never kills the process.
    public static func install() {
        signal(SIGUSR1) { _ in Preemption.flag = 1 }
    }

    /// Whether SIGUSR1 arrived in this process, or another rank passed its request on.
    public static var requested: Bool { flag != 0 }

    /// Records a request that arrived at another rank (a rollout rank tells its home
    /// trainer), so this rank stops as if it had received SIGUSR1 itself.
    static func request() { flag = 1 }
}

/// Faults injected by tests through the environment, so that failure handling can be
/// exercised end to end:
/// - `KAT_FAULT_KILL_AT=STEP[:RANK]`: that world rank (any rank without `:RANK`) kills
///   itself with SIGKILL in the middle of that training step, after its first
///   micro-batch's backward pass; on a rollout rank, before generating its STEP-th batch.
/// - `KAT_FAULT_NAN_AT=STEP`: that step's gradient is NaN on every trainer.
/// - `KAT_BENCH_SKIP_GRADIENT_SUM=1`: trainers do not sum their gradients (wrong results;
///   for benchmarks that measure the step without its communication).
struct FaultInjection {
    var killAt: Int?
    var nanAt: Int?
    var skipGradientSum = false
    /// Microseconds a rollout rank sleeps after each decode step (a slow generator, so that
    /// weights are published while episodes are unfinished).
    var decodeDelayMicros: UInt32 = 0

    init(worldRank: Int, environment: [String: String] = ProcessInfo.processInfo.environment) {
        if let spec = environment["KAT_FAULT_KILL_AT"] {
            let parts = spec.split(separator: ":")
            if parts.count < 2 || Int(parts[1]) == worldRank { killAt = parts.first.flatMap { Int($0) } }
        }
        nanAt = environment["KAT_FAULT_NAN_AT"].flatMap(Int.init)
        skipGradientSum = environment["KAT_BENCH_SKIP_GRADIENT_SUM"] == "1"
        decodeDelayMicros = environment["KAT_FAULT_DECODE_DELAY_US"].flatMap { UInt32($0) } ?? 0
    }

    /// Ends this process at once when `step` is the chosen one.
    func killIfDue(_ step: Int) {
        if killAt == step { kill(getpid(), SIGKILL) }
    }
}

/// Where a run's messages go: whole lines, and progress updates that a terminal may
/// redraw in place and a log shows every few seconds (see `ProgressMode`).
public protocol Console: AnyObject {
    /// A message that is always shown, on a line of its own.
    func line(_ text: String)
    /// A progress update of a long phase; `final` marks the phase's last one, which a log
    /// always shows.
    func status(_ text: String, final: Bool)
}

extension Console {
    /// A progress update in the middle of a phase.
    public func status(_ text: String) { status(text, final: false) }
}

/// A console that prints nothing (ranks other than the first).
public final class SilentConsole: Console {
    public init() {}
    public func line(_ text: String) {}
    public func status(_ text: String, final: Bool) {}
}
