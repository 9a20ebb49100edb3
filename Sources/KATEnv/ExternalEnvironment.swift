import Foundation
import KATSupport
#if canImport(Glibc)
import Glibc
#endif

/// An environment in another process speaking JSON lines over stdin/stdout (the protocol
/// is in Docs/formats.md). A reply that is not JSON, lacks a field or takes longer than the time-out
/// is an error naming the command and the message; the process is restarted once (and
/// the episode replayed), then the error stands.
public final class ExternalEnvironment: Environment {
    public let command: String
    public let timeout: Double
    var process: Process?
    var toChild: FileHandle?
    var fromChild: Int32 = -1
    var pending: [UInt8] = []
    /// The episode so far (reset message, then actions), replayed after a restart.
    var episode: [JSON] = []
    var restarted = false

    public init(command: String, timeout: Double) {
        self.command = command
        self.timeout = timeout
    }

    deinit { stop() }

    func start() throws {
        // A child that exits makes our next write fail with EPIPE; without this the
        // signal would kill the trainer instead of giving the clear error.
        signal(SIGPIPE, SIG_IGN)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", command]
        let inPipe = Pipe(), outPipe = Pipe()
        p.standardInput = inPipe
        p.standardOutput = outPipe
        p.standardError = FileHandle.standardError
        do { try p.run() } catch { throw EnvironmentError.start(command: command, cause: error.localizedDescription) }
        process = p
        toChild = inPipe.fileHandleForWriting
        // Keep the read end's FileHandle alive: it owns the descriptor polled below.
        readHandle = outPipe.fileHandleForReading
        fromChild = outPipe.fileHandleForReading.fileDescriptor
        pending = []
    }
    var readHandle: FileHandle?

    func stop() {
        if let p = process, p.isRunning {
            p.terminate()
            usleep(10_000)
            if p.isRunning { kill(p.processIdentifier, SIGKILL) }
        }
        try? toChild?.close()
        process = nil
        toChild = nil
        readHandle = nil
        fromChild = -1
    }

    /// Sends one message and reads one reply line, within the time-out.
    func exchange(_ message: JSON) throws -> JSON {
        if process == nil { try start() }
        guard let out = toChild else { throw EnvironmentError.closed(command: command, message: message.serialized) }
        let line = Data((message.serialized + "\n").utf8)
        do { try out.write(contentsOf: line) } catch {
            throw EnvironmentError.closed(command: command, message: message.serialized)
        }
        let deadline = monotonicSeconds() + timeout
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
            var pfd = pollfd(fd: fromChild, events: Int16(POLLIN), revents: 0)
            let r = poll(&pfd, 1, Int32(max(1, min(left * 1000, 1e9))))
            if r < 0 && errno == EINTR { continue }
            if r <= 0 { continue }
            var buf = [UInt8](repeating: 0, count: 65536)
            let n = read(fromChild, &buf, buf.count)
            if n <= 0 { throw EnvironmentError.closed(command: command, message: message.serialized) }
            pending.append(contentsOf: buf[0..<n])
            if pending.count > 16_000_000 { throw EnvironmentError.badReply(command: command, reason: "reply longer than 16 MB without a newline", reply: "") }
        }
    }

    /// Runs `op`; on failure restarts the process once, replays the episode, and retries.
    func withRestart<T>(_ op: () throws -> T) throws -> T {
        do { return try op() } catch let first as EnvironmentError {
            guard !restarted else { throw first }
            restarted = true
            FileHandle.standardError.write(Data("kat-dist: \(first); restarting it once\n".utf8))
            stop()
            let history = episode
            episode = []
            for m in history {
                _ = try exchange(m)
                episode.append(m)
            }
            return try op()
        }
    }

    public func reset(seed: UInt64, split: String) throws -> String {
        let msg: JSON = ["op": "reset", "seed": JSON(Int(truncatingIfNeeded: seed & 0x7fff_ffff_ffff)), "split": .string(split)]
        episode = []
        return try withRestart {
            let reply = try exchange(msg)
            guard let prompt = reply["prompt"]?.stringValue else {
                throw EnvironmentError.badReply(command: command, reason: "reply to reset lacks a string \"prompt\"", reply: reply.serialized)
            }
            episode = [msg]
            return prompt
        }
    }

    public func step(action: String) throws -> EnvReply {
        let msg: JSON = ["op": "step", "action": .string(action)]
        return try withRestart {
            let reply = try exchange(msg)
            guard let obs = reply["observation"]?.stringValue else {
                throw EnvironmentError.badReply(command: command, reason: "reply to step lacks a string \"observation\"", reply: reply.serialized)
            }
            guard let reward = reply["reward"]?.doubleValue, reward.isFinite else {
                throw EnvironmentError.badReply(command: command, reason: "reply to step lacks a finite number \"reward\"", reply: reply.serialized)
            }
            guard let done = reply["done"]?.boolValue else {
                throw EnvironmentError.badReply(command: command, reason: "reply to step lacks a boolean \"done\"", reply: reply.serialized)
            }
            episode.append(msg)
            return EnvReply(observation: obs, reward: reward, done: done)
        }
    }
}
