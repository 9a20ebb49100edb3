import KATSupport

/// A fault of a run; every case names what is at fault: the path, the step, the key or
/// the rank.
public enum RunError: Error, CustomStringConvertible {
    /// The run directory cannot be used as asked.
    case runDirectory(path: String, reason: String)
    /// A checkpoint is missing, damaged or does not fit the run.
    case checkpoint(path: String, reason: String)
    /// A file could not be read or written.
    case file(FileFault)
    /// Settings that conflict with each other, the model or the task.
    case settings(key: String, reason: String)
    /// Too many updates in a row had a non-finite loss or gradient.
    case nonFinite(step: Int, inARow: Int)
    /// Trainer ranks hold different weights after a step.
    case trainersDiverged(step: Int, low: Double, high: Double)
    /// A message from another rank that does not decode.
    case badMessage(rank: Int, reason: String)
    /// Every episode of a step was abandoned: there is nothing to train.
    case emptyBatch(step: Int, abandoned: Int)
    /// A collective did not complete within the watchdog: a rank is stopped or gone.
    case collectiveStalled(call: String, seconds: Double)
    /// A rank sent nothing for longer than the watchdog.
    case silentRank(rank: Int, seconds: Double)
    /// The MPI library grouped the ranks into nodes inconsistently (ranks disagree on
    /// which ranks share their memory).
    case inconsistentNodes(detail: String)

    public var description: String {
        switch self {
        case let .runDirectory(path, reason): return "\(path): \(reason)"
        case let .checkpoint(path, reason): return "\(path): \(reason)"
        case let .file(fault): return fault.description
        case let .settings(key, reason): return "key \(key): \(reason)"
        case let .nonFinite(step, n):
            return "\(n) updates in a row up to step \(step) had a non-finite loss or gradient; stopping (lower the learning rate or turn on optimizer.grad_clip)"
        case let .trainersDiverged(step, low, high):
            return "weights diverged across trainer ranks after step \(step) (checksums \(low) and \(high))"
        case let .badMessage(rank, reason): return "a message from rank \(rank) does not decode: \(reason)"
        case let .emptyBatch(step, abandoned):
            return "step \(step) has no trajectory: all \(abandoned) episodes were abandoned after environment failures (see the messages above)"
        case let .collectiveStalled(call, seconds):
            return "\(call) did not complete within \(Int(seconds)) s (watchdog_s): another trainer rank is stopped, hung or unreachable; ending the job"
        case let .silentRank(rank, seconds):
            return "rank \(rank) sent nothing for \(Int(seconds)) s (watchdog_s): it is stopped, hung or unreachable; ending the job"
        case let .inconsistentNodes(detail):
            return "the MPI library's grouping of ranks by node is inconsistent (\(detail)): ranks on one host must see the same host name and share memory; check the hostfile and how ranks are started"
        }
    }
}
