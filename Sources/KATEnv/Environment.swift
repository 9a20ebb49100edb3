import Foundation
import KATSupport

/// What an environment says after an action.
public struct EnvReply: Sendable, Equatable {
    public var observation: String
    public var reward: Double
    public var done: Bool
    public init(observation: String, reward: Double, done: Bool) { self.observation = observation; self.reward = reward; self.done = done }
}

/// A fault of an environment; each case names the command (or task) and the message.
public enum EnvironmentError: Error, CustomStringConvertible, Equatable {
    /// The process could not be started.
    case start(command: String, cause: String)
    /// The process closed a pipe (it exited) while sent or awaiting `message`.
    case closed(command: String, message: String)
    /// No reply within the time-out.
    case timeout(command: String, seconds: Double, message: String)
    /// A reply that is not JSON, or lacks a field of the right type.
    case badReply(command: String, reason: String, reply: String)
    /// A prompt (plus the answer room) longer than the model's context.
    case promptTooLong(source: String, tokens: Int, limit: Int)
    /// Exchanges failed this many times in a row; the run cannot go on.
    case repeatedFailures(command: String, count: Int, last: String)

    /// Whether the run must stop (otherwise only the episode is abandoned).
    public var endsTheRun: Bool { if case .repeatedFailures = self { return true } else { return false } }

    public var description: String {
        switch self {
        case let .start(c, cause): return "environment \(c): cannot start: \(cause)"
        case let .closed(c, m): return "environment \(c): the process closed its pipe (exited?) at \(m)"
        case let .timeout(c, s, m): return "environment \(c): no reply within \(s) s to \(m)"
        case let .badReply(c, reason, reply): return "environment \(c): \(reason): \(reply.prefix(200))"
        case let .promptTooLong(src, n, limit): return "environment \(src): \(n) tokens of prompt plus rollout.max_new_tokens exceed model.n_positions (\(limit))"
        case let .repeatedFailures(c, n, last): return "environment \(c): \(n) failures in a row; the last: \(last)"
        }
    }
}

/// One episode at a time: reset gives a prompt, step takes the model's text.
public protocol Environment: AnyObject {
    func reset(seed: UInt64, split: String) throws -> String
    func step(action: String) throws -> EnvReply
}

/// A built-in task: makes environments, and knows its held-out prompts and (for a
/// supervised warm start) a reference answer for a training prompt.
public protocol Task: Sendable {
    var name: String { get }
    func makeEnvironment(maxTurns: Int) -> Environment
    /// Number of distinct prompts in a split ("train" or "test").
    func promptCount(split: String) -> Int
    /// A prompt and its reference answer (for supervised warm starts).
    func reference(seed: UInt64, split: String) -> (prompt: String, answer: String)
    /// A prompt and a flawed demonstration of the kind a weaker teacher writes.
    func flawedDemonstration(seed: UInt64, split: String) -> (prompt: String, answer: String)
}

/// The built-in tasks by name.
public func builtinTask(_ name: String) -> Task? {
    switch name {
    case "code": return CodeTask()
    case "arithmetic": return ArithmeticTask()
    case "explore": return ExploreTask()
    default: return nil
    }
}

public let builtinTaskNames = ["code", "arithmetic", "explore"]

/// Prompts indexed by pairs, split into training and held-out lists by a fixed rule, so
/// that no held-out prompt is ever trained on. A seed picks a pair of a split.
struct PairSplit: Sendable {
    let train: [(Int, Int)]
    let test: [(Int, Int)]

    init(_ a: ClosedRange<Int>, _ b: ClosedRange<Int>, heldOut: (Int, Int) -> Bool) {
        var tr: [(Int, Int)] = [], te: [(Int, Int)] = []
        for x in a { for y in b { if heldOut(x, y) { te.append((x, y)) } else { tr.append((x, y)) } } }
        train = tr
        test = te
    }

    func count(split: String) -> Int { split == "test" ? test.count : train.count }

    func pair(seed: UInt64, split: String) -> (Int, Int) {
        let list = split == "test" ? test : train
        return list[Int(seed % UInt64(list.count))]
    }
}

// MARK: - The code task

/// Write a program in the stack language that computes a function described in words,
/// e.g. "times 3 then add 5" -> `x 3 * 5 +`. The sandboxed interpreter runs it on hidden
/// inputs; the reward is the share of them it gets right. With several turns, a failing
/// attempt gets back which inputs failed, and the model tries again.
///
/// Prompts are all pairs of 26 operations (add 1-9, sub 1-9, times 2-9); a third of the
/// pairs, chosen by a fixed rule, form the held-out split, so no held-out prompt is ever
/// trained on (each operation alone appears in both).
public struct CodeTask: Task {
    public let name = "code"
    public struct Operation: Sendable {
        public var words: String
        public var code: String
        public var kind: Character
        public var k: Int64
        public func f(_ x: Int64) -> Int64 { kind == "+" ? x + k : kind == "-" ? x - k : x * k }
    }
    public static let ops: [Operation] = {
        var o: [Operation] = []
        for k in Int64(1)...9 { o.append(Operation(words: "add \(k)", code: "\(k) +", kind: "+", k: k)) }
        for k in Int64(1)...9 { o.append(Operation(words: "sub \(k)", code: "\(k) -", kind: "-", k: k)) }
        for k in Int64(2)...9 { o.append(Operation(words: "times \(k)", code: "\(k) *", kind: "*", k: k)) }
        return o
    }()
    static let inputs: [Int64] = [0, 1, 2, 3, 5, 7, 10]
    let pairs = PairSplit(0...(CodeTask.ops.count - 1), 0...(CodeTask.ops.count - 1)) { a, b in (a * 7 + b * 13) % 3 == 0 }

