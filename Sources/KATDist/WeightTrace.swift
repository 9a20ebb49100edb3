import Foundation
import KATSupport

/// A debug trace of weight sync, for measuring how soon rollout ranks sample new weights.
/// With `KAT_TRACE_WEIGHTS=DIR` every rank appends JSON lines to `DIR/rank-<world rank>.jsonl`:
///
///     {"publish": 7, "version": 7, "t": 1234.5}            trainer 0 wrote publication 7 into its node's memory
///     {"step": 7, "t": 1234.6}                              a rollout rank finished a decode step made with publication 7
///     {"install": 8, "version": 8, "mid": true, "t": 1234.7}  a rollout rank took publication 8 (mid-episode or between groups)
///     {"receiving": true, "t": 1234.8}                      a node leader started receiving a weights message from its tree parent
///     {"received": 8, "t": 1234.9}                          ... and holds all of it (publication 8)
///
/// `t` is seconds on the monotonic clock, which the ranks of one node share. Writing the
/// trace is best effort: a line that cannot be written is left out.
final class WeightTrace {
    let file: LineFile

    init(file: LineFile) { self.file = file }

    /// The trace of rank `rank` when `KAT_TRACE_WEIGHTS` names a directory, else nil.
    static func fromEnvironment(rank: Int, environment: [String: String] = ProcessInfo.processInfo.environment) -> WeightTrace? {
        guard let dir = environment["KAT_TRACE_WEIGHTS"], !dir.isEmpty,
              let file = try? LineFile(appendingTo: "\(dir)/rank-\(rank).jsonl") else { return nil }
        return WeightTrace(file: file)
    }

    func publish(_ p: Publication) { write("{\"publish\": \(p.number), \"version\": \(p.version), \"t\": \(monotonicSeconds())}") }
    func step(publication: Int) { write("{\"step\": \(publication), \"t\": \(monotonicSeconds())}") }
    func install(_ p: Publication, midEpisode: Bool) {
        write("{\"install\": \(p.number), \"version\": \(p.version), \"mid\": \(midEpisode), \"t\": \(monotonicSeconds())}")
    }

    func receiving() { write("{\"receiving\": true, \"t\": \(monotonicSeconds())}") }
    func received(publication: Int) { write("{\"received\": \(publication), \"t\": \(monotonicSeconds())}") }

    private func write(_ line: String) { try? file.append(line) }
}
