import Foundation
import KATSupport
#if canImport(Glibc)
import Glibc
#endif

/// An environment in another process speaking JSON lines over stdin/stdout:
///
///     -> {"op": "reset", "seed": 17, "split": "train"}   <- {"prompt": "text", ...}
///     -> {"op": "step", "action": "text"}                <- {"observation": "text", "reward": 0.5, "done": false}
///
/// One process lives for many episodes, run in turn (a reset starts the next). A reply
/// that is not JSON, lacks a field, or takes longer than the time-out fails the episode:
/// the process and everything it started are ended, and the next episode starts a fresh
/// one. After `maxFailuresInARow` failures with no good step reply between them the error
/// is `EnvironmentError.repeatedFailures`, which ends the run.
public final class ExternalEnvironment: Environment {
    public let command: String
    public let timeout: Double
    /// kat-dist's guardian command line, which ends the command's descendants even when
    /// kat-dist dies; nil: the process group alone is ended.
    public let guardian: [String]?
    public static let maxFailuresInARow = 3
    var process: EnvironmentProcess?
    var pending: [UInt8] = []
    /// Failed exchanges since the last good reply to a step.
    public private(set) var failuresInARow = 0
    /// Processes started so far (restarts included).
    public private(set) var starts = 0

    public init(command: String, timeout: Double, guardian: [String]? = nil) {
        self.command = command
        self.timeout = timeout
        self.guardian = guardian
    }

    deinit { stop() }

    func start() throws {
        // A child that exits makes our next write fail with EPIPE; without this the
        // signal would kill the trainer instead of giving the clear error.
        signal(SIGPIPE, SIG_IGN)
        process = try EnvironmentProcess(command: command, guardian: guardian)
        starts += 1
        stepsSinceStart = 0
        pending = []
    }

    /// Ends the process and everything it started.
    public func stop() {
        process?.end()
        process = nil
    }

    /// Sends one message and reads one reply line, within the time-out. A failure ends
    /// the process (the next exchange starts a new one) and is counted.
    func exchange(_ message: JSON) throws -> JSON {
        do {
            return try exchangeOnce(message)
        } catch let e as EnvironmentError {
            stop()
            failuresInARow += 1
            if failuresInARow >= ExternalEnvironment.maxFailuresInARow {
                throw EnvironmentError.repeatedFailures(command: command, count: failuresInARow, last: e.description)
            }
            throw e
        }
    }

    private func exchangeOnce(_ message: JSON) throws -> JSON {
        if process == nil { try start() }
        guard let p = process else { throw EnvironmentError.closed(command: command, message: message.serialized) }
        let line = Array((message.serialized + "\n").utf8)
        var sent = 0
        while sent < line.count {
            let n = line[sent...].withUnsafeBytes { write(p.input, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw EnvironmentError.closed(command: command, message: message.serialized) }
            sent += n
        }
        let deadline = monotonicSeconds() + timeout
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            if let nl = pending.firstIndex(of: 0x0A) {
                let text = String(decoding: pending[..<nl], as: UTF8.self)
                pending.removeSubrange(...nl)
                do { return try JSON.parse(text) } catch {
                    throw EnvironmentError.badReply(command: command, reason: "reply is not JSON", reply: text)
                }
            }
            let left = deadline - monotonicSeconds()
            if left <= 0 { throw EnvironmentError.timeout(command: command, seconds: timeout, message: message.serialized) }
            var pfd = pollfd(fd: p.output, events: Int16(POLLIN), revents: 0)
            let r = poll(&pfd, 1, Int32(max(1, min(left * 1000, 1e9))))
            if r < 0 && errno == EINTR { continue }
            if r <= 0 { continue }
            let n = read(p.output, &buf, buf.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { throw EnvironmentError.closed(command: command, message: message.serialized) }
            pending.append(contentsOf: buf[0..<n])
            if pending.count > 16_000_000 {
                throw EnvironmentError.badReply(command: command, reason: "reply longer than 16 MB without a newline", reply: "")
            }
        }
    }

    /// Good step replies since the process started.
    var stepsSinceStart = 0

    public func reset(seed: UInt64, split: String) throws -> String {
        let msg: JSON = ["op": "reset", "seed": JSON(Int(truncatingIfNeeded: seed & 0x7fff_ffff_ffff)), "split": .string(split)]
        // A process that ended between episodes (some environments serve one episode and
        // exit) is started again for the next one; that is not a failure.
        if let p = process, p.hasExited { stop() }
        let reply: JSON
        do {
            reply = try exchange(msg)
        } catch EnvironmentError.closed(_, _) where stepsSinceStart > 0 {
            failuresInARow -= 1
            reply = try exchange(msg)
        }
        guard let prompt = reply["prompt"]?.stringValue else {
            throw fail(.badReply(command: command, reason: "reply to reset lacks a string \"prompt\"", reply: reply.serialized))
        }
        return prompt
    }

    public func step(action: String) throws -> EnvReply {
        let msg: JSON = ["op": "step", "action": .string(action)]
        let reply = try exchange(msg)
        guard let obs = reply["observation"]?.stringValue else {
            throw fail(.badReply(command: command, reason: "reply to step lacks a string \"observation\"", reply: reply.serialized))
        }
        guard let reward = reply["reward"]?.doubleValue, reward.isFinite else {
            throw fail(.badReply(command: command, reason: "reply to step lacks a finite number \"reward\"", reply: reply.serialized))
        }
        guard let done = reply["done"]?.boolValue else {
            throw fail(.badReply(command: command, reason: "reply to step lacks a boolean \"done\"", reply: reply.serialized))
        }
        failuresInARow = 0
        stepsSinceStart += 1
        return EnvReply(observation: obs, reward: reward, done: done)
    }

    /// A reply that parsed but breaks the protocol counts as a failed exchange too.
    private func fail(_ error: EnvironmentError) -> EnvironmentError {
        stop()
        failuresInARow += 1
        if failuresInARow >= ExternalEnvironment.maxFailuresInARow {
            return .repeatedFailures(command: command, count: failuresInARow, last: error.description)
        }
        return error
    }
}

/// The processes of an external environment on one rank: `workers` processes for the
/// life of the run, handed out in turn to episodes.
public final class ExternalEnvironmentPool {
    public let workers: [ExternalEnvironment]
    var next = 0

    public init(command: String, timeout: Double, workers: Int, guardian: [String]?) {
        self.workers = (0..<max(1, workers)).map { _ in ExternalEnvironment(command: command, timeout: timeout, guardian: guardian) }
    }

    /// The process for the next episode.
    public func environment() -> Environment {
        defer { next = (next + 1) % workers.count }
        return workers[next]
    }

    /// Ends every process.
    public func stop() { for w in workers { w.stop() } }

    deinit { stop() }
}