    public init() {}

    public func promptCount(split: String) -> Int { pairs.count(split: split) }

    func instance(seed: UInt64, split: String) -> (Int, Int) { pairs.pair(seed: seed, split: split) }

    public func reference(seed: UInt64, split: String) -> (prompt: String, answer: String) {
        let (a, b) = instance(seed: seed, split: split)
        return ("\(CodeTask.ops[a].words) then \(CodeTask.ops[b].words)", "x \(CodeTask.ops[a].code) \(CodeTask.ops[b].code)")
    }

    /// The operations in the wrong order: right whenever the two commute (add and sub).
    public func flawedDemonstration(seed: UInt64, split: String) -> (prompt: String, answer: String) {
        let (a, b) = instance(seed: seed, split: split)
        return (reference(seed: seed, split: split).prompt, "x \(CodeTask.ops[b].code) \(CodeTask.ops[a].code)")
    }

    public func makeEnvironment(maxTurns: Int) -> Environment { CodeEnvironment(task: self, maxTurns: maxTurns) }

    final class CodeEnvironment: Environment {
        let task: CodeTask
        let maxTurns: Int
        var target: (Int, Int) = (0, 0)
        var turn = 0
        init(task: CodeTask, maxTurns: Int) { self.task = task; self.maxTurns = maxTurns }

        func reset(seed: UInt64, split: String) throws -> String {
            target = task.instance(seed: seed, split: split)
            turn = 0
            return task.reference(seed: seed, split: split).prompt
        }

        func step(action: String) throws -> EnvReply {
            turn += 1
            let f = { (x: Int64) in CodeTask.ops[self.target.1].f(CodeTask.ops[self.target.0].f(x)) }
            var failures: [String] = []
            var passed = 0
            for x in CodeTask.inputs {
                switch StackLanguage.run(action, input: x) {
                case let .success(r) where r.value == f(x): passed += 1
                case let .success(r): failures.append("x=\(x) want \(f(x)) got \(r.value)")
                case let .failure(fault): failures.append("x=\(x) want \(f(x)): \(fault)")
                }
            }
            let share = Double(passed) / Double(CodeTask.inputs.count)
            if failures.isEmpty || turn >= maxTurns { return EnvReply(observation: "", reward: share, done: true) }
            return EnvReply(observation: "fail: " + failures.prefix(2).joined(separator: "; "), reward: 0, done: false)
        }
    }
}

// MARK: - The arithmetic task

/// Add two two-digit numbers: "23+45=" -> "68". Reward 1 for the exact sum, else 0.
/// The held-out split is the pairs with (31 a + b) mod 10 = 0, never trained on.
public struct ArithmeticTask: Task {
    public let name = "arithmetic"
    let pairs = PairSplit(10...99, 10...99) { a, b in (31 * a + b) % 10 == 0 }
    public init() {}
    public func promptCount(split: String) -> Int { pairs.count(split: split) }
    func instance(seed: UInt64, split: String) -> (Int, Int) { pairs.pair(seed: seed, split: split) }
    public func reference(seed: UInt64, split: String) -> (prompt: String, answer: String) {
        let (a, b) = instance(seed: seed, split: split)
        return ("\(a)+\(b)=", "\(a + b)")
    }
    /// The carry forgotten: each digit summed modulo 10.
    public func flawedDemonstration(seed: UInt64, split: String) -> (prompt: String, answer: String) {
        let (a, b) = instance(seed: seed, split: split)
        let noCarry = ((a / 10 + b / 10) % 10) * 10 + (a % 10 + b % 10) % 10
        return ("\(a)+\(b)=", "\(noCarry)")
    }

    public func makeEnvironment(maxTurns: Int) -> Environment { ArithmeticEnvironment(task: self, maxTurns: maxTurns) }

    final class ArithmeticEnvironment: Environment {
        let task: ArithmeticTask
        let maxTurns: Int
        var answer = 0
        var turn = 0
        init(task: ArithmeticTask, maxTurns: Int) { self.task = task; self.maxTurns = maxTurns }
        func reset(seed: UInt64, split: String) throws -> String {
            let (a, b) = task.instance(seed: seed, split: split)
            answer = a + b
            turn = 0
            return "\(a)+\(b)="
        }
        func step(action: String) throws -> EnvReply {
            turn += 1
            let ok = Int(action.trimmingCharacters(in: .whitespaces)) == answer
            if ok || turn >= maxTurns { return EnvReply(observation: "", reward: ok ? 1 : 0, done: true) }
            return EnvReply(observation: "wrong, try again", reward: 0, done: false)
        }
    }
}
